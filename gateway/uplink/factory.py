"""Builds the uplink the pipeline sends to, from the parsed config: the session, its token source and,
with ``[uplink.permissions]``, the permission gate in front of it (the only place that wires them)."""

from __future__ import annotations

from gateway.auth import make_token_source
from gateway.config import Config
from gateway.config.uplink import UplinkConfig
from gateway.model import MessageSink
from gateway.uplink.session import Uplink


def make_uplink(config: Config) -> MessageSink:
    """The MQTT session, behind the permission gate when ``[uplink.permissions]`` is configured."""
    cfg = config.uplink
    if cfg is None:
        raise TypeError("make_uplink needs a config with [uplink]")
    uplink = Uplink(cfg, make_token_source(cfg.token), gateway_id=config.gateway.id, site=config.gateway.site)
    return guard_uplink(config, uplink)


def guard_uplink(config: Config, uplink: Uplink) -> MessageSink:
    """What the pump should send to: the uplink behind a :class:`PermissionGate` when the config has
    ``[uplink.permissions]`` (the tracker fed by the uplink's tokens and refusals), else the uplink."""
    cfg = config.uplink
    if not isinstance(cfg, UplinkConfig) or cfg.permissions is None:
        return uplink
    # Imported only for a config with [uplink.permissions]: the others do not pay for them at start.
    from gateway.permissions.gate import PermissionGate
    from gateway.permissions.report import device_topics
    from gateway.permissions.tracker import track_permissions

    tracker = track_permissions(uplink, cfg.permissions)
    # Held messages stay in the store (taken, not acknowledged): at most half of it, so they cannot
    # starve the topics that are granted.
    return PermissionGate(
        uplink, tracker, device_topics(config), max_held=max(1, config.store.max_messages // 2)
    )
