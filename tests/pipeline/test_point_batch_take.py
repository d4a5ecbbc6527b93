"""Part of a poll cycle in columns (``PointBatch.take``, what an on-change filter hands on) reads and
encodes exactly as the same readings handed one by one: stamps, units and not-good entries follow their
points."""

from __future__ import annotations

import pytest

from gateway.model import Quality, Reading
from gateway.pipeline.router import Router

from .test_compact import METER, batch_of, meter_cycle, routes, telemetry


@pytest.mark.parametrize("indices", [[0], [1], [1, 2], [0, 2], [0, 1, 2], []])
@pytest.mark.parametrize("fmt", ["default", "compact"])
def test_part_of_a_cycle_taken_as_columns_gives_the_very_bytes_of_those_readings(
    indices: list[int], fmt: str
) -> None:
    readings = meter_cycle(1764400000.5)
    part = batch_of(readings).take(indices)

    assert list(part) == [readings[i] for i in indices]
    assert set(part.bad) == {j for j, i in enumerate(indices) if readings[i].quality is not Quality.GOOD}
    if not indices:
        return
    chosen: list[Reading] = [readings[i] for i in indices]
    expected = Router("gw-1", "plant", routes(METER), qos=1, telemetry=telemetry(format=fmt)).route(chosen)
    fast = Router("gw-1", "plant", routes(METER), qos=1, telemetry=telemetry(format=fmt)).route(part)
    assert [m.payload for m in fast] == [m.payload for m in expected]
