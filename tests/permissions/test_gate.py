"""The permission gate in front of the uplink, with the tracker fed tokens as the uplink would feed them
and an in-process sink standing in for the broker connection."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.auth.token import Token
from gateway.config.permissions import PermissionsConfig
from gateway.model import Message, PublishOutcome, PublishResult
from gateway.permissions.gate import ExpectedTopic, PermissionGate
from gateway.permissions.tracker import PermissionTracker

TEMPLATE = "sites/${client.attributes.site}/#"


class RecordingSink:
    """Accepts everything at once and remembers the topics, in order."""

    #: No session figures: status shows a sink without a connection.
    stats = None

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def send(self, message: Message) -> asyncio.Future[PublishResult]:
        self.sent.append(message.topic)
        future: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()
        future.set_result(PublishResult(PublishOutcome.DELIVERED))
        return future


def token(site: str | list[str]) -> Token:
    return Token(value="h.c.s", expires_at=2e9, issued_at=1e9, claims={"sub": "gw-1", "site": site})


def gate_for(denied: str, **kwargs: int) -> tuple[PermissionGate, PermissionTracker, RecordingSink]:
    tracker = PermissionTracker(PermissionsConfig(publish_templates=(TEMPLATE,), denied=denied))  # type: ignore[arg-type]
    sink = RecordingSink()
    expected = [ExpectedTopic("device boiler", "sites/b/boiler")]
    return PermissionGate(sink, tracker, expected, **kwargs), tracker, sink


async def test_messages_wait_for_the_first_token_then_pass_or_are_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fieldgate")
    gate, tracker, sink = gate_for("drop")
    waiting = asyncio.create_task(gate.send(Message("sites/a/x", b"1", device="meter")))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # no token yet: nothing decided

    tracker.token_in_use(token("a"))
    assert (await (await waiting)).outcome is PublishOutcome.DELIVERED
    results = [await (await gate.send(Message("sites/b/boiler", b"1", device="boiler"))) for _ in range(3)]

    assert sink.sent == ["sites/a/x"]
    assert [r.outcome for r in results] == [PublishOutcome.REFUSED] * 3
    assert gate.denied == {"sites/b/boiler": 3} and gate.dropped == 3
    assert gate.stats_text() == "not granted 3 (1 topics), dropped 3, held 0, released 0"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "device boiler: topic 'sites/b/boiler' is not granted by the current token: template "
        'sites/${client.attributes.site}/# with client.attributes.site = "b" would allow it; the token has '
        'site = "a"; its messages are dropped',
        "device boiler: publish to 'sites/b/boiler' not granted by the token: template "
        'sites/${client.attributes.site}/# with client.attributes.site = "b" would allow it; the token has '
        'site = "a"; dropped (further ones: counted, debug level)',
    ]


async def test_held_messages_are_bounded_and_released_in_order_when_granted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fieldgate")
    gate, tracker, sink = gate_for("hold", max_held=3)
    tracker.token_in_use(token("a"))
    runner = asyncio.create_task(gate.run())
    try:
        futures = [await gate.send(Message("sites/b/boiler", str(i).encode())) for i in range(5)]
        assert [f.done() for f in futures] == [True, True, False, False, False]
        assert futures[0].result().outcome is PublishOutcome.REFUSED
        assert gate.held == 3 and gate.dropped == 2
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and errors[0].startswith(
            "3 messages held for topics the token does not grant"
        )

        tracker.token_in_use(token(["a", "b"]))
        async with asyncio.timeout(5):
            results = await asyncio.gather(*futures[2:])
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert [r.outcome for r in results] == [PublishOutcome.DELIVERED] * 3
    assert sink.sent == ["sites/b/boiler"] * 3 and gate.released == 3 and gate.held == 0


async def test_a_revoked_grant_is_news_again(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fieldgate")
    gate, tracker, sink = gate_for("drop")
    tracker.token_in_use(token("b"))
    await gate.send(Message("sites/b/boiler", b"1"))
    tracker.token_in_use(token("a"))  # the grant for b is revoked
    await gate.send(Message("sites/b/boiler", b"2"))
    tracker.token_in_use(token("b"))
    await gate.send(Message("sites/b/boiler", b"3"))
    tracker.token_in_use(token("a"))
    await gate.send(Message("sites/b/boiler", b"4"))

    assert sink.sent == ["sites/b/boiler", "sites/b/boiler"]
    changes = [r.getMessage() for r in caplog.records if "topic permissions" in r.getMessage()]
    to_a = "publish granted: sites/a/#; publish revoked: sites/b/#"
    to_b = "publish granted: sites/b/#; publish revoked: sites/a/#"
    assert changes == [
        "topic permissions from the token: publish granted: sites/b/#",
        *(f"topic permissions changed with the new token: {change}" for change in (to_a, to_b, to_a)),
    ]
    denials = [
        r.getMessage() for r in caplog.records if "publish to 'sites/b/boiler' not granted" in r.getMessage()
    ]
    assert len(denials) == 2  # once per episode of denial, not once per message
