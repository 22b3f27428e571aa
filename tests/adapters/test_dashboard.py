"""The dashboard as a person sees it: served by uvicorn, opened in a real headless Chromium.

Uses Playwright for Python driving Debian's ``chromium`` (``/usr/bin/chromium``; ``.ci/run``
installs it) — never Playwright's own browser downloads. Without the browser (or Playwright)
the test skips, except in CI (``CI=true``), where it fails. A full-page screenshot is left in
``artifacts/dashboard.png`` at the repository root (git-ignored) for people to look at.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest
import uvicorn

from fourmica_x402.core import Core, CoreConfig
from fourmica_x402.evidence.disputes import Disputes
from fourmica_x402.records import Records
from fourmica_x402.service import create_app
from fourmica_x402.testing import NETWORK, FakeClock, TestBuyer

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
TIMEOUT_MS = 30_000
USD = 1_000_000  # one USDC in atomic units (6 decimals)

pytestmark = pytest.mark.slow


def _short(address: str) -> str:
    """An address as the dashboard shows it (the full one is in the tooltip)."""
    return f"{address[:6]}…{address[-4:]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class History:
    """A Core with a realistic past: one netted cycle gone to finality, and life after it."""

    def __init__(self, path: Path) -> None:
        self.clock = FakeClock()
        self.core = Core(
            str(path),
            config=CoreConfig(resolution_delay=60, payment_window=60, finality=60),
            clock=self.clock,
        )
        core = self.core
        self.alice, self.bob, self.carol, self.dave = (TestBuyer.new() for _ in range(4))
        for who, dollars in (
            (self.alice, 500),
            (self.bob, 300),
            (self.carol, 200),
            (self.dave, 50),
        ):
            core.deposit(who.address, dollars * USD, network=NETWORK)

        def pay(buyer: TestBuyer, seller: TestBuyer, amount: int) -> None:
            self.clock.advance(7)
            assert core.accept(*buyer.pay(core, seller.address, amount)).state == "payable"

        # Cycle 1: alice and bob pay each other (both directions), carol buys from bob and dave.
        pay(self.alice, self.bob, 30 * USD)
        pay(self.bob, self.alice, 10 * USD)
        pay(self.alice, self.bob, 30 * USD)
        pay(self.alice, self.dave, 20 * USD)
        pay(self.carol, self.dave, 15 * USD)
        pay(self.carol, self.bob, 5 * USD)
        self.accepted = 6
        # alice −70, bob +55, carol −20, dave +35 (USDC).
        self.cycle = core.close_cycle(network=NETWORK)
        self.clock.advance(61)
        assert core.tick()["resolved"] == 1
        core.pay_net_debit(self.cycle.cycle_id, self.alice.address)  # alice pays; carol does not
        self.clock.advance(61 + 61)
        assert core.tick()["finalized"] == 1
        self.claimed = core.claim_net_credit(self.cycle.cycle_id, self.bob.address)
        # Cycle 2 (open): business goes on, and dave takes some collateral out.
        pay(self.bob, self.carol, 4 * USD)
        pay(self.dave, self.alice, 2 * USD)
        self.withdrawal = core.request_withdrawal(self.dave.address, 10 * USD, network=NETWORK)
        self.cycle = core.cycle(self.cycle.cycle_id)
        # A dispute on the newest guarantee, kept with the seller's records in this database.
        self.disputed = core.guarantees(limit=1)[0].guarantee_id
        Disputes(Records(core.store)).open(self.disputed, "the response was empty")

    @property
    def participants(self) -> list[TestBuyer]:
        return [self.alice, self.bob, self.carol, self.dave]


@pytest.fixture
def history(tmp_path: Path) -> Iterator[History]:
    h = History(tmp_path / "dashboard.db")
    yield h
    assert h.core.audit() == []
    h.core.close()


@contextmanager
def _serve(core: Core) -> Iterator[str]:
    """The service over ``core`` under a real uvicorn server on loopback (no ticking: the
    clock is fake); yields its URL."""
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(core, tick_interval=None),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def dashboard_url(history: History) -> Iterator[str]:
    with _serve(history.core) as url:
        yield url


@contextmanager
def _dashboard_page(
    url: str, screenshot: Path, missing: Callable[[str], NoReturn]
) -> Iterator[tuple[Page, list[str]]]:
    """The dashboard at ``url`` open in headless Chromium, its full-page picture taken first
    (while the page is fresh: it reloads itself); yields the page and its script errors."""
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} not found (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        missing('playwright is not installed (pip install -e ".[test]")')
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot.unlink(missing_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=TIMEOUT_MS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=10_000)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            response = page.goto(url + "/dashboard", wait_until="load")
            assert response is not None and response.status == 200
            page.screenshot(path=str(screenshot), full_page=True)
            yield page, errors
        finally:
            browser.close()
    data = screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000, f"{screenshot} is only {len(data)} bytes"


def test_dashboard_in_headless_chromium(
    history: History, dashboard_url: str, environment_missing: Callable[[str], NoReturn]
) -> None:
    from playwright.sync_api import expect

    cycle = history.cycle
    assert cycle.status == "final" and cycle.guarantee_count == history.accepted
    cid = cycle.cycle_id
    screenshot = ARTIFACTS / "dashboard.png"
    with _dashboard_page(dashboard_url, screenshot, environment_missing) as (page, errors):
        expect(page).to_have_title("fourmica-x402 Core")
        expect(page.locator("h1")).to_have_text("fourmica-x402 Core")

        # Positions: every participant, in the short form, once.
        shown = page.locator("#positions tbody tr td:first-child").all_inner_texts()
        assert sorted(shown) == sorted(_short(b.address) for b in history.participants)
        expect(page.locator(f'#positions code[title="{history.alice.address}"]')).to_be_visible()

        # The closed (now final) cycle: its guarantee count and net transfers.
        row = page.locator("#cycles tbody tr").filter(has=page.locator(f'a[href="#cycle-{cid}"]'))
        expect(row).to_have_count(1)
        cells = row.locator("td")
        expect(cells.nth(0)).to_have_text(f"#{cid}")
        expect(cells.nth(1)).to_have_text("final")
        expect(cells.nth(2)).to_have_text(str(history.accepted))
        expect(cells.nth(4)).to_have_text(f"{cycle.net_transfers:,}")
        assert cycle.net_transfers > 0
        expect(cells.nth(3)).to_have_text("110 USDC")  # gross: 30+10+30+20+15+5

        # Its net positions: who owed, who was owed, who paid, who defaulted.
        nets = page.locator(f"#cycle-{cid}-positions tbody tr")
        expect(nets).to_have_count(4)
        roles = page.locator(f"#cycle-{cid}-positions tbody td:nth-child(2)")
        assert set(roles.all_inner_texts()) == {"debtor", "creditor"}

        def net_row(who: TestBuyer) -> list[str]:
            return (
                nets.filter(has=page.locator(f'code[title="{who.address}"]'))
                .locator("td")
                .all_inner_texts()
            )

        alice, bob, carol = (net_row(w) for w in (history.alice, history.bob, history.carol))
        assert (alice[1], alice[4], alice[5]) == ("debtor", "−70 USDC", "paid")
        assert (carol[1], carol[4], carol[5]) == ("debtor", "−20 USDC", "defaulted")
        assert (bob[1], bob[4]) == ("creditor", "55 USDC")
        pairs = page.locator(f"#cycle-{cid}-pairs tbody tr")
        expect(pairs).to_have_count(5)  # alice→bob (twice, one pair), bob→alice, …

        # Defaults: carol, in that cycle, covered from her collateral.
        defaults = page.locator("#defaults tbody tr")
        expect(defaults).to_have_count(1)
        expect(defaults.locator("td")).to_have_text(
            [_short(history.carol.address), str(cid), "20 USDC", "20 USDC", "0 USDC"]
        )

        # Withdrawals: dave's pending one.
        withdrawals = page.locator("#withdrawals tbody tr")
        expect(withdrawals).to_have_count(1)
        expect(withdrawals.locator("td").nth(1)).to_have_text(_short(history.dave.address))
        expect(withdrawals.locator("td").nth(2)).to_have_text("10 USDC")
        expect(withdrawals.locator("td").nth(3)).to_have_text("pending")

        # Recent guarantees: all eight, newest cycle's two not yet in a closed cycle.
        expect(page.locator("#guarantees tbody tr")).to_have_count(history.accepted + 2)
        # Their dispute state: the disputed one says so, the others show none.
        disputed = page.locator("#guarantees tbody tr").filter(
            has=page.locator(f'code[title="{history.disputed}"]')
        )
        expect(disputed.locator("td").nth(6)).to_have_text("opened")
        states = page.locator("#guarantees tbody td:nth-child(7)").all_inner_texts()
        assert sorted(states) == ["opened"] + ["—"] * (history.accepted + 1)

        # Following the cycle link brings its section into view.
        page.locator(f'#cycles a[href="#cycle-{cid}"]').click()
        expect(page).to_have_url(f"{dashboard_url}/dashboard#cycle-{cid}")
        section = page.locator(f"#cycle-{cid}")
        expect(section).to_be_visible()
        expect(section).to_be_in_viewport()
        expect(page.locator(f"#cycle-{cid}-positions h2")).to_be_in_viewport()
        assert errors == []


# -- the signals over the last cycles --------------------------------------------------------

# Six cycles of two buyers at two sellers: (buyer, seller, dollars). Cycle 4's debit of ben is
# never paid (a default, covered from his collateral); cycle 6 is closed, not yet resolved.
PLAN = [
    [("ann", "shop", 10), ("ben", "shop", 5)],
    [("ann", "shop", 20), ("ann", "cafe", 4), ("ben", "cafe", 6)],
    [("ben", "shop", 2)],
    [("ann", "shop", 12), ("ben", "shop", 12), ("ann", "cafe", 12), ("ben", "cafe", 12)],
    [("ann", "cafe", 7), ("ben", "shop", 3)],
    [("ann", "shop", 25)],
]


class Cycles:
    """A Core that went through :data:`PLAN`."""

    def __init__(self, path: Path) -> None:
        self.clock = FakeClock()
        config = CoreConfig(resolution_delay=60, payment_window=60, finality=60)
        self.core = core = Core(str(path), config=config, clock=self.clock)
        buyers = {"ann": TestBuyer.new(), "ben": TestBuyer.new()}
        self.sellers = {"shop": TestBuyer.new().address, "cafe": TestBuyer.new().address}
        for buyer in buyers.values():
            core.deposit(buyer.address, 1000 * USD, network=NETWORK)
        self.ids: list[int] = []
        for n, payments in enumerate(PLAN, start=1):
            for who, to, dollars in payments:
                self.clock.advance(5)
                core.accept(*buyers[who].pay(core, self.sellers[to], dollars * USD))
            cycle_id = core.close_cycle(network=NETWORK).cycle_id
            self.ids.append(cycle_id)
            if n < len(PLAN):  # resolve, pay the debits (but ben's in cycle 4), finalise
                self.clock.advance(61)
                assert core.tick()["resolved"] == 1
                owing = {p.address for p in core.cycle_positions(cycle_id) if p.role == "debtor"}
                for name, buyer in buyers.items():
                    if buyer.address in owing and (n, name) != (4, "ben"):
                        core.pay_net_debit(cycle_id, buyer.address)
                self.clock.advance(122)
                assert core.tick()["finalized"] == 1


def test_the_signal_charts_in_headless_chromium(
    tmp_path: Path, environment_missing: Callable[[str], NoReturn]
) -> None:
    from playwright.sync_api import expect

    cycles = Cycles(tmp_path / "signals.db")
    gross = [sum(d for *_, d in payments) * USD for payments in PLAN]
    counts = [len(payments) for payments in PLAN]
    expected = {
        "gross": gross,
        "guarantees": counts,
        "average": [g // c for g, c in zip(gross, counts, strict=True)],
        "transfers": [3, 4, 2, 4, 4, 2],  # participants whose net is not zero
        "defaults": [0, 0, 0, 1, 0, 0],
    }
    screenshot = ARTIFACTS / "dashboard-signals.png"
    with (
        _serve(cycles.core) as url,
        _dashboard_page(url, screenshot, environment_missing) as (page, errors),
    ):
        section = page.locator("#signals")
        expect(section.locator("#signals-0 h3")).to_have_text("USDC · Base Sepolia")
        expect(section.locator("svg")).to_have_count(len(expected))
        for key, values in expected.items():
            bars = page.locator(f"#chart-0-{key} rect")
            drawn = bars.evaluate_all("bars => bars.map(b => [b.dataset.cycle, b.dataset.value])")
            assert drawn == [[str(i), str(v)] for i, v in zip(cycles.ids, values, strict=True)]
            # As drawn on the page: bar heights in proportion to the values.
            boxes = [bars.nth(i).bounding_box() if v else None for i, v in enumerate(values)]
            heights = [box["height"] if box else 0 for box in boxes]
            top = max(values)
            assert heights[values.index(top)] == pytest.approx(66, abs=0.5)
            assert heights == pytest.approx([66 * v / top for v in values], abs=1.0)
        big = cycles.ids[3]
        expect(page.locator(f'#chart-0-gross rect[data-cycle="{big}"] title')).to_have_text(
            f"cycle #{big}: 48 USDC"
        )
        expect(page.locator("#chart-0-gross svg text").first).to_have_text("max 48 USDC")
        expect(page.locator("#chart-0-defaults rect.bad")).to_have_count(len(PLAN))

        # Per seller: nothing claimed yet, so the final cycles' credits are claimable (the
        # sixth cycle is not resolved).
        def row(table: str, address: str | None = None) -> dict[str, str]:
            """A table row as {column header: cell text} (the row of ``address``)."""
            headers = page.locator(f"#{table} thead th").all_inner_texts()
            rows = page.locator(f"#{table} tbody tr")
            if address is not None:
                rows = rows.filter(has=page.locator(f'code[title="{address}"]'))
            cells = rows.locator("td").all_inner_texts()
            return dict(zip(headers, cells, strict=True))

        expect(page.locator("#signals-sellers tbody tr")).to_have_count(2)
        assert row("signals-sellers", cycles.sellers["shop"]) == {
            "seller": f"{cycles.sellers['shop'][:6]}…{cycles.sellers['shop'][-4:]}",
            "asset": "USDC · Base Sepolia",
            "guarantees": "8",
            "amount": "89 USDC",
            "average payment": "11.125 USDC",
            "payers": "2",
            "per payer": "4.00",
            "per cycle": "1.33",  # 8 guarantees in 6 closed cycles
            "claimable": "64 USDC",
        }
        cafe = row("signals-sellers", cycles.sellers["cafe"])
        assert [cafe[k] for k in ("guarantees", "amount", "average payment", "per cycle")] == [
            "5",
            "41 USDC",
            "8.2 USDC",
            "1.67",  # 5 guarantees in the 3 closed cycles it was paid in
        ]
        assert cafe["claimable"] == "41 USDC"
        # Per asset: 105 USDC of net debits in final cycles, ben's 24 covered from collateral.
        assert row("signals-assets") == {
            "asset": "USDC · Base Sepolia",
            "closed cycles": "6",
            "net debits (final)": "105 USDC",
            "paid in time": "81 USDC",
            "covered": "24 USDC",
            "shortfall": "0 USDC",
            "success rate": "77.1%",
            "defaults": "1",
            "defaulted": "24 USDC",
            "unclaimed": "105 USDC",
        }
        assert page.locator("script, img, link[rel=stylesheet], iframe").count() == 0
        assert errors == []
    assert cycles.core.audit() == []
    cycles.core.close()


def test_a_position_on_a_network_this_process_does_not_know_is_shown_by_its_id(
    tmp_path: Path,
) -> None:
    """A seller's process may register a network the service's process does not: the
    dashboard names it by its CAIP-2 id instead of failing whole."""
    from starlette.testclient import TestClient

    core = Core(str(tmp_path / "core.db"))
    with core.store.transaction() as tx:  # written by a process that registered eip155:10
        tx.execute(
            "INSERT INTO fx_positions (network, asset, address, collateral, credit_limit) "
            "VALUES ('eip155:10', ?, ?, 1000000, 1000000)",
            ("0x0b2C639c533813f4Aa9D7837CAf62653d097Ff85", TestBuyer.new().address),
        )
    app = create_app(core, api_key="k", tick_interval=None, webhooks=False)
    with TestClient(app) as client:
        page = client.get("/")
        assert page.status_code == 200 and "eip155:10" in page.text
    core.close()


def test_the_newest_defaults_are_shown_past_the_first_thousand(tmp_path: Path) -> None:
    """The "Defaults" table read the first 1 000 defaults ever and showed the last 20 of those:
    once a Core had had a thousand, a new default never reached the page."""
    from starlette.testclient import TestClient

    clock = FakeClock()
    config = CoreConfig(resolution_delay=0, payment_window=0, finality=0)
    core = Core(str(tmp_path / "core.db"), config=config, clock=clock)
    seller = TestBuyer.new().address

    def default_in_a_cycle(debtors: list[TestBuyer]) -> None:
        for debtor in debtors:  # none pays its net debit: each is covered from collateral
            core.deposit(debtor.address, 10, network=NETWORK)
            core.accept(*debtor.pay(core, seller, 10))
        core.close_cycle(network=NETWORK)
        clock.advance(1)
        assert core.tick()["finalized"] == 1

    default_in_a_cycle([TestBuyer.new() for _ in range(1000)])
    newest = TestBuyer.new()
    default_in_a_cycle([newest])
    app = create_app(core, api_key="k", tick_interval=None, webhooks=False)
    with TestClient(app) as client:
        page = client.get("/").text
    defaults = page.split('<section id="defaults">', 1)[1].split("</section>", 1)[0]
    assert defaults.count("<tr>") == 21  # the header and the newest 20, newest first
    first = defaults.split("<tbody>", 1)[1].split("</tr>", 1)[0]
    assert f'title="{newest.address}"' in first and "<td>2</td>" in first
    assert core.audit() == []
    core.close()
