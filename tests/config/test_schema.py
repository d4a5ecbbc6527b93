"""Named entries (points, commands, buses, ...) may be written keyed by name or as an array with names."""

from __future__ import annotations

import tomllib

import pytest

from gateway.schema import NAME_WHY, Problems, Table


def read(text: str) -> tuple[list[tuple[str, str, dict[str, object]]], list[str]]:
    """(name, key path, remaining keys) of each entry of ``devices.x.points``, and the problem lines."""
    problems = Problems("gw.toml")
    device = Table(tomllib.loads(text), "", problems).table("devices").table("x")  # type: ignore[union-attr]
    assert device is not None
    entries = device.named_entries("points", what="point")
    seen = []
    for name, table in entries:
        body = {k: table.raw(k) for k in table if k != "name"}
        table.finish()
        seen.append((name, table.where, body))
    device.finish()
    return seen, problems.lines


CASES = [
    pytest.param(
        """
        [devices.x.points.voltage]
        address = 1
        [devices.x.points.current]
        address = 2
        """,
        [
            ("voltage", "devices.x.points.voltage", {"address": 1}),
            ("current", "devices.x.points.current", {"address": 2}),
        ],
        [],
        id="keyed tables, file order",
    ),
    pytest.param(
        """
        [[devices.x.points]]
        name = "voltage"
        address = 1
        [[devices.x.points]]
        name = "current"
        address = 2
        """,
        [
            ("voltage", "devices.x.points[0]", {"address": 1}),
            ("current", "devices.x.points[1]", {"address": 2}),
        ],
        [],
        id="array of tables, file order",
    ),
    pytest.param(
        """
        [devices.x]
        points = [{ name = "a" }, { name = "b", unit = "V" }]
        """,
        [("a", "devices.x.points[0]", {}), ("b", "devices.x.points[1]", {"unit": "V"})],
        [],
        id="inline array",
    ),
    pytest.param(
        """
        [devices.x]
        points = { a = {}, "b.c" = { unit = "V" } }
        """,
        [("a", "devices.x.points.a", {}), ("b.c", 'devices.x.points."b.c"', {"unit": "V"})],
        [],
        id="inline keyed table, dotted name quoted in the path",
    ),
    pytest.param(
        """
        [devices.x.points.a]
        name = "a"
        """,
        [("a", "devices.x.points.a", {})],
        [],
        id="keyed with a name that repeats the key",
    ),
    pytest.param(
        """
        [devices.x.points.a]
        name = "b"
        """,
        [("a", "devices.x.points.a", {})],
        [
            'gw.toml: devices.x.points.a.name = "b": contradicts the table key "a" (the key names the point;'
            " leave name out)"
        ],
        id="keyed with a contradicting name",
    ),
    pytest.param(
        """
        [devices.x]
        points = [{ name = "a", unit = "V" }, { name = "b" }, { name = "a", unit = "A" }]
        """,
        [("a", "devices.x.points[0]", {"unit": "V"}), ("b", "devices.x.points[1]", {})],
        ['gw.toml: devices.x.points[2].name = "a": duplicate point name (first at devices.x.points[0])'],
        id="duplicate in the array form, later one left out",
    ),
    pytest.param(
        """
        [devices.x]
        points = [{ name = "-a" }, { name = "has space" }, { name = "" }, { name = 3 }, { unit = "V" }]
        """,
        [("-a", "devices.x.points[0]", {}), ("has space", "devices.x.points[1]", {})],
        [
            f'gw.toml: devices.x.points[0].name = "-a": {NAME_WHY}',
            f'gw.toml: devices.x.points[1].name = "has space": {NAME_WHY}',
            f'gw.toml: devices.x.points[2].name = "": {NAME_WHY}',
            "gw.toml: devices.x.points[3].name = 3: expected a string",
            "gw.toml: devices.x.points[4].name: is required",
        ],
        id="bad and missing names in the array form",
    ),
    pytest.param(
        """
        [devices.x.points."has space"]
        [devices.x.points.{long}]
        """.replace("{long}", "a" * 65),
        [("has space", 'devices.x.points."has space"', {}), ("a" * 65, "devices.x.points." + "a" * 65, {})],
        [
            f'gw.toml: devices.x.points."has space" = "has space": {NAME_WHY}',
            f'gw.toml: devices.x.points.{"a" * 65} = "{"a" * 57}...": {NAME_WHY}',
        ],
        id="bad names in the keyed form",
    ),
    pytest.param(
        """
        [devices.x]
        points = [{ name = "a" }, 3, "b"]
        """,
        [("a", "devices.x.points[0]", {})],
        [
            'gw.toml: devices.x.points[1] = 3: expected a table with name = "..." (one per point)',
            'gw.toml: devices.x.points[2] = "b": expected a table with name = "..." (one per point)',
        ],
        id="array mixing tables and values",
    ),
    pytest.param(
        """
        [devices.x]
        points = { a = { unit = "V" }, b = 3 }
        """,
        [("a", "devices.x.points.a", {"unit": "V"})],
        ["gw.toml: devices.x.points.b = 3: expected a table (one per point, keyed by its name)"],
        id="keyed form mixing tables and values",
    ),
    pytest.param(
        """
        [devices.x.points]
        name = "voltage"
        address = 1
        """,
        [],
        [
            "gw.toml: devices.x.points: expected points keyed by name ([devices.x.points.<name>] tables)"
            " or an array of tables each with a name"
        ],
        id="one plain table of settings",
    ),
    pytest.param(
        """
        [devices.x]
        points = "voltage"
        """,
        [],
        [
            'gw.toml: devices.x.points = "voltage": expected points keyed by name ([devices.x.points.<name>]'
            " tables) or an array of tables each with a name"
        ],
        id="neither a table nor an array",
    ),
    pytest.param("[devices.x]", [], [], id="missing is empty, not an error"),
    pytest.param("[devices.x]\npoints = []", [], [], id="empty array"),
]


@pytest.mark.parametrize(("text", "entries", "lines"), CASES)
def test_named_entries_accept_both_forms_and_report_problems_where_they_are(
    text: str, entries: list[tuple[str, str, dict[str, object]]], lines: list[str]
) -> None:
    seen, problems = read(text.replace("\n        ", "\n"))

    assert seen == entries
    assert problems == lines


def test_both_forms_give_the_same_entries_apart_from_where_they_sit() -> None:
    keyed, _ = read('[devices.x.points.a]\nunit = "V"\n[devices.x.points.b]\n')
    array, _ = read('[[devices.x.points]]\nname = "a"\nunit = "V"\n[[devices.x.points]]\nname = "b"\n')

    assert [(n, b) for n, _, b in keyed] == [(n, b) for n, _, b in array]
