"""The permission set of the token in use: derived at connect and at every refresh, read by the pipeline.

The uplink tells the tracker which token it uses (:meth:`PermissionTracker.token_in_use`) and which
publishes the broker refused (:meth:`PermissionTracker.publish_refused`); the pipeline's permission
gate asks it about topics. The uplink itself never asks: it knows nothing of devices or policies.

Changes are logged as differences (filters granted and revoked), never as the token or its claims.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.auth.token import Token
from gateway.config.permissions import PermissionsConfig
from gateway.permissions.grants import PermissionSet

if TYPE_CHECKING:
    from gateway.uplink.session import Uplink

log = logging.getLogger("fieldgate.permissions")

#: Keep this many distinct topics for "log once per topic"; beyond it, repeats log at debug.
_MAX_REMEMBERED = 1024


class PermissionTracker:
    """Holds the :class:`PermissionSet` of the token in use and tells listeners when it changes."""

    def __init__(self, config: PermissionsConfig) -> None:
        self.config = config
        self.current: PermissionSet | None = None
        #: Publishes the broker refused (PUBACK 0x87) although our view granted them, per topic.
        self.disagreements: Counter[str] = Counter()
        #: Subscriptions refused by :meth:`check_subscribe`, per filter.
        self.subscribe_denied: Counter[str] = Counter()
        self._listeners: list[Callable[[], None]] = []
        self._told_disagreement: set[str] = set()
        # Verdicts per topic for the current set: a gateway publishes to few topics, each very often.
        self._verdicts: dict[str, bool] = {}

    @property
    def policy(self) -> str:
        return self.config.denied

    def add_listener(self, callback: Callable[[], None]) -> None:
        """``callback()`` runs (on the event loop) whenever the permission set changes."""
        self._listeners.append(callback)

    # -- fed by the uplink ---------------------------------------------------------------------------
    def token_in_use(self, token: Token) -> None:
        """The uplink connects or re-authenticates with ``token``: derive its permissions."""
        fresh = PermissionSet.from_claims(self.config, token.claims)
        old = self.current
        change = (old or PermissionSet()).diff(fresh)
        if old is not None and not change:
            self.current = fresh
            return
        self.current = fresh
        self._verdicts.clear()
        if old is None:
            log.info(
                "topic permissions from the token: %s",
                change if change else "nothing granted (check [uplink.permissions] and the token's claims)",
            )
        else:
            log.info("topic permissions changed with the new token: %s", change)
        for callback in list(self._listeners):
            callback()

    def publish_refused(self, topic: str, reason_code: int) -> None:
        """The broker refused a publish (PUBACK >= 0x80). 0x87 on a topic we thought granted is news."""
        perms = self.current
        if reason_code != 0x87 or perms is None:
            return
        grant = perms.publish_grant(topic)
        if grant is None:
            return
        self.disagreements[topic] += 1
        if topic in self._told_disagreement:
            log.debug("broker still refuses %r although %s grants it", topic, grant.rule)
            return
        if len(self._told_disagreement) < _MAX_REMEMBERED:
            self._told_disagreement.add(topic)
        log.warning(
            "permission disagreement: the broker refused publish to %r (PUBACK 0x87 not authorized) although "
            "the token grants it by %s (filter %s); [uplink.permissions] does not describe the broker's "
            "rules (topic spaces, templates, client groups) for this topic",
            topic,
            grant.rule,
            grant.filter,
        )

    # -- read by the pipeline and the commands work --------------------------------------------------
    def publish_verdict(self, topic: str) -> bool | None:
        """True/False once a token was seen; None before (the gate waits)."""
        verdict = self._verdicts.get(topic)
        if verdict is None:
            if self.current is None:
                return None
            verdict = self.current.may_publish(topic)
            if len(self._verdicts) >= _MAX_REMEMBERED:
                self._verdicts.clear()  # bounded: topics with ids in them must not grow it forever
            self._verdicts[topic] = verdict
        return verdict

    def explain_publish_denial(self, topic: str) -> str:
        return "no token yet" if self.current is None else self.current.explain_denial("publish", topic)

    def publish_rule(self, topic: str) -> str | None:
        grant = self.current.publish_grant(topic) if self.current is not None else None
        return None if grant is None else f"{grant.rule} (filter {grant.filter})"

    def check_subscribe(self, requested: str) -> bool | None:
        """Whether the token grants subscribing to the filter ``requested`` (None: no token yet).

        A refusal is counted and logged once per filter with the rule that would allow it.
        """
        perms = self.current
        if perms is None:
            return None
        if perms.may_subscribe(requested):
            return True
        self.subscribe_denied[requested] += 1
        if self.subscribe_denied[requested] == 1:
            log.warning(
                "subscribe to %r not granted by the token: %s",
                requested,
                perms.explain_denial("subscribe", requested),
            )
        return False


def track_permissions(uplink: Uplink, config: PermissionsConfig) -> PermissionTracker:
    """A tracker fed by ``uplink``'s tokens and refusals (what the app wires for ``[uplink.permissions]``)."""
    tracker = PermissionTracker(config)
    uplink.token_listeners.append(tracker.token_in_use)
    uplink.refusal_listeners.append(tracker.publish_refused)
    return tracker
