"""Builds the uplink the pipeline sends to, from the parsed config (the only place that wires it)."""

from __future__ import annotations

from gateway.auth import make_token_source
from gateway.config import Config
from gateway.permission_check import guard_uplink
from gateway.pipeline import MessageSink
from gateway.uplink.session import Uplink


def make_uplink(config: Config) -> MessageSink:
    """The MQTT session, behind the permission gate when ``[uplink.permissions]`` is configured."""
    cfg = config.uplink
    if cfg is None:
        raise TypeError("make_uplink needs a config with [uplink]")
    uplink = Uplink(cfg, make_token_source(cfg.token), gateway_id=config.gateway.id, site=config.gateway.site)
    return guard_uplink(config, uplink)
