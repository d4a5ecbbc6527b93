"""The rooms keep their doors: dependencies point one way (README, 'How it is built')."""

from __future__ import annotations

import ast
import subprocess
import sys
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


# -- the layering of gateway/ -----------------------------------------------------------------------------
#: Each room's rank: a module may import its own room and rooms of a lower or equal rank, never a higher one.
RANKS = {
    "gateway.model": 0,
    "gateway.errors": 0,
    "gateway.schema": 1,
    "gateway.mqtt_topics": 1,
    "gateway.registry": 1,
    "gateway.config": 2,
    "gateway.store": 3,
    "gateway.auth": 3,
    "gateway.pipeline": 3,
    "gateway.commands": 3,
    "gateway.permissions": 4,
    "gateway.uplink": 5,
    "gateway.service": 6,
    "gateway.app": 7,
    "gateway.cli": 8,
}


def room_of(module: str) -> str | None:
    parts = module.split(".")
    for n in (2, 1):
        if ".".join(parts[:n]) in RANKS:
            return ".".join(parts[:n])
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def runtime_imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Imports that run: ``if TYPE_CHECKING:`` blocks are left out; with ``top_level_only``, those inside
    functions too (they run later, so they cannot make an import cycle)."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if top_level_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


GATEWAY_FILES = [p for p in files("gateway") if p != REPO / "gateway" / "__init__.py"]
GATEWAY_MODULES = {module_name(p) for p in GATEWAY_FILES}


@pytest.mark.parametrize("path", GATEWAY_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_imports_a_room_above_its_own(path: Path) -> None:
    own = room_of(module_name(path))
    assert own is not None, f"{path} is in no room of the layering: add it to RANKS"
    above = {
        name
        for name in runtime_imports(path, top_level_only=False)
        if (room := room_of(name)) is not None and room != own and RANKS[room] > RANKS[own]
    }
    assert not above, f"{own} (rank {RANKS[own]}) imports {sorted(above)}"


def test_there_is_no_import_cycle_in_the_gateway() -> None:
    graph = {
        module_name(p): {
            n for n in runtime_imports(p, top_level_only=True) if n in GATEWAY_MODULES and n != module_name(p)
        }
        for p in GATEWAY_FILES
    }
    seen: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph[node]):
            if seen.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in seen:
                visit(nxt, [*stack, nxt])
        seen[node] = 2

    for start in sorted(graph):
        if start not in seen:
            visit(start, [start])


@pytest.mark.parametrize("module", ["gateway.config.loader", "gateway.permissions.report"])
def test_config_and_permissions_load_no_mqtt_library(module: str) -> None:
    code = f"import sys, {module}; print(sorted(m for m in ('paho', 'aiomqtt') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("path", GATEWAY_FILES + files("drivers"), ids=lambda p: str(p.relative_to(REPO)))
def test_only_the_cli_modules_parse_command_line_arguments(path: Path) -> None:
    is_cli = path.is_relative_to(REPO / "gateway" / "cli") or path.name == "cli.py"
    if not is_cli:
        assert "argparse" not in imports_of(path), f"{path.relative_to(REPO)} imports argparse"
