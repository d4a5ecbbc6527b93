"""The rooms keep their doors: dependencies point one way (README, 'How it is built')."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DRIVER_MAY_IMPORT = {"gateway.model", "gateway.errors", "gateway.schema"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("path", files("drivers"), ids=lambda p: str(p.relative_to(REPO)))
def test_drivers_import_only_the_core_types(path: Path) -> None:
    gateway_imports = {name for name in imports_of(path) if name.split(".")[0] == "gateway"}
    assert gateway_imports <= DRIVER_MAY_IMPORT, f"{path.name} imports {gateway_imports - DRIVER_MAY_IMPORT}"


@pytest.mark.parametrize("path", files("drivers"), ids=lambda p: str(p.relative_to(REPO)))
def test_a_driver_never_imports_another_driver(path: Path) -> None:
    own = path.relative_to(REPO / "drivers").parts[0]
    others = {n for n in imports_of(path) if n.startswith("drivers.") and n.split(".")[1] != own}
    assert not others, f"{path.name} imports {others}"


@pytest.mark.parametrize(
    "path", files("gateway/uplink") + files("gateway/auth"), ids=lambda p: str(p.relative_to(REPO))
)
def test_the_uplink_knows_nothing_of_drivers(path: Path) -> None:
    assert not {n for n in imports_of(path) if n.split(".")[0] == "drivers"}


@pytest.mark.parametrize("room", ["model.py", "errors.py", "schema.py"])
def test_the_core_types_import_only_the_standard_library_and_each_other(room: str) -> None:
    libraries = {"aiomqtt", "paho", "pymodbus", "serial", "jwt", "cryptography", "azure", "drivers"}
    assert not {n for n in imports_of(REPO / "gateway" / room) if n.split(".")[0] in libraries}
