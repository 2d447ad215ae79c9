"""The tree's shape: the core (advsuite/) knows no plugin; plugins declare what the core shows of them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from advsuite.api import attack_names, build_attack

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_PACKAGES = ("advsuite.attacks", "advsuite.defenses", "advsuite.detectors")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "advsuite").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_imports_no_plugin(path: Path) -> None:
    found = [n for n in _imports(path) if n.startswith(PLUGIN_PACKAGES)]
    assert not found, f"{path.relative_to(ROOT)} imports {found}: the core reaches plugins only through configs"


def test_the_core_names_no_attack_metric() -> None:
    declared = {m for name in attack_names("evasion") for m in type(build_attack(name)).leaderboard_metrics}
    assert declared >= {"fooling_rate", "patch_success", "evasive_success"}  # the table is really read
    core = "\n".join(p.read_text() for p in (ROOT / "advsuite").rglob("*.py"))
    assert not sorted(m for m in declared if f'"{m}"' in core)
