"""The broker's permission code gives the answer every shared vector expects.

tests/vectors/permissions.json is shared with the gateway's Python permission code: a token's
claims plus Event Grid topic templates (or a claim listing filters) either grant a publish or
subscribe, or they do not, and both sides must agree. Here the vectors run through
deploy/broker/permissions.c, compiled into a small test program with the plugin's own sources.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import BROKER_DIR, build_plugin

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "permissions.json"
CASES: list[dict[str, Any]] = json.loads(VECTORS.read_text())["cases"]


@pytest.fixture(scope="module")
def c_verdicts() -> dict[str, bool]:
    build_plugin()
    run = subprocess.run(
        [str(BROKER_DIR / "build" / "test_permissions"), str(VECTORS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode in (0, 1), run.stderr  # 2 = the program could not read the vectors
    verdicts: dict[str, bool] = {}
    for line in run.stdout.splitlines():
        _status, name, computed = line.split("\t")
        verdicts[name] = computed == "true"
    return verdicts


def test_the_vectors_cover_both_actions_and_both_outcomes() -> None:
    kinds = {(case["action"], case["allowed"]) for case in CASES}
    assert kinds == {("publish", True), ("publish", False), ("subscribe", True), ("subscribe", False)}


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_the_broker_plugin_agrees_with_the_vector(case: dict[str, Any], c_verdicts: dict[str, bool]) -> None:
    assert c_verdicts[case["name"]] == case["allowed"], (
        f"{case['action']} {case['topic']!r} with templates {case['templates']} "
        f"and claims {case['claims']}: plugin says {c_verdicts[case['name']]}"
    )
