"""The simulated driver's config: `driver = "simulated"` devices and their points, as frozen types."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.model import DeviceInfo, PointInfo
from gateway.schema import Table

SIGNALS = ("sine", "ramp", "random-walk", "step", "constant")


@dataclass(frozen=True, slots=True)
class Point:
    name: str
    signal: str
    unit: str | None
    minimum: float
    maximum: float
    #: sine: seconds per cycle; ramp: seconds from minimum to maximum.
    period: float
    #: random-walk: the largest change per sample.
    step: float
    #: step: the values stepped through, each held ``hold`` seconds; constant: values[0].
    values: tuple[float, ...]
    hold: float
    decimals: int
    seed: int


@dataclass(frozen=True, slots=True)
class Device:
    name: str
    interval: float
    points: tuple[Point, ...]

    @property
    def info(self) -> DeviceInfo:
        return DeviceInfo(self.name, "simulated", tuple(PointInfo(p.name, p.unit) for p in self.points))


@dataclass(frozen=True, slots=True)
class SimulatedConfig:
    sim_devices: tuple[Device, ...]

    @property
    def devices(self) -> tuple[DeviceInfo, ...]:
        return tuple(d.info for d in self.sim_devices)


def parse_device(name: str, table: Table) -> Device:
    interval = table.number("interval", 1.0, minimum=0.001, maximum=86_400)
    entries = table.named_entries("points", what="point")
    if not table.data.get("points"):  # missing or empty; a wrong type is reported by named_entries
        table.problem("points", f"a device needs at least one point ([{table.here('points')}.<name>])")
    points = tuple(_point(pname, pt, index) for index, (pname, pt) in enumerate(entries))
    table.finish()
    return Device(name=name, interval=interval, points=points)


def _point(name: str, table: Table, index: int) -> Point:
    signal = table.string("signal", "sine", choices=SIGNALS)
    minimum = table.number("min", 0.0)
    maximum = table.number("max", 100.0)
    if maximum < minimum:
        table.problem("max", f"must not be below min ({minimum:g})", maximum)
    values = table.raw("values")
    parsed_values: tuple[float, ...] = ()
    if values is not None:
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        ):
            table.problem("values", "expected a non-empty array of numbers", values)
        else:
            parsed_values = tuple(float(v) for v in values)
    if signal in ("step", "constant") and not parsed_values:
        table.problem("values", f"signal '{signal}' needs values = [...]")
    point = Point(
        name=name,
        signal=signal,
        unit=table.optional_string("unit"),
        minimum=minimum,
        maximum=maximum,
        period=table.number("period", 60.0, positive=True),
        step=table.number("step", 1.0, minimum=0),
        values=parsed_values,
        hold=table.number("hold", 10.0, positive=True),
        decimals=table.integer("decimals", 3, minimum=0, maximum=12),
        seed=table.integer("seed", index),
    )
    table.finish()
    return point
