"""The per-cycle fast path and the opt-in compact payload, as a consumer sees them.

A driver hands a whole poll cycle as a ``PointBatch``: the default payload must be byte for byte what the
same readings give as ``Reading`` objects. The compact payload (and the gateway-level batch) must validate
against the schema in the repo and let a consumer rebuild every reading it carries.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.config.model import DeviceRoute, TelemetrySettings
from gateway.errors import ConfigError
from gateway.model import DeviceInfo, PointBatch, PointInfo, Quality, Reading
from gateway.mqtt_topics import compile_template
from gateway.pipeline.router import Router

SCHEMA = json.loads((Path(__file__).parents[2] / "gateway/pipeline/compact-payload.schema.json").read_text())
TOPIC = compile_template("sites/{site}/{gateway}/{device}/telemetry")
METER = DeviceInfo("meter-1", "modbus", (PointInfo("power", "kW"), PointInfo("status"), PointInfo("ok")))
SENSORS = [
    DeviceInfo(f"sensor-{i}", "serial", (PointInfo("t", "°C"), PointInfo("rh", "%"))) for i in range(3)
]


def routes(*devices: DeviceInfo) -> list[DeviceRoute]:
    return [DeviceRoute(d, TOPIC, True) for d in devices]


def telemetry(**keys: Any) -> TelemetrySettings:
    text = "[gateway]\nid = 'gw-1'\nsite = 'plant'\n[telemetry]\n" + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in keys.items()
    )
    return parse_config(text, Path("t.toml")).telemetry


def compact_router(*devices: DeviceInfo, gateway: str = "gw-1", **keys: Any) -> Router:
    """A router with ``format = "compact"`` and the other ``[telemetry]`` keys given."""
    return Router(gateway, "plant", routes(*devices), qos=1, telemetry=telemetry(format="compact", **keys))


def batch_of(readings: list[Reading]) -> PointBatch:
    bad = {i: (r.quality, r.reason) for i, r in enumerate(readings) if r.quality is not Quality.GOOD}
    return PointBatch(
        readings[0].device,
        [r.point for r in readings],
        [r.unit for r in readings],
        [r.value for r in readings],
        [r.timestamp for r in readings],
        bad=bad,
    )


def meter_cycle(ts: float) -> list[Reading]:
    return [
        Reading("meter-1", "power", 12.5, "kW", ts),
        Reading("meter-1", "status", None, None, ts - 0.25, Quality.BAD, "timeout after 1s"),
        Reading("meter-1", "ok", True, None, ts - 0.25),
    ]


Rebuilt = list[tuple[str, str, object, float, str, str | None]]
#: A consumer's memory of point lists: key -> (names, units).
Lists = dict[str, tuple[list[str], list[str | None]]]


def rebuild(payload: bytes, lists: Lists | None = None) -> Rebuilt:
    """What a consumer of the compact form does: every reading back, from the message alone (and the
    point lists earlier messages carried)."""
    lists = {} if lists is None else lists
    message = json.loads(payload)
    out = []
    for entry in message["d"]:
        entry_ts = entry.get("t", message["t"])
        if "k" in entry:
            if "l" in entry:
                lists[entry["k"]] = (entry["l"], entry["u"])
            names = lists[entry["k"]][0]
            keyed = [
                (str(j), names[j], value)
                for j, value in zip(entry.get("i", range(len(names))), entry["v"], strict=True)
            ]
        else:
            keyed = [(point, point, value) for point, value in entry["p"].items()]
        for key, point, value in keyed:
            quality = entry.get("q", {}).get(key, ["good"])
            out.append(
                (
                    entry["n"],
                    point,
                    value,
                    entry.get("pt", {}).get(key, entry_ts),
                    quality[0],
                    quality[1] if len(quality) > 1 else None,
                )
            )
    return out


def as_tuples(readings: list[Reading]) -> list[tuple[str, str, object, float, str, str | None]]:
    return [(r.device, r.point, r.value, r.timestamp, r.quality.value, r.reason) for r in readings]


@pytest.mark.parametrize(
    "values",
    [
        [12.5, None, True],
        [0.1 + 0.2, None, False],
        [-3, None, 'text with "quotes" and ü'],
        [float("nan"), None, 2**40],
        [float("-inf"), None, 1e300],
    ],
)
def test_a_cycle_handed_as_columns_gives_the_very_bytes_of_the_same_readings(values: list[object]) -> None:
    readings = [
        Reading("meter-1", p, v, r.unit, r.timestamp, r.quality, r.reason)  # type: ignore[arg-type]
        for p, v, r in zip(("power", "status", "ok"), values, meter_cycle(1764400000.5), strict=True)
    ]

    (expected,) = Router("gw-1", "plant", routes(METER), qos=1).route(readings)
    (fast,) = Router("gw-1", "plant", routes(METER), qos=1).route(batch_of(readings))

    assert fast.payload == expected.payload
    assert (fast.topic, fast.seq, fast.timestamp, fast.device) == (
        expected.topic,
        expected.seq,
        expected.timestamp,
        expected.device,
    )


NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.integers(min_value=10**300, max_value=10**310),
    st.booleans(),
)


@given(
    values=st.lists(NUMBERS, min_size=1, max_size=8),
    names=st.permutations(["p", "100%", "%r", '"q"', "µ%s", "x%%d", "%(a)s", "n"]),
    unit=st.sampled_from([None, "%", "°C", "%r"]),
)
def test_a_cycle_of_numbers_gives_the_very_bytes_of_the_same_readings(
    values: list[object], names: list[str], unit: str | None
) -> None:
    # Numbers take a template of their own (one % formatting per cycle): its bytes must be json's, for
    # any name or unit (a "%" in them is text), and anything it cannot write must take the general path.
    device = DeviceInfo("m", "modbus", tuple(PointInfo(n, unit) for n in names[: len(values)]))
    readings = [Reading("m", n, v, unit, 7.5) for n, v in zip(names, values, strict=False)]  # type: ignore[arg-type]
    router = Router("gw-1", "plant", routes(device), qos=1)

    for _ in range(2):  # the second cycle reuses the device's template
        (expected,) = Router("gw-1", "plant", routes(device), qos=1).route(readings)
        (fast,) = router.route(batch_of(readings))
        assert json.loads(fast.payload)["points"] == json.loads(expected.payload)["points"]
        assert fast.payload.split(b',"points":')[1] == expected.payload.split(b',"points":')[1]


def test_a_point_batch_still_reads_as_readings() -> None:
    readings = meter_cycle(100.0)

    assert list(batch_of(readings)) == readings
    assert batch_of(readings)[-1] == readings[-1]


def test_compact_payload_validates_and_gives_back_every_reading_but_units() -> None:
    router = compact_router(METER)
    readings = meter_cycle(1764400000.5)

    (message,) = router.route(batch_of(readings))

    jsonschema.validate(json.loads(message.payload), SCHEMA)
    assert rebuild(message.payload) == as_tuples(readings)
    assert json.loads(message.payload)["d"][0]["p"]["power"] == 12.5
    assert message.topic == "sites/plant/gw-1/meter-1/telemetry"


def test_compact_non_finite_values_are_null_and_bad_as_everywhere() -> None:
    router = compact_router(METER)

    (message,) = router.route([Reading("meter-1", "power", math.inf, "kW", 5.0)])

    jsonschema.validate(json.loads(message.payload), SCHEMA)
    entry = json.loads(message.payload)["d"][0]
    assert entry["p"] == {"power": None}
    assert entry["q"] == {"power": ["bad", "not a finite number (inf)"]}


def test_gateway_batch_carries_every_device_that_polled_in_one_message() -> None:
    router = compact_router(METER, *SENSORS, gateway_batch=1.0)
    sent: list[Reading] = []
    for second in range(2):  # the meter polls twice within the interval: two entries
        cycle = meter_cycle(1000.0 + second)
        sent += cycle
        assert router.route(batch_of(cycle)) == []
    for i, sensor in enumerate(SENSORS):
        cycle = [
            Reading(sensor.name, "t", 20.5 + i, "°C", 1000.2),
            Reading(sensor.name, "rh", 40 + i, "%", 1000.2),
        ]
        sent += cycle
        assert router.route(cycle) == []

    (message,) = router.flush()

    body = json.loads(message.payload)
    jsonschema.validate(body, SCHEMA)
    assert sorted(rebuild(message.payload), key=repr) == sorted(as_tuples(sent), key=repr)
    assert message.topic == "sites/plant/gw-1/telemetry"
    assert body["t"] == 1001.0
    assert router.flush() == []


def test_gateway_batch_splits_before_its_byte_bound() -> None:
    many = [
        DeviceInfo(f"meter-{i:03}", "modbus", tuple(PointInfo(f"p{j:03}") for j in range(100)))
        for i in range(60)
    ]
    router = compact_router(*many, gateway_batch=1.0, gateway_batch_bytes=16_000)
    sent: list[Reading] = []
    messages = []
    for device in many:
        cycle = [Reading(device.name, f"p{j:03}", 1234.5 + j, None, 2000.0) for j in range(100)]
        sent += cycle
        messages += router.route(batch_of(cycle))
    messages += router.flush()

    assert len(messages) > 1
    assert all(len(m.payload) <= 16_000 for m in messages)
    assert [m.seq for m in messages] == sorted(m.seq for m in messages)
    rebuilt = [r for m in messages for r in rebuild(m.payload)]
    assert rebuilt == as_tuples(sent)


def test_gateway_batch_without_the_compact_format_is_refused_with_its_key() -> None:
    with pytest.raises(ConfigError) as caught:
        telemetry(gateway_batch=1.0)

    assert "telemetry.gateway_batch" in str(caught.value)
    assert "compact" in str(caught.value)


def test_with_point_lists_the_values_follow_a_list_sent_once_and_units_come_back() -> None:
    router = compact_router(METER, point_lists=True)
    lists: Lists = {}

    first, second = (router.route(batch_of(meter_cycle(ts)))[0] for ts in (1000.0, 1001.0))

    for message, ts in ((first, 1000.0), (second, 1001.0)):
        jsonschema.validate(json.loads(message.payload), SCHEMA)
        assert rebuild(message.payload, lists) == as_tuples(meter_cycle(ts))
    ((key, (names, units)),) = lists.items()
    assert (names, units) == (["power", "status", "ok"], ["kW", None, None])
    entry = json.loads(second.payload)["d"][0]
    assert entry == {
        "n": "meter-1",
        "k": key,
        "v": [12.5, None, True],
        "pt": {"1": 1000.75, "2": 1000.75},
        "q": {"1": ["bad", "timeout after 1s"]},
    }
    assert "l" in json.loads(first.payload)["d"][0]


def test_a_point_list_key_is_the_same_for_the_same_list_on_any_gateway() -> None:
    def first_key(gateway: str) -> str:
        router = compact_router(METER, gateway=gateway, point_lists=True)
        return str(json.loads(router.route(batch_of(meter_cycle(5.0)))[0].payload)["d"][0]["k"])

    assert first_key("gw-1") == first_key("gw-2")


def test_a_cycle_with_some_points_or_new_ones_is_told_by_list_position() -> None:
    device = DeviceInfo("s", "serial", (PointInfo("t", "°C"), PointInfo("rh", "%"), PointInfo("co2", "ppm")))
    router = compact_router(device, point_lists=True)
    lists: Lists = {}
    cycles = [
        [Reading("s", "t", 20.5, "°C", 1.0), Reading("s", "rh", 40, "%", 1.0)],
        [Reading("s", "rh", 41, "%", 2.0)],  # on change: only what moved
        [Reading("s", "co2", 415, "ppm", 3.0), Reading("s", "t", 20.7, "°C", 3.0)],  # a field not seen yet
        [Reading("s", "rh", 42, "%", 4.0)],
        [Reading("s", "t", 20.5, "°F", 5.0)],  # its unit changed: a new list
    ]

    entries = []
    for cycle in cycles:
        (message,) = router.route(cycle)
        jsonschema.validate(json.loads(message.payload), SCHEMA)
        assert rebuild(message.payload, lists) == as_tuples(cycle)
        entries.append(json.loads(message.payload)["d"][0])

    assert entries[1]["i"] == [1] and "l" not in entries[1]
    assert entries[2]["l"] == ["t", "rh", "co2"] and entries[2]["i"] == [2, 0]
    assert entries[3]["k"] == entries[2]["k"] and entries[3]["i"] == [1]
    assert lists[entries[4]["k"]][1][0] == "°F"
    assert len(lists) == 3


def test_the_point_list_is_sent_again_every_period(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("gateway.pipeline.router.time.monotonic", lambda: now[0])
    router = compact_router(METER, point_lists=True, point_list_period=60)

    def carries_list() -> bool:
        return "l" in json.loads(router.route(batch_of(meter_cycle(now[0])))[0].payload)["d"][0]

    seen = []
    for step in (0, 30, 29.9, 0.2, 30):
        now[0] += step
        seen.append(carries_list())

    assert seen == [True, False, False, True, False]


def test_non_finite_values_with_point_lists_are_null_and_bad_by_position() -> None:
    router = compact_router(METER, point_lists=True)

    (message,) = router.route(batch_of([Reading("meter-1", "power", math.nan, "kW", 5.0)]))

    jsonschema.validate(json.loads(message.payload), SCHEMA)
    entry = json.loads(message.payload)["d"][0]
    assert entry["v"] == [None]
    assert entry["q"] == {"0": ["bad", "not a finite number (nan)"]}


def test_gateway_batch_with_point_lists_rebuilds_every_reading() -> None:
    router = compact_router(METER, *SENSORS, gateway_batch=1.0, point_lists=True)
    lists: Lists = {}
    for interval in range(2):
        sent: list[Reading] = []
        for second in range(2):
            cycle = meter_cycle(1000.0 + 2 * interval + second)
            sent += cycle
            router.route(batch_of(cycle))
        for i, sensor in enumerate(SENSORS):
            cycle = [
                Reading(sensor.name, "t", 20.5 + i, "°C", 1000.2),
                Reading(sensor.name, "rh", 40, "%", 1000.2),
            ]
            sent += cycle
            router.route(cycle)
        (message,) = router.flush()
        jsonschema.validate(json.loads(message.payload), SCHEMA)
        assert rebuild(message.payload, lists) == as_tuples(sent)
        # every list rides once, on the first interval's first entry of each device
        assert sum("l" in e for e in json.loads(message.payload)["d"]) == (4 if interval == 0 else 0)


@pytest.mark.parametrize(
    "other", [{}, {"format": "compact", "batch": False}], ids=["default format", "unbatched"]
)
def test_point_lists_need_the_compact_format_and_batched_devices(other: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as caught:
        telemetry(point_lists=True, **other)

    assert "telemetry.point_lists" in str(caught.value)


@pytest.mark.parametrize("point_lists", [False, True], ids=["point names", "point lists"])
async def test_the_running_gateway_sends_gateway_batches_a_consumer_can_read(
    tmp_path: Path, point_lists: bool
) -> None:
    from tests.support.process import GatewayProcess

    config = tmp_path / "gateway.toml"
    devices = "".join(
        f'[devices.sensor-{i}]\ndriver = "simulated"\ninterval = 0.1\n'
        f'[[devices.sensor-{i}.points]]\nname = "t"\nsignal = "sine"\nunit = "°C"\n'
        f'[[devices.sensor-{i}.points]]\nname = "rh"\nsignal = "sine"\n'
        for i in range(3)
    )
    config.write_text(
        f'[gateway]\nid = "gw-1"\nsite = "plant"\nstats_interval = 0\nstate_dir = "{tmp_path}"\n'
        '[store]\nkind = "memory"\n'
        '[telemetry]\nformat = "compact"\ngateway_batch = 0.5\n'
        + f"point_lists = {str(point_lists).lower()}\n"
        + devices
    )
    process = await GatewayProcess(["run", "--config", str(config), "--dry-run"]).start()
    try:
        # Wait for two batch messages: the second one is a full interval of every device's cycles.
        await process.wait_for(lambda line: line.startswith("sites/plant/gw-1/telemetry "), timeout=60)
        first = len(process.stdout)
        await process.wait_for(
            lambda line: line.startswith("sites/plant/gw-1/telemetry "), start=first, timeout=60
        )
    finally:
        await process.kill()
    batches = [
        line.split(" ", 1)[1] for line in process.stdout if line.startswith("sites/plant/gw-1/telemetry ")
    ]
    lists: Lists = {}
    for text in batches:
        jsonschema.validate(json.loads(text), SCHEMA)
        readings = rebuild(text.encode(), lists)
    devices_in_last = {entry["n"] for entry in json.loads(batches[-1])["d"]}
    assert devices_in_last == {"sensor-0", "sensor-1", "sensor-2"}
    assert {(r[0], r[1]) for r in readings} == {(f"sensor-{i}", p) for i in range(3) for p in ("t", "rh")}
    assert all(r[4] == "good" and isinstance(r[2], float) for r in readings)
