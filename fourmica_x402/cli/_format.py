"""Durations, amounts and times in the forms people write and read: a duration given as
``90``, ``15m`` or ``1h30m`` and shown back in its largest unit, an amount in dollars (or
atomic units), an epoch time as UTC ISO 8601 and a time left as ``3d 4h``."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

import click
from click.core import ParameterSource

from ..errors import FourmicaError

INT64_MAX = 2**63 - 1  # the Core keeps amounts in signed 64-bit columns


# -- durations ----------------------------------------------------------------------------------


class Seconds(click.ParamType):
    """A duration: a finite number of seconds above zero."""

    name = "seconds"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float) and math.isfinite(value) and value > 0:
            return value
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"{value!r} must be a number of seconds above zero", param, ctx)
        return seconds


#: The longest duration a setting takes (ten years): more is a typo, and past what a date shows.
MAX_DURATION = 3_650 * 86_400
_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}
_NUMBER = re.compile(r"\d+(?:\.\d+)?\Z")
_WITH_UNITS = re.compile(r"(?:\d+(?:\.\d+)?[smhd])+\Z")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str) -> float:
    """``90`` (seconds), ``90s``, ``15m``, ``6h``, ``22d``, ``1h30m`` → seconds. ValueError else."""
    body = text.strip().lower()
    if len(body) > 40:
        raise ValueError(text)
    if _NUMBER.match(body):
        return float(body)
    if not _WITH_UNITS.match(body):
        raise ValueError(text)
    return float(sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(body)))


def span(seconds: float) -> str:
    """A duration as an option takes it, in its largest whole unit: ``22d``, ``6h``, ``90s``."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds}s"


class Duration(click.ParamType):
    """A duration: seconds (``90``) or a number with a unit (``90s``, ``15m``, ``6h``, ``22d``),
    above zero (or zero, when ``zero``), whole seconds when ``whole``, at most ten years."""

    name = "duration"

    def __init__(self, *, zero: bool = False, whole: bool = False) -> None:
        self.zero = zero
        self.whole = whole

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        where = ""  # click names the variable; say the value came from it
        name = None if param is None else param.name
        if (
            ctx is not None
            and name
            and ctx.get_parameter_source(name) is ParameterSource.ENVIRONMENT
        ):
            where = " (from the environment)"
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            try:
                seconds = parse_duration(str(value))
            except ValueError:
                self.fail(
                    f"{str(value)!r:.60}{where} is not a duration: give seconds (90) or a number "
                    "and a unit: 90s, 15m, 6h, 22d",
                    param,
                    ctx,
                )
        if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not self.zero):
            least = "zero or more" if self.zero else "above zero"
            self.fail(f"{str(value)!r:.60}{where} must be {least}", param, ctx)
        if seconds > MAX_DURATION:
            self.fail(f"{str(value)!r:.60}{where} is longer than {span(MAX_DURATION)}", param, ctx)
        if self.whole and seconds != int(seconds):
            self.fail(f"{str(value)!r:.60}{where} must be whole seconds", param, ctx)
        return seconds


# -- amounts ------------------------------------------------------------------------------------


def atomic_amount(value: str, network: str, asset: str | None) -> int:
    """'$5' or '5.00' → dollars of the asset; '5000000u' → atomic units."""
    from ..networks import default_asset, find_asset, format_amount, parse_money

    text = value.strip().replace("_", "")
    if text.endswith("u") and text[:-1].isdigit() and text[:-1].isascii():
        atomic = int(text[:-1])
        if not 0 < atomic <= INT64_MAX:
            limit = format_amount(INT64_MAX, None)
            raise click.BadParameter(f"amount {value!r} must be 1 to {limit}", param_hint="AMOUNT")
        return atomic
    token = find_asset(network, asset) if asset else default_asset(network)
    if token is None:
        raise click.BadParameter(
            "unknown asset: give the amount in atomic units, e.g. 5000000u", param_hint="AMOUNT"
        )
    try:
        return parse_money(value, token, what="amount", maximum=INT64_MAX)
    except FourmicaError as exc:
        raise click.BadParameter(exc.message, param_hint="AMOUNT") from None


# -- times --------------------------------------------------------------------------------------


def utc(at: float | None) -> str | None:
    """An epoch time as ISO 8601 in UTC, to the second: ``2025-06-01T12:00:00Z``."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def with_times(record: dict[str, Any]) -> dict[str, Any]:
    """A record's epoch times (``*_at``, ``pay_by``) as UTC ISO strings."""
    return {
        key: utc(value)
        if (key.endswith("_at") or key == "pay_by") and isinstance(value, int | float)
        else value
        for key, value in record.items()
    }


def duration(seconds: float) -> str:
    """``3d 4h``, ``2h 5m``, ``40s``: how long until something, to the unit people care about."""
    left = max(0, math.ceil(seconds))
    days, rest = divmod(left, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"
