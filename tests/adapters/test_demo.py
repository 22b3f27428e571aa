"""`fourmica-x402 demo --quick` runs the main job end to end and checks its own invariants."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_quick_runs_and_every_invariant_holds(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"COLUMNS": "120", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(scratch)}
    out = subprocess.run(
        [sys.executable, "-m", "fourmica_x402", "demo", "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "all held" in text and "invariant broken" not in text
    assert "net transfers" in text and "covered from a defaulter's collateral" in text
    assert "does not pay its net debit" in text and "collateral covered" in text
    # no dead link: the dashboard is served (and its address printed) only with --serve
    assert "dashboard: http://" not in text and "run with --serve" in text
    assert list(scratch.iterdir()) == []  # the demo's Core and files are gone with it
    paid = next(line for line in text.splitlines() if line.startswith("workload:"))
    assert int(paid.split()[1]) >= 200  # hundreds of paid calls
