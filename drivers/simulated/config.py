"""The simulated driver's config: `driver = "simulated"` devices and their points, as frozen types."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.model import DeviceInfo, PointInfo
from gateway.schema import Table, default_of

SIGNALS = ("sine", "ramp", "random-walk", "step", "constant")


@dataclass(frozen=True, slots=True)
class Point:
    name: str
    signal: str = "sine"
    unit: str | None = None
    minimum: float = 0.0
    maximum: float = 100.0
    #: sine: seconds per cycle; ramp: seconds from minimum to maximum.
    period: float = 60.0
    #: random-walk: the largest change per sample.
    step: float = 1.0
    #: step: the values stepped through, each held ``hold`` seconds; constant: values[0].
    values: tuple[float, ...] = ()
    hold: float = 10.0
    decimals: int = 3
    #: The random walk's seed (default: the point's position in its device, so runs repeat).
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Device:
    name: str
    #: Seconds between samples.
    interval: float = 1.0
    points: tuple[Point, ...] = ()

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
    interval = table.number("interval", default_of(Device, "interval"), minimum=0.001, maximum=86_400)
    entries = table.named_entries("points", what="point")
    if not table.data.get("points"):  # missing or empty; a wrong type is reported by named_entries
        table.problem("points", f"a device needs at least one point ([{table.here('points')}.<name>])")
    points = tuple(_point(pname, pt, index) for index, (pname, pt) in enumerate(entries))
    table.finish()
    return Device(name=name, interval=interval, points=points)


def _point(name: str, table: Table, index: int) -> Point:
    signal = table.string("signal", default_of(Point, "signal"), choices=SIGNALS)
    minimum = table.number("min", default_of(Point, "minimum"))
    maximum = table.number("max", default_of(Point, "maximum"))
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
        period=table.number("period", default_of(Point, "period"), positive=True),
        step=table.number("step", default_of(Point, "step"), minimum=0),
        values=parsed_values,
        hold=table.number("hold", default_of(Point, "hold"), positive=True),
        decimals=table.integer("decimals", default_of(Point, "decimals"), minimum=0, maximum=12),
        seed=table.integer("seed", index),
    )
    table.finish()
    return point
