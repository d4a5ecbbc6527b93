"""The uplink hands each received PUBLISH to its subscription's handler with the MQTT v5 properties commands
need, built from paho's own message object (as paho's on_message gets it), and never lets a handler's
failure escape into paho (which would end the connection)."""

from __future__ import annotations

import logging
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes

from gateway.auth import make_token_source
from gateway.config.uplink import FileTokenConfig, UplinkConfig
from gateway.model import InboundMessage
from gateway.uplink.mqtt_auth import new_properties
from gateway.uplink.session import Uplink


def uplink(tmp_path: Path) -> Uplink:
    token = FileTokenConfig(path=tmp_path / "token.jwt")
    cfg = UplinkConfig(host="127.0.0.1", port=1883, tls=False, token=token, client_id="gw")
    return Uplink(cfg, make_token_source(token), gateway_id="gw", site="s")


def publish(topic: str, payload: bytes, **props: object) -> paho.MQTTMessage:
    message = paho.MQTTMessage(mid=7, topic=topic.encode())
    message.payload = payload
    message.qos = 1
    message.dup = True
    properties = new_properties(PacketTypes.PUBLISH)
    for name, value in props.items():
        setattr(properties, name, value)
    message.properties = properties
    return message


def test_a_publish_reaches_the_handler_of_the_matching_filter_with_its_properties(tmp_path: Path) -> None:
    up = uplink(tmp_path)
    got: list[InboundMessage] = []
    other: list[InboundMessage] = []
    up.subscribe(["cmd/+/plc/#"], got.append)
    up.subscribe(["cmd/other"], other.append)
    up._on_message(
        publish(
            "cmd/site/plc/x",
            b'{"read": {}}',
            ResponseTopic="replies/op",
            CorrelationData=b"\x00\x01",
            MessageExpiryInterval=30,
        )
    )
    (message,) = got
    assert other == []
    assert (message.topic, message.payload, message.qos, message.dup) == (
        "cmd/site/plc/x",
        b'{"read": {}}',
        1,
        True,
    )
    assert (message.response_topic, message.correlation_data, message.message_expiry) == (
        "replies/op",
        b"\x00\x01",
        30,
    )
    assert message.received_at > 0
    assert up.stats.inbound == 1 and up.stats.inbound_unmatched == 0


def test_no_matching_subscription_and_a_failing_handler_are_contained(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fieldgate.uplink")
    up = uplink(tmp_path)

    def broken(message: InboundMessage) -> None:
        raise RuntimeError("bug")

    up.subscribe(["cmd/#"], broken)
    up._on_message(publish("elsewhere", b"x"))
    up._on_message(publish("cmd/a", b"x"))  # must not raise into paho
    assert up.stats.inbound == 2 and up.stats.inbound_unmatched == 1
    assert any("could not be handed over" in r.getMessage() for r in caplog.records)


def test_an_invalid_filter_is_refused_at_once(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a valid MQTT topic filter"):
        uplink(tmp_path).subscribe(["cmd/#/x"], lambda m: None)
