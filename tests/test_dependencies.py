"""Every third-party module that the service and its client import at run time is a dependency named in
``[project.dependencies]`` — not one that happens to arrive through another package or the test extras
(``httpx`` was only in the test extra, and ``make run`` on a fresh machine crashed on its import)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OWN = ("app", "workers", "tensorpress", "migrations")
# Imported only where present, each with its reason; everything else must be a named dependency.
OPTIONAL = {
    "tensorrt": "GPU images only (NVIDIA's index, not PyPI); engine.tensorrt reports itself unavailable without it",
}


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group()).lower()


def imported_modules() -> dict[str, str]:
    """Top-level third-party modules imported anywhere in the shipped packages, with one file that does."""
    found: dict[str, str] = {}
    for package in OWN:
        for file in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(file.read_text(), str(file))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.partition(".")[0]
                    if top not in sys.stdlib_module_names and top not in OWN:
                        found.setdefault(top, str(file.relative_to(ROOT)))
    return found


def test_every_run_time_import_is_a_named_dependency():
    declared = {_name(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for module, where in imported_modules().items():
        if module in OPTIONAL:
            continue
        names = {_name(d) for d in distributions.get(module, [module])}
        if not names & declared:
            missing.append(f"{module} (imported by {where}; distribution {sorted(names)})")
    assert not missing, "imported at run time but not in [project.dependencies]: " + "; ".join(missing)


def test_the_check_sees_the_imports_it_is_about():
    modules = imported_modules()
    assert modules["httpx"].startswith(("app/", "tensorpress/")) and "uvicorn" in modules and "torch" in modules
