"""Shared fixtures. No tests/__init__.py: pytest runs with --import-mode=importlib.

``audited_core``: an embedded Core on a fresh SQLite file, audited when the test ends.

Databases: ``store_url`` runs a test on a fresh SQLite file and on a fresh PostgreSQL
database (marked ``postgres``); ``sqlite_url`` and ``postgres_url`` give one of them.
PostgreSQL comes from the admin URL in ``FOURMICA_TEST_POSTGRES_URL`` (a role that may
create databases; ``.ci/run`` sets one up): each test gets its own ``fx_test_<hex>``
database, dropped afterwards. Without a reachable server those tests skip, except in CI
(``CI=true`` with the URL set), where they fail: CI must really test PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest

DATA = Path(__file__).parent / "data"
POSTGRES_ENV = "FOURMICA_TEST_POSTGRES_URL"

# A developer's own database, exported as the README shows, is the default Core of every
# PaymentConfig: the tests (and the servers they start) must never write into it.
os.environ.pop("FOURMICA_X402_DB", None)


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    """The conformance vectors (kept in tests/data)."""
    return json.loads((DATA / "guarantee_vectors.json").read_text())


def _environment_missing(why: str) -> NoReturn:
    """Skip a test this machine cannot run; in CI (CI=true) fail instead: CI runs them all."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (CI=true: this test must run)", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def environment_missing() -> Callable[[str], NoReturn]:
    """:func:`_environment_missing`, for tests whose machine lacks root, a tmpfs, …"""
    return _environment_missing


def _postgres_missing(why: str) -> NoReturn:
    """Skip, or fail in CI when a PostgreSQL URL was given (the server must be there)."""
    message = f"PostgreSQL not available: set {POSTGRES_ENV} to an admin URL ({why})"
    if os.environ.get("CI") == "true" and os.environ.get(POSTGRES_ENV):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def _postgres_admin_url() -> str:
    """The admin URL, checked once per session: the server answers and we may log in."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        _postgres_missing("unset")
    try:
        import psycopg
    except ImportError:
        _postgres_missing('psycopg is not installed: pip install "fourmica-x402[postgres]"')
    try:
        psycopg.connect(url, connect_timeout=5, autocommit=True).close()
    except psycopg.Error as exc:
        _postgres_missing(f"cannot connect: {str(exc).splitlines()[0] if str(exc) else exc!r}")
    return url


@pytest.fixture
def postgres_url(_postgres_admin_url: str) -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped after the test."""
    with _database(_postgres_admin_url, "") as url:
        yield url


@pytest.fixture
def postgres_linguistic_url(_postgres_admin_url: str) -> Iterator[str]:
    """:func:`postgres_url` with a linguistic collation (ICU ``en-US``, as an ``en_US.UTF-8``
    install sorts text): ``"0xB…"`` sorts after ``"0xa…"`` there, before it in byte order."""
    import psycopg

    options = " TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'"
    try:
        with _database(_postgres_admin_url, options) as url:
            yield url
    except psycopg.errors.FeatureNotSupported as exc:  # a server built without ICU
        _environment_missing(f"PostgreSQL without ICU collations: {exc}")


@contextlib.contextmanager
def _database(admin_url: str, options: str) -> Iterator[str]:
    """A fresh PostgreSQL database made with ``CREATE DATABASE … options``, dropped after."""
    import psycopg

    name = f"fx_test_{uuid.uuid4().hex}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"{options}')
    parts = urlsplit(admin_url)
    yield urlunsplit(parts._replace(path=f"/{name}"))
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for attempt in range(20):  # bounded
            try:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                break
            except psycopg.errors.InsufficientPrivilege:
                # FORCE may not end a backend of another role (an autovacuum worker that
                # just started on the busy test database); it finishes in a moment.
                if attempt == 19:
                    raise
                time.sleep(0.25)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """The path of a fresh SQLite database file (not created yet)."""
    return str(tmp_path / "core.db")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest) -> str:
    """A fresh, empty database of each engine: a SQLite path, then a PostgreSQL URL."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture
def audited_core(tmp_path: Path) -> Iterator[Any]:
    """A Core on a fresh SQLite file; the test must leave it consistent (``audit()``)."""
    from fourmica_x402.core import Core

    core = Core(str(tmp_path / "core.db"))
    yield core
    assert core.audit() == []
    core.close()
