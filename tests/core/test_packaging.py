"""pyproject's package list matches the tree, and the console script works."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import fourmica_x402.adapters

import fourmica_x402

ROOT = Path(__file__).resolve().parents[2]


def _tree_packages() -> set[str]:
    found = set()
    for base, name in (
        (ROOT / "fourmica_x402", "fourmica_x402"),
        (ROOT / "adapters", "fourmica_x402.adapters"),
    ):
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            found.add(".".join((name, *rel)))
    return found


def test_every_package_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert set(config["tool"]["setuptools"]["packages"]) == _tree_packages()


def test_adapters_ship_as_fourmica_x402_adapters() -> None:
    """The package-dir mapping: adapters/ is installed as fourmica_x402.adapters (editable
    or not: tox installs the built distribution, a developer the work tree)."""
    installed = Path(fourmica_x402.adapters.__file__).resolve().parent
    assert installed.parent == Path(fourmica_x402.__file__).resolve().parent or installed == (
        ROOT / "adapters"
    )

    def modules(folder: Path) -> set[str]:
        return {p.relative_to(folder).as_posix() for p in folder.rglob("*.py")}

    assert modules(installed) == modules(ROOT / "adapters")


def test_console_script_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fourmica_x402", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "bench" in out.stdout and "demo" in out.stdout
