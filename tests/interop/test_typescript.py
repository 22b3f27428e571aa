"""Interop with the official 4Mica TypeScript SDK (``@4mica/sdk``), run for real on loopback.

- ``scripts/ts/buyer.cjs``: the SDK's ``X402Flow`` pays our example Starlette seller, x402 v1
  (a G-v1 guarantee) and v2 (G-v2: the offer carries a delivery policy), then sends each
  payment header a second time;
- ``scripts/ts/recipient.cjs``: the SDK's recipient client, in its default configuration (it
  signs in with SIWE first), opens tabs on ``fourmica-x402 serve``, submits a guarantee our
  buyer signed (``scripts/ts/sign_guarantee.py``), decodes and verifies the BLS certificate and
  reads it back; the SDK's user client signs the same claims to the same bytes.

The SDK is installed with npm under ``~/.cache/fourmica-x402-interop/ts-<hash of the pins>``
(reused). Without ``node``/``npm``, or without the npm registry, the tests skip, except under
``CI=true`` where they fail (``.ci/run`` installs Node from Debian).

``@4mica/sdk`` 1.2.17 depends on ``@quillai-network/wachai-validation-sdk``, which the npm
registry does not serve; only its examples use it, so an empty local package stands in.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
from fourmica_x402.adapters._bench.loopback import free_port, serving

from fourmica_x402.core import Core
from fourmica_x402.guarantee import address_of
from fourmica_x402.testing import NETWORK

pytestmark = [pytest.mark.interop, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE / "scripts" / "ts"
EXAMPLES = HERE.parents[1] / "examples"
STUB = "@quillai-network/wachai-validation-sdk"
PACKAGE = {
    "name": "fourmica-x402-ts-interop",
    "private": True,
    "dependencies": {"@4mica/sdk": "1.2.17", "@noble/curves": "2.4.0"},
    "overrides": {STUB: "file:./stub"},
}
NPM_TIMEOUT = 300


@pytest.fixture(scope="session")
def sdk_dir(environment_missing: Callable[[str], NoReturn]) -> Path:
    """A directory whose ``node_modules`` holds the pinned SDK, installed once."""
    if not shutil.which("node") or not shutil.which("npm"):
        environment_missing("node and npm are needed for the TypeScript SDK interop tests")
    text = json.dumps(PACKAGE, indent=2, sort_keys=True)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = base / "fourmica-x402-interop"
    target = root / f"ts-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    done = target / ".fourmica-interop-complete"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one install at a time
        if done.exists():
            return target
        shutil.rmtree(target, ignore_errors=True)
        (target / "stub").mkdir(parents=True)
        (target / "stub" / "package.json").write_text(
            json.dumps({"name": STUB, "version": "0.1.0"})
        )
        (target / "package.json").write_text(text)
        try:
            out = subprocess.run(
                [
                    "npm",
                    "install",
                    "--omit=optional",
                    "--ignore-scripts",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                ],
                cwd=target,
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            shutil.rmtree(target, ignore_errors=True)
            environment_missing(f"npm install of @4mica/sdk took over {NPM_TIMEOUT} s")
        if out.returncode != 0:
            shutil.rmtree(target, ignore_errors=True)
            environment_missing(f"npm install of @4mica/sdk failed: {out.stderr.strip()[-300:]}")
        done.write_text(text)
    return target


def node_version() -> tuple[int, int]:
    out = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30)
    major, minor = out.stdout.strip().lstrip("v").split(".")[:2]
    return int(major), int(minor)


def run_node(sdk: Path, script: str, *args: str, timeout: float = 90) -> dict[str, Any]:
    """Run a script of ``scripts/ts`` with the SDK; its last stdout line is JSON."""
    env = {**os.environ, "SDK_DIR": str(sdk)}
    try:
        out = subprocess.run(
            ["node", str(SCRIPTS / script), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{script} timed out after {timeout} s: {exc.stderr!r}"[-2000:])
    lines = out.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        pytest.fail(f"{script} printed no JSON (rc {out.returncode}): {out.stderr[-2000:]}")
    assert "error" not in result, result["error"][-3000:]
    return result


def new_key() -> tuple[str, str]:
    key = "0x" + secrets.token_hex(32)  # throwaway
    return key, address_of(key)


def test_typescript_buyer_pays_our_seller_once_per_payment(sdk_dir: Path, tmp_path: Path) -> None:
    port, db = free_port(), f"sqlite:///{tmp_path / 'seller.db'}"
    base = f"http://127.0.0.1:{port}"
    key, buyer = new_key()
    core = Core(db)
    try:
        core.deposit(buyer, 1_000_000, network=NETWORK)
        env = {**os.environ, "PORT": str(port), "FOURMICA_X402_DB": db}
        args = [sys.executable, str(EXAMPLES / "starlette_seller.py")]
        with serving("seller", args, f"{base}/free", tmp_path / "seller.log", env):
            result = run_node(sdk_dir, "buyer.cjs", key, f"{base}/premium")
        guarantees = []
        for version, claims in ((1, "v1"), (2, "v2")):
            paid = result[f"v{version}"]
            assert paid["challenge"] == 402
            assert paid["status"] == 200, paid
            assert paid["claimsVersion"] == claims  # a v2 offer carries a delivery policy
            body = json.loads(paid["body"])
            assert body["payer"] == buyer
            guarantees.append(body["guarantee"])
            # the same header again: refused, never served or charged twice
            assert paid["againStatus"] == 402
            assert json.loads(paid["againBody"])["error"] == "replayed_request_id"
        assert len(set(guarantees)) == 2
        position = core.position(buyer, network=NETWORK)
        assert position.locked == 2 * 10_000  # $0.01 each, once
        assert core.audit() == []
    finally:
        core.close()


def test_typescript_recipient_on_our_service(sdk_dir: Path, tmp_path: Path) -> None:
    port, db = free_port(), f"sqlite:///{tmp_path / 'core.db'}"
    base = f"http://127.0.0.1:{port}"
    buyer_key, buyer = new_key()
    recipient_key, _ = new_key()
    core = Core(db)
    try:
        core.deposit(buyer, 1_000_000, network=NETWORK)
        args = [sys.executable, "-m", "fourmica_x402", "serve", "--sandbox", "--db", db]
        args += ["--port", str(port)]  # no keys: the SDK signs in and submits guarantees
        env = {**os.environ, "FOURMICA_X402_DB": db}
        with serving("service", args, f"{base}/health", tmp_path / "service.log", env):
            result = run_node(
                sdk_dir,
                "recipient.cjs",
                recipient_key,
                base,
                buyer_key,
                sys.executable,
                str(SCRIPTS / "sign_guarantee.py"),
            )
            metrics = httpx.get(f"{base}/metrics", timeout=10).text
        # the recipient client signed in (a nonce, a verify), as the docstring says it does
        auth = re.search(r'^fourmica_request_seconds_count\{path="auth"\} (\S+)$', metrics, re.M)
        assert auth is not None and float(auth[1]) >= 2, "the SDK did not sign in"
        assert result["problems"] == []
        for version in ("v1", "v2"):
            assert result[version]["blsValid"] is True
            # the G2 signature as the contract takes it; the SDK cannot make it on Node < 20.19
            assert result[version]["words"] == (8 if node_version() >= (20, 19) else None)
            assert result[version]["amount"] == "0x64"
        assert core.position(buyer, network=NETWORK).locked == 2 * 100
        assert core.audit() == []
    finally:
        core.close()
