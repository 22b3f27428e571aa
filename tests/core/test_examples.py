"""The examples run as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_sign_guarantee_example_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "sign_guarantee.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert '"signer": "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"' in out.stdout
    assert '"amount": 10000' in out.stdout
