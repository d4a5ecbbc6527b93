"""The command parser and the service's front door: any payload of any size or shape is either a command or
a 'malformed' refusal with a reason - never an exception that could end the MQTT session."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.commands.parse import (
    Malformed,
    ReadPoints,
    SendCommand,
    WritePoint,
    parse_command,
    response_payload,
)
from gateway.commands.service import CommandService
from gateway.config.commands import CommandsConfig
from gateway.model import DeviceInfo, InboundHandler, InboundMessage, PublishOutcome, PublishResult
from gateway.mqtt_topics import command_template_problem, render_filter

LIMIT = 4096

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
command_like = st.fixed_dictionaries(
    {},
    optional={
        "write": st.fixed_dictionaries({}, optional={"point": json_values, "value": json_values})
        | json_values,
        "read": st.fixed_dictionaries({}, optional={"points": json_values}) | json_values,
        "send": st.fixed_dictionaries({}, optional={"command": json_values}) | json_values,
        "expires_at": json_values,
    },
)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"write": {"point": "setpoint", "value": 21.5}}', WritePoint("setpoint", 21.5)),
        (b'{"write": {"point": "relay", "value": true}}', WritePoint("relay", True)),
        (b'{"write": {"point": "tag", "value": "AB-1"}}', WritePoint("tag", "AB-1")),
        (b'{"read": {"points": ["a", "b", "a"]}}', ReadPoints(("a", "b"))),
        (b'{"read": {}}', ReadPoints()),
        (b'{"read": "all"}', ReadPoints()),
        (b'{"send": {"command": "tare"}}', SendCommand("tare")),
    ],
)
def test_the_three_command_forms(payload: bytes, expected: object) -> None:
    assert parse_command(payload, LIMIT).command == expected


def test_expires_at_is_read() -> None:
    request = parse_command(b'{"send": {"command": "tare"}, "expires_at": 1800000000}', LIMIT)
    assert request.expires_at == 1800000000.0


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"write": {"point": "x", "value": NaN}}', "NaN is not a number JSON allows"),
        (b'{"write": {"point": "x", "value": 1e999}}', "finite"),
        (b'{"write": {"point": "x", "value": [1]}}', "value must be"),
        (b'{"write": {"point": "x", "value": 1, "extra": 2}}', "write needs"),
        (b'{"write": {"point": "../etc", "value": 1}}', "write.point must be a name"),
        (b'{"read": {"points": "a"}}', "read.points must be a list"),
        (b'{"read": {}, "send": {"command": "x"}}', "exactly one"),
        (b'{"expires_at": 5}', "exactly one"),
        (b'{"send": {"command": "x"}, "expires_at": "soon"}', "expires_at must be a number"),
        (b'{"send": {"command": "x"}, "id": 5}', "unknown key(s) 'id'"),
        (b"[" * 3000 + b"]" * 3000, "exceeds the limit"),
        (b"[" * 2000 + b"]" * 2000, "not valid JSON"),  # nested past the recursion limit
    ],
)
def test_what_is_not_a_command_is_malformed_with_a_reason(payload: bytes, why: str) -> None:
    with pytest.raises(Malformed) as caught:
        parse_command(payload, LIMIT)
    assert why in str(caught.value)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=6000))
def test_arbitrary_bytes_never_raise_anything_but_malformed(payload: bytes) -> None:
    with contextlib.suppress(Malformed):
        parse_command(payload, LIMIT)


@settings(max_examples=400, deadline=None)
@given(command_like | json_values)
def test_arbitrary_json_shapes_never_raise_anything_but_malformed(doc: Any) -> None:
    payload = json.dumps(doc).encode()
    try:
        request = parse_command(payload, LIMIT)
    except Malformed as exc:
        assert str(exc) and len(str(exc)) < 200
        return
    cmd = request.command
    if isinstance(cmd, WritePoint):
        assert not (isinstance(cmd.value, float) and not math.isfinite(cmd.value))


class Recorder:
    """The transport's part as the service sees it: keeps subscriptions and responses in memory."""

    def __init__(self) -> None:
        self.handlers: dict[str, InboundHandler] = {}
        self.responses: list[tuple[str, bytes, bytes | None]] = []

    def subscribe(self, filters: Sequence[str], handler: InboundHandler) -> None:
        for f in filters:
            self.handlers[f] = handler

    async def respond(self, topic: str, payload: bytes, correlation_data: bytes | None) -> PublishResult:
        self.responses.append((topic, payload, correlation_data))
        return PublishResult(PublishOutcome.DELIVERED)


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def service(**overrides: Any) -> tuple[CommandService, Recorder]:
    recorder = Recorder()
    overrides.setdefault("response_topic", "r/#")
    cfg = CommandsConfig(topic="c/{device}/#", **overrides)
    svc = CommandService(
        cfg,
        gateway_id="g",
        site="s",
        devices=[DeviceInfo("plc", "modbus")],
        transport=recorder,
        own_topic=lambda topic: topic == "r/telemetry",
    )
    return svc, recorder


@pytest.mark.parametrize(
    "response_topic",
    [
        "sites/s/g/plc",  # outside the response space (e.g. the gateway's telemetry)
        "r/telemetry",  # inside it, but one of the gateway's own topics
        "c/plc/x",  # a command topic: the gateway would command itself
    ],
)
def test_a_request_whose_response_topic_is_not_in_the_reply_space_is_refused_unexecuted(
    response_topic: str,
) -> None:
    svc, _ = service()
    for correlation in (b"1", b"2"):
        svc.on_message(
            InboundMessage(
                "c/plc",
                b'{"read": {}}',
                qos=1,
                response_topic=response_topic,
                correlation_data=correlation,
                received_at=time.monotonic(),
            )
        )
    assert svc.counters.response_topic_refused == 2
    assert list(svc._responses) == [] and not svc._queues["plc"].jobs


@settings(max_examples=300, deadline=None)
@given(
    topic=st.text(max_size=40),
    payload=st.binary(max_size=5000) | command_like.map(lambda d: json.dumps(d).encode()),
    correlation=st.none() | st.binary(max_size=64),
    response_topic=st.none() | st.text(max_size=20),
    expiry=st.none() | st.integers(min_value=0, max_value=2**32 - 1),
)
def test_the_service_front_door_never_raises_and_answers_in_json(
    topic: str, payload: bytes, correlation: bytes | None, response_topic: str | None, expiry: int | None
) -> None:
    svc, _ = service(queue=2, dedup=4)
    message = InboundMessage(
        "c/plc/" + topic,
        payload,
        qos=1,
        response_topic=response_topic,
        correlation_data=correlation,
        message_expiry=expiry,
        received_at=time.monotonic(),
    )
    errors = _Errors()
    logger = logging.getLogger("fieldgate.commands")
    logger.addHandler(errors)
    try:
        svc.on_message(message)
        svc.on_message(message)
    finally:
        logger.removeHandler(errors)
    assert errors.records == []  # the front door's last-resort exception log stayed silent
    for waiting in svc._responses:
        body = json.loads(waiting.payload)
        assert body["status"] in ("done", "refused", "failed")


def test_a_full_device_queue_refuses_busy_and_the_dedup_cache_stays_bounded() -> None:
    svc, _ = service(queue=2, dedup=3)
    for i in range(6):
        svc.on_message(
            InboundMessage(
                "c/plc",
                b'{"read": {}}',
                qos=1,
                response_topic="r",
                correlation_data=str(i).encode(),
                received_at=time.monotonic(),
            )
        )
    assert svc.counters.busy == 4  # no worker runs here: two wait, the rest are refused
    assert len(svc._seen) == 3
    busy = [json.loads(r.payload) for r in svc._responses]
    assert busy[0]["reason"] == "busy" and "2 commands are already waiting for plc" in busy[0]["detail"]


def test_a_command_whose_message_expiry_already_passed_is_refused() -> None:
    svc, _ = service()
    svc.on_message(
        InboundMessage(
            "c/plc",
            b'{"write": {"point": "sp", "value": 1}}',
            response_topic="r",
            correlation_data=b"x",
            message_expiry=2,
            received_at=time.monotonic() - 3,
        )
    )
    (waiting,) = svc._responses
    body = json.loads(waiting.payload)
    assert (body["status"], body["reason"]) == ("refused", "expired")
    assert "message expiry interval (2 s)" in body["detail"]


def test_response_json_shapes() -> None:
    from gateway.commands.parse import Outcome, Request
    from gateway.model import Reading

    back = Reading("plc", "sp", 21.5, "degC", 1700000000.1234)
    done = json.loads(
        response_payload("plc", Request(WritePoint("sp", 21.5)), Outcome("done", readings=(back,)))
    )
    assert done == {
        "status": "done",
        "device": "plc",
        "command": "write",
        "point": "sp",
        "value": 21.5,
        "unit": "degC",
        "readings": [{"point": "sp", "value": 21.5, "timestamp": 1700000000.123, "unit": "degC"}],
    }
    refused = json.loads(
        response_payload(None, None, Outcome("refused", "malformed", "payload is not valid JSON"))
    )
    assert refused == {"status": "refused", "reason": "malformed", "detail": "payload is not valid JSON"}


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("sites/{site}/{gateway}/{device}/commands/#", None),
        ("cmd/{device}/+", None),
        ("cmd/all", "needs {device}"),
        ("cmd/{device}/#/x", "'+' and '#' must fill a whole level"),
        ("cmd/{device}/a+", "'+' and '#' must fill a whole level"),
        ("cmd/{point}/{device}", "unknown variable {point}"),
        ("/cmd/{device}", "must not start with '/'"),
    ],
)
def test_command_topic_templates(template: str, problem: str | None) -> None:
    found = command_template_problem(template)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_a_template_renders_one_filter_per_device() -> None:
    assert render_filter(
        "sites/{site}/{gateway}/{device}/commands/#", site="s", gateway="g", device="d", driver="x"
    ) == ("sites/s/g/d/commands/#")
