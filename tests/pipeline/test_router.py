"""What a consumer receives: topics and JSON payloads built from readings."""

from __future__ import annotations

import json

from gateway.config.model import DeviceRoute
from gateway.model import DeviceInfo, PointInfo, Quality, Reading
from gateway.mqtt_topics import TemplateError, compile_template
from gateway.pipeline.router import Router

METER = DeviceInfo("meter-1", "modbus", (PointInfo("power", "kW"), PointInfo("status")))


def router(batch: bool = True, topic: str = "sites/{site}/{gateway}/{device}/telemetry") -> Router:
    return Router("gw-1", "plant", [DeviceRoute(METER, compile_template(topic), batch)], qos=1)


def test_a_failed_point_is_sent_as_bad_quality_with_its_reason_and_no_made_up_value() -> None:
    readings = [
        Reading("meter-1", "power", 12.5, "kW", 100.0),
        Reading("meter-1", "status", None, None, 100.0, Quality.BAD, "timeout after 1s"),
    ]

    (message,) = router().route(readings)

    assert json.loads(message.payload)["points"] == {
        "power": {"value": 12.5, "unit": "kW", "quality": "good"},
        "status": {"value": None, "quality": "bad", "reason": "timeout after 1s"},
    }


def test_a_meter_sending_nan_or_infinity_gets_null_with_bad_quality_never_a_good_value() -> None:
    (message,) = router().route(
        [
            Reading("meter-1", "power", float("nan"), "kW", 1.0),
            Reading("meter-1", "energy", float("-inf"), "kWh", 1.0),
        ]
    )

    points = json.loads(message.payload)["points"]
    assert points["power"] == {
        "value": None,
        "unit": "kW",
        "quality": "bad",
        "reason": "not a finite number (nan)",
    }
    assert points["energy"]["value"] is None and points["energy"]["quality"] == "bad"


def test_a_lone_surrogate_from_a_device_becomes_a_replacement_character() -> None:
    (message,) = router().route([Reading("meter-1", "id", "ab\ud800", None, 1.0)])

    assert json.loads(message.payload.decode("utf-8"))["points"]["id"]["value"] == "ab\ufffd"


def test_points_sampled_at_other_moments_carry_their_own_timestamp() -> None:
    (message,) = router().route(
        [Reading("meter-1", "power", 1.0, "kW", 10.0), Reading("meter-1", "status", 1, None, 12.0)]
    )

    payload = json.loads(message.payload)
    assert payload["ts"] == 12.0
    assert payload["points"]["power"]["ts"] == 10.0
    assert "ts" not in payload["points"]["status"]


def test_unbatched_topics_name_the_point() -> None:
    r = router(batch=False, topic="{site}/{device}/{point}")

    messages = r.route(
        [Reading("meter-1", "power", 1.0, "kW", 1.0), Reading("meter-1", "status", 3, None, 1.0)]
    )

    assert [m.topic for m in messages] == ["plant/meter-1/power", "plant/meter-1/status"]
    assert [m.seq for m in messages] == [1, 2]


def test_readings_of_an_unknown_device_are_counted_not_sent() -> None:
    r = router()

    assert r.route([Reading("ghost", "x", 1, None, 1.0)]) == []
    assert r.counters.unrouted == 1


def test_templates_refuse_unknown_variables_and_wildcards() -> None:
    for bad in ("a/{nope}", "a/+/b", "a/#", "/a", "", "a/{device!r}"):
        try:
            compile_template(bad)
        except TemplateError:
            continue
        raise AssertionError(f"{bad!r} was accepted")
