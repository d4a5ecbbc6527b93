"""A reading stamped before the wall clock was set (a Pi without RTC before NTP) is marked so in its
payload; once the clock is set, payloads are exactly as before (no ``clock`` key)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jsonschema
import pytest

from gateway.config.model import DeviceRoute
from gateway.model import Reading
from gateway.pipeline.clock import CLOCK_FILE, EARLIEST, ClockCheck
from gateway.pipeline.router import Router
from tests.pipeline.test_compact import METER, SCHEMA, TOPIC, batch_of, meter_cycle, routes, telemetry
from tests.pipeline.test_router import router

YEAR = 365 * 24 * 3600.0


async def test_readings_routed_before_the_clock_is_set_are_marked_unsynced_and_after_it_are_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    seen_last_run = EARLIEST + 2 * YEAR
    (tmp_path / CLOCK_FILE).write_text(f"{seen_last_run:.0f}\n")
    now = [seen_last_run - 3600.0]  # booted with the time fake-hwclock saved an hour before shutdown
    check = ClockCheck(tmp_path, clock=lambda: now[0])
    await check.load()
    routing = router()
    routing.clock_synced = check.synced

    def payload() -> dict[str, object]:
        (message,) = routing.route([Reading("meter-1", "power", 1.0, "kW", now[0])])
        return dict(json.loads(message.payload))

    assert payload()["clock"] == "unsynced"
    assert payload()["clock"] == "unsynced"
    now[0] = seen_last_run + 10 * 24 * 3600.0  # NTP steps the clock forward
    assert "clock" not in payload()

    said = [r.getMessage() for r in caplog.records if r.name == "fieldgate.clock"]
    assert len(said) == 2  # a warning once, then the recovery
    assert said[0].startswith("wall clock not set yet") and said[1].startswith("wall clock set")


async def test_without_a_saved_mark_a_clock_before_this_code_existed_is_not_set(tmp_path: Path) -> None:
    check = ClockCheck(tmp_path, clock=lambda: 0.0)  # 1970: no RTC, no saved time
    await check.load()
    assert not check.synced()
    assert ClockCheck(tmp_path, clock=lambda: EARLIEST + 1).synced()


def test_every_payload_format_carries_the_mark_and_the_compact_schema_allows_it() -> None:
    """Readings as objects, as columns (the drivers' fast path), unbatched, and the compact format."""
    unsynced = lambda: False  # noqa: E731
    cycle = meter_cycle(1_000.0)
    routers = [Router("gw-1", "plant", routes(METER), qos=1) for _ in range(3)]
    routers[1].set_routes([DeviceRoute(METER, TOPIC, False)])
    compact = Router("gw-1", "plant", routes(METER), qos=1, telemetry=telemetry(format="compact"))
    for routing in (*routers, compact):
        routing.clock_synced = unsynced
    payloads = [
        *(m.payload for m in routers[0].route(cycle)),
        *(m.payload for m in routers[1].route(cycle)),
        *(m.payload for m in routers[2].route(batch_of(cycle))),
    ]
    compact_payloads = [m.payload for m in compact.route(cycle)]
    for payload in payloads + compact_payloads:
        assert json.loads(payload)["clock"] == "unsynced", payload
    for payload in compact_payloads:
        jsonschema.validate(json.loads(payload), SCHEMA)
