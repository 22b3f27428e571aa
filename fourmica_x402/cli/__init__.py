"""The ``fourmica-x402`` command line.

Every refused input ends in one ``Error: …`` line and a non-zero exit (2 for a bad
argument), never a traceback; amounts are shown to people in dollars and times in UTC.

The commands live by audience: :mod:`.core` (the Core's operator: serve, deposit, withdraw,
positions, factor) and :mod:`.cycles` (cycle close, cycle run), :mod:`.buyer` (offers, pay, key),
:mod:`.tools` (demo, bench); :mod:`._args` holds what they share, :mod:`._format` how
durations, amounts and times are written and read.
"""

from __future__ import annotations

import click

from .buyer import key, offers, pay
from .core import deposit, factor, positions, serve, withdraw
from .cycles import cycle
from .evidence import dispute, evidence, verify_evidence
from .prices import reprice
from .tools import bench, demo

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fourmica-x402")
def main() -> None:
    """Sell an API per request with the 4Mica credit flow on top of x402."""


for _command in (
    serve,
    deposit,
    withdraw,
    cycle,
    positions,
    factor,
    offers,
    pay,
    key,
    demo,
    bench,
    evidence,
    verify_evidence,
    dispute,
    reprice,
):
    main.add_command(_command)
