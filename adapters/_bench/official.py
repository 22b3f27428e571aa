"""The official x402/4Mica packages for P5, in a scratch virtualenv of their own: the one the
interop tests (tests/interop/test_official.py) build and cache. Their import name
``fourmica_x402`` is ours too, so they never run in this interpreter.

:func:`scratch_python` is the cache itself, for any set of pinned packages (the interop tests'
x402 buyer virtualenvs use it too)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .loopback import Skipped, progress

__all__ = [
    "DEPS",
    "PINS",
    "PIP_TIMEOUT",
    "VENV_ENV",
    "official_env",
    "official_python",
    "scratch_python",
]

#: The official packages and what the official seller needs, exactly as the interop tests pin
#: them (tests/interop/test_official.py), so both use one cached virtualenv.
PINS = ("x402==2.20.0", "4mica-x402==1.2.3", "sdk-4mica==1.2.10")
DEPS = ("requests>=2.32", "fastapi>=0.115", "uvicorn>=0.29", "eth-account>=0.13")
VENV_ENV = "FOURMICA_INTEROP_VENV"
PIP_TIMEOUT = 600
_CHECK = (
    "import importlib.metadata as m, fastapi, requests, uvicorn, x402, fourmica_sdk;"
    "from fourmica_x402.client_scheme import FourMicaEvmScheme;"
    "from fourmica_x402.http import fastapi_payment_middleware_from_config;"
    "print(m.version('x402'), m.version('4mica-x402'), m.version('sdk-4mica'))"
)


def _python_in(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def official_env() -> dict[str, str]:
    """The environment of every official process: no 4MICA_* overrides, nothing of ours."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    env = {k: v for k, v in os.environ.items() if not k.startswith("4MICA_") and k not in drop}
    no_proxy = ",".join(filter(None, [env.get("NO_PROXY"), "127.0.0.1,localhost"]))
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    return env


def _check_venv(python: Path) -> str | None:
    """None when the virtualenv has the pinned official packages; else what is wrong."""
    if not python.exists():
        return f"{python} does not exist"
    try:
        out = subprocess.run(
            [str(python), "-I", "-c", _CHECK],
            capture_output=True,
            text=True,
            timeout=120,
            env=official_env(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} does not run: {exc}"
    want = " ".join(pin.split("==")[1] for pin in PINS)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        return f"{python} lacks the official packages: {lines[-1] if lines else out.returncode}"
    if out.stdout.strip() != want:
        return f"{python} has x402/4mica-x402/sdk-4mica {out.stdout.strip()}, want {want}"
    return None


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fourmica-x402-interop"


def _build_venv(target: Path, packages: Sequence[str]) -> None:
    """python -m venv + pip install of ``packages``; raises CalledProcessError/TimeoutExpired."""
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "venv", str(target)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    env = {k: v for k, v in official_env().items() if k not in ("NO_PROXY", "no_proxy")}
    for key in ("NO_PROXY", "no_proxy"):  # keep the user's proxy settings for PyPI
        if key in os.environ:
            env[key] = os.environ[key]
    subprocess.run(
        [
            str(_python_in(target)),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "--timeout",
            "60",
            *packages,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT,
        env=env,
    )


def scratch_python(
    packages: Sequence[str],
    *,
    check: Callable[[Path], str | None],
    what: str,
    announce: str,
    hint: str = "",
    build: bool = True,
) -> Path:
    """The Python of a cached virtualenv holding ``packages`` (pip requirements), built once.

    Cached under ``~/.cache/fourmica-x402-interop/<hash of the packages and Python version>``
    (``$XDG_CACHE_HOME`` honoured), built under a file lock and marked complete only once
    ``check(python)`` (None, or what is wrong) passes. ``what`` names the packages in
    messages, ``announce`` is printed before a build, ``hint`` ends the can't-build message.
    Raises :class:`Skipped` when there is none and it cannot be built (PyPI unreachable).
    """
    key = hashlib.sha256(
        "\n".join([*packages, f"py{sys.version_info[0]}.{sys.version_info[1]}"]).encode()
    ).hexdigest()[:16]
    root = _cache_root()
    venv = root / key
    python, done = _python_in(venv), venv / ".fourmica-interop-complete"
    if not build:
        if done.exists() and check(python) is None:
            return python
        raise Skipped(f"{what} are not installed in {venv}")
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f"{key}.lock", "w")  # noqa: SIM115 — held for the whole build
    except OSError as exc:
        raise Skipped(f"cannot use the cache of {what} {root}: {exc}") from None
    with lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time (the interop tests too)
        except ImportError:
            pass
        if done.exists() and check(python) is None:
            return python
        progress(announce.format(venv=venv))
        try:
            _build_venv(venv, packages)
        except subprocess.TimeoutExpired:
            shutil.rmtree(venv, ignore_errors=True)
            raise Skipped(f"pip install of {what} took over {PIP_TIMEOUT} s{hint}") from None
        except (OSError, subprocess.CalledProcessError) as exc:
            shutil.rmtree(venv, ignore_errors=True)
            lines = (getattr(exc, "stderr", None) or str(exc)).strip().splitlines()
            detail = [line for line in lines if line.startswith("ERROR")] or lines
            raise Skipped(
                f"could not install {what} (PyPI reachable?): {' | '.join(detail[-2:])[:300]}{hint}"
            ) from None
        problem = check(python)
        if problem:
            raise Skipped(f"the virtualenv of {what} is broken: {problem}")
        done.write_text("\n".join(packages) + "\n")
        return python


def official_python(*, build: bool = True) -> Path:
    """The Python of a virtualenv with the pinned official packages, built once if needed.

    ``$FOURMICA_INTEROP_VENV`` when set, else the interop tests' cache under
    ``~/.cache/fourmica-x402-interop/`` (built there from PyPI unless ``build`` is false).
    Raises :class:`Skipped` when there is none.
    """
    given = os.environ.get(VENV_ENV)
    if given:
        python = _python_in(Path(given))
        problem = _check_venv(python)
        if problem:
            raise Skipped(f"{VENV_ENV}={given}: {problem}")
        return python
    return scratch_python(
        [*PINS, *DEPS],
        check=_check_venv,
        what="the official packages",
        announce=f"P5: installing {' '.join(PINS)} into {{venv}} (once; may take minutes)",
        hint=f"; set {VENV_ENV} to a ready virtualenv",
        build=build,
    )
