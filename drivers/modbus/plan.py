"""The read plan: a device's points merged into as few read requests as the rules allow (pure).

Rules, per table and per poll interval:

* a request never exceeds the device's ``max_registers`` (<= 125) or ``max_bits`` (<= 2000);
* two points are joined only when the unused run between them is at most ``max_gap`` registers
  (for coils and discrete inputs: ``max_gap`` x 16 bits, so one gap setting fits both kinds);
* a request never reads an address inside a forbidden range (the gap would cross one: split);
* every point is read by exactly one request.

Points are taken in address order and packed greedily, which is optimal for these interval rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from drivers.modbus.config import Device, Limits, Point, RegisterTable


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read covering a run of points in one table."""

    table: RegisterTable
    address: int
    count: int
    points: tuple[Point, ...]

    @property
    def function(self) -> int:
        return self.table.read_function

    @property
    def end(self) -> int:
        return self.address + self.count - 1

    def describe(self) -> str:
        return f"fc{self.function} {self.table.value} {self.address}+{self.count}"


@dataclass(frozen=True, slots=True)
class PollGroup:
    """The requests a device polls together at one interval."""

    interval: float
    requests: tuple[ReadRequest, ...]

    @property
    def points(self) -> tuple[Point, ...]:
        return tuple(p for r in self.requests for p in r.points)


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """A device's poll groups: what it reads, in how many requests, how often."""

    device: Device
    groups: tuple[PollGroup, ...]

    @property
    def requests(self) -> tuple[ReadRequest, ...]:
        return tuple(r for g in self.groups for r in g.requests)

    def summary(self) -> str:
        reqs = self.requests
        registers = sum(r.count for r in reqs if not r.table.is_bits)
        bits = sum(r.count for r in reqs if r.table.is_bits)
        points = sum(len(r.points) for r in reqs)
        parts = [f"{len(reqs)} request{'s' if len(reqs) != 1 else ''}", f"{registers} registers"]
        if bits:
            parts.append(f"{bits} bit{'s' if bits != 1 else ''}")
        parts.append(f"{points} points")
        intervals = ", ".join(f"{g.interval:g}s: {len(g.requests)}" for g in self.groups)
        return ", ".join(parts) + f" (per interval {intervals})"


def plan_requests(points: Iterable[Point], limits: Limits) -> tuple[ReadRequest, ...]:
    """Merge ``points`` into read requests under ``limits``. Raises ValueError for an unplannable point."""
    by_table: dict[RegisterTable, list[Point]] = {}
    for p in points:
        by_table.setdefault(p.table, []).append(p)
    requests: list[ReadRequest] = []
    for table in RegisterTable:
        if table in by_table:
            requests.extend(_plan_table(table, by_table[table], limits))
    return tuple(requests)


def _plan_table(table: RegisterTable, points: Sequence[Point], limits: Limits) -> list[ReadRequest]:
    limit = limits.max_bits if table.is_bits else limits.max_registers
    gap_limit = limits.max_gap * 16 if table.is_bits else limits.max_gap
    forbidden = [r for r in limits.forbidden if r.table is table]
    for p in points:
        if p.count > limit:
            raise ValueError(
                f"point {p.name} needs {p.count} registers, more than one request may read ({limit})"
            )
        for r in forbidden:
            if r.overlaps(table, p.address, p.end):
                raise ValueError(
                    f"point {p.name} lies in forbidden {table.value} addresses {r.start}..{r.end}"
                )

    def crosses_forbidden(start: int, end: int) -> bool:
        return any(r.overlaps(table, start, end) for r in forbidden)

    ordered = sorted(points, key=lambda p: (p.address, p.end, p.name))
    result: list[ReadRequest] = []
    start = ordered[0].address
    end = ordered[0].end
    members: list[Point] = [ordered[0]]
    for p in ordered[1:]:
        new_end = max(end, p.end)
        gap = p.address - end - 1
        joinable = (
            gap <= gap_limit
            and new_end - start + 1 <= limit
            and (gap <= 0 or not crosses_forbidden(end + 1, p.address - 1))
        )
        if joinable:
            end = new_end
            members.append(p)
            continue
        result.append(ReadRequest(table, start, end - start + 1, tuple(members)))
        start, end, members = p.address, p.end, [p]
    result.append(ReadRequest(table, start, end - start + 1, tuple(members)))
    return result


def one_request_per_point(points: Iterable[Point]) -> tuple[ReadRequest, ...]:
    """The naive plan (one read per point), the baseline the benchmark compares against."""
    return tuple(ReadRequest(p.table, p.address, p.count, (p,)) for p in points)


def compile_plan(device: Device) -> DevicePlan:
    """The device's poll groups (one per distinct interval, fastest first), each with its requests."""
    by_interval: dict[float, list[Point]] = {}
    for p in device.points:
        by_interval.setdefault(p.interval, []).append(p)
    groups = tuple(
        PollGroup(interval, plan_requests(pts, device.limits))
        for interval, pts in sorted(by_interval.items())
    )
    return DevicePlan(device, groups)
