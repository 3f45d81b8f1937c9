"""The live view in headless Chromium: a real call through a real hub shows up, then goes, without a reload.

Screenshots: test-artifacts/admin-live-*.png and admin-overview.png.
"""

# ruff: noqa: F811  (the browser fixtures are imported from test_browser, then used as arguments)
from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from streams.models import Account
from tests.console.conftest import make_staff
from tests.console.test_browser import CHROMEDRIVER, CHROMIUM, Console, browser, console  # noqa: F401
from tests.support import Customer, Gateway, basic_auth, eventually, tone

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="needs Debian's chromium and chromium-driver"
    ),
]

if CHROMIUM.exists() and CHROMEDRIVER.exists():
    from selenium.webdriver.support.wait import WebDriverWait


class LiveCall:
    """A gateway sending audio to the hub for a customer, in an event loop of its own, until `hang_up`."""

    def __init__(self, ws_url: str, account: Account) -> None:
        self.ws_url, self.account = ws_url, account
        self.call_id = str(uuid.uuid4())
        self.up = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._call())
        except BaseException as exc:
            self.error = exc
            self.up.set()

    async def _call(self) -> None:
        async with Customer() as customer:
            gateway = Gateway(
                f"{self.ws_url}/ingest/audio-fork", basic_auth(self.account.auth_id, self.account.auth_token)
            )
            await gateway.open(
                {
                    "callId": self.call_id,
                    "from": "+14155550100",
                    "to": "+14155550199",
                    "streams": [{"serviceUrl": customer.url, "bidirectional": True}],
                }
            )
            await eventually(lambda: customer.events("start"), timeout=15)
            self.up.set()
            while not self.stop.is_set():
                await gateway.send_frames(tone(200))
            await gateway.close()

    def __enter__(self) -> LiveCall:
        self.thread.start()
        assert self.up.wait(30) and self.error is None, self.error
        return self

    def hang_up(self) -> None:
        self.stop.set()
        self.thread.join(20)

    def __exit__(self, *exc: object) -> None:
        self.hang_up()


@pytest.fixture
def live_call(console: Console, account: Account) -> Iterator[LiveCall]:
    with LiveCall(console.hub.ws, account) as call:
        yield call


def test_the_live_view_shows_a_live_call_and_drops_it_after_hangup(
    console: Console,
    account: Account,
    live_call: LiveCall,
) -> None:
    make_staff("viewer", group="Stream console viewers")
    console.login("viewer")
    console.open("/admin/streams/call/")
    console.click_css("a.live-view-link")
    assert "Live calls" in console.driver.title
    console.driver.execute_script("window.sameDocument = 'yes'")  # gone if the page reloads

    def stream_row() -> dict[str, str] | None:
        # read in one script: the page re-renders its rows every 2 s, so an element found by one
        # WebDriver call can be stale by the next
        return console.driver.execute_script(
            """
            const row = document.querySelector(`tbody.live-call[data-call="${arguments[0]}"] tr.stream-row`);
            if (!row) return null;
            const cell = (name) => (row.querySelector('td.' + name) || {}).textContent || '';
            return {className: row.className, buffer: cell('buffer'), lastEvent: cell('last-event').trim(),
                    playback: cell('playback').trim(), up: cell('up').trim()};
            """,
            live_call.call_id,
        )

    def streaming_row(driver: object) -> dict[str, str] | None:
        row = stream_row()
        return row if row and "state-streaming" in row["className"].split() and "%" in row["buffer"] else None

    # the hub publishes its snapshot every 2 s and the page refreshes every 2 s
    row = WebDriverWait(console.driver, 20, poll_frequency=0.2).until(streaming_row)
    assert row["lastEvent"] == "StartStream"
    assert row["playback"].endswith(" s")  # bidirectional: a queue figure
    up_before = int(row["up"].split()[0])
    time.sleep(2.5)
    later = stream_row()
    assert later is not None
    assert int(later["up"].split()[0]) > up_before  # refreshed in place
    console.snap("live-call")

    live_call.hang_up()
    WebDriverWait(console.driver, 20, poll_frequency=0.2).until(
        lambda d: not console.all(f'tbody.live-call[data-call="{live_call.call_id}"]')
    )
    assert console.driver.execute_script(  # one script, as above: the box may be re-rendered between two calls
        "const p = document.getElementById('no-live-calls'); return !!p && p.offsetParent !== null"
    )
    assert console.driver.execute_script("return window.sameDocument") == "yes"
    console.snap("live-after-hangup")

    # the stream link of a live row leads to its stream page; the overview draws the last 24 hours
    console.click_css("a.overview-link")
    assert console.one("svg.calls-per-hour").is_displayed()
    assert console.one("svg.ends-by-reason g.category[data-label='Call hangup']").get_attribute("data-count") == "1"
    assert console.one("svg.callback-success").is_displayed()
    console.snap("overview")


def test_a_live_row_links_to_its_stream_page(console: Console, account: Account, live_call: LiveCall) -> None:
    make_staff("viewer", group="Stream console viewers")
    console.login("viewer")
    console.open("/admin/streams/call/live/")
    WebDriverWait(console.driver, 20, poll_frequency=0.2).until(
        lambda d: console.all(f'tbody.live-call[data-call="{live_call.call_id}"] a.stream-link')
    )
    console.click_css(f'tbody.live-call[data-call="{live_call.call_id}"] a.stream-link')
    assert "in-progress" in console.one("#content-main").text
    assert live_call.call_id in console.one("#content-main").text
