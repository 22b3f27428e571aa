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


@pytest.mark.slow
def test_ctrl_c_during_the_workload_stops_without_a_traceback(tmp_path: Path) -> None:
    """The buyers' threads went on calling sellers a Ctrl-C had stopped: a traceback a thread."""
    import selectors
    import signal
    import time

    env = {
        "COLUMNS": "120",
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
    }
    demo = subprocess.Popen(
        [sys.executable, "-m", "fourmica_x402", "demo", "--quick"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    try:
        assert demo.stdout is not None
        seen, deadline = "", time.monotonic() + 60
        with selectors.DefaultSelector() as selector:  # bounded: up to the sellers' start
            selector.register(demo.stdout, selectors.EVENT_READ)
            while "sellers up" not in seen and time.monotonic() < deadline:
                if selector.select(timeout=1):
                    seen += demo.stdout.readline()
        assert "sellers up" in seen, seen
        time.sleep(1.5)  # the workload under way
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=60)
    finally:
        demo.kill()
    assert "Traceback" not in err and "Exception in thread" not in err, err[-3000:]
    assert demo.returncode != 0 and "Aborted" in out + err
