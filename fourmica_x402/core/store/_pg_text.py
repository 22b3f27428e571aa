"""What the PostgreSQL store shows people of a driver error or a URL: never a credential."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

__all__ = ["describe", "first_line", "scrub"]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def scrub(text: str, secrets: Sequence[str]) -> str:
    """Mask each secret where it stands as a token of its own (``:p@``, ``password=p``): a
    short password must not mask every letter it shares with the message ("***ort")."""
    for secret in secrets:
        for form in {secret, quote(secret, safe="")}:
            if form:
                text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(form)}(?![A-Za-z0-9])", "***", text)
    return text


def describe(params: dict[str, Any]) -> str:
    """The connection target without credentials, e.g. ``postgresql://app@db:5432/core``."""
    user = params.get("user")
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port")
    dbname = params.get("dbname") or ""
    return f"postgresql://{f'{user}@' if user else ''}{host}{f':{port}' if port else ''}/{dbname}"
