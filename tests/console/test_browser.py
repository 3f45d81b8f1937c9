"""The console in headless Chromium against a real hub (daphne subprocess) and the test database.

Debian's chromium and chromium-driver (`bin/browser-deps`); selenium is pointed at them so
it never tries to download a driver. Screenshots go to test-artifacts/admin-*.png.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from streams import services
from streams.models import Account, Stream, StreamEvent
from tests.conftest import Proc
from tests.console.conftest import PASSWORD, make_staff, open_call, start_stream

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="needs Debian's chromium and chromium-driver"
    ),
]

if CHROMIUM.exists() and CHROMEDRIVER.exists():
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support.expected_conditions import staleness_of
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.wait import WebDriverWait


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    profile = tempfile.mkdtemp(prefix="streamhub-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1920,1080",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Console:
    """A logged-in admin session in the browser: small verbs, and a full-page screenshot."""

    def __init__(self, driver: WebDriver, hub: Proc, artifacts: Path) -> None:
        self.driver, self.hub, self.artifacts = driver, hub, artifacts

    def open(self, path: str) -> None:
        self.driver.get(self.hub.http + path)

    def follow(self, act: Callable[[], object]) -> None:
        """Do something that loads a new page (click, Enter) and wait until that page has loaded."""
        old = self.driver.find_element(By.TAG_NAME, "html")
        act()
        WebDriverWait(self.driver, 15).until(staleness_of(old))
        WebDriverWait(self.driver, 15).until(lambda d: d.execute_script("return document.readyState") == "complete")

    def click(self, element: WebElement) -> None:
        self.follow(element.click)

    def click_css(self, css: str) -> None:
        """Click what `css` finds and wait for the next page; the element is found afresh on each try,
        since Chromium sometimes reports a node from a DOM it has just replaced (seen once in CI)."""
        for attempt in range(3):
            try:
                self.click(self.one(css))
                return
            except (StaleElementReferenceException, WebDriverException) as exc:
                if attempt == 2 or ("document" not in str(exc) and not isinstance(exc, StaleElementReferenceException)):
                    raise
                time.sleep(0.2)

    def login(self, username: str) -> None:
        self.open("/admin/login/?next=/admin/")
        self.driver.find_element(By.NAME, "username").send_keys(username)
        self.driver.find_element(By.NAME, "password").send_keys(PASSWORD)
        self.click(self.driver.find_element(By.CSS_SELECTOR, "input[type=submit]"))
        assert "Site administration" in self.driver.title, self.driver.page_source[:2000]

    def one(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def row_ids(self) -> list[str]:
        return [code.get_attribute("title") or "" for code in self.all("#result_list th.field-stream code.short-id")]

    def open_stream(self, stream: Stream) -> None:
        self.click(self.one(f'#result_list th.field-stream code[title="{stream.stream_id}"]'))

    def messages(self) -> list[str]:
        return [li.text for li in self.all("ul.messagelist li")]

    def snap(self, name: str) -> Path:
        """The whole page, not just the window (Chromium's own full-page capture)."""
        size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 8000), "scale": 1}
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
        path = self.artifacts / f"admin-{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


@pytest.fixture
def console(browser: WebDriver, hub_factory: Callable[..., Proc], artifacts: Path) -> Console:
    return Console(browser, hub_factory("console-hub"), artifacts)


def finished_stream(account: Account) -> Stream:
    """A stream that was dropped for being slow 14 s in, its log and samples spread over that time."""
    call = open_call(account, from_number="+14155550111", to_number="+14155550122")
    stream = start_stream(call, service_url="wss://slow.example.com/ws")
    for usage in (30, 60, 90):
        services.stream_degraded(stream=stream, usage=usage)
    services.stream_end(stream=stream, reason=Stream.Reason.CONNECTION_ERROR, error=services.DROPPED_SLOW)
    # Move the whole life back in time, as if it had really lasted 14 s.
    created = timezone.now() - timedelta(seconds=20)
    offsets = [0.0, 0.4, 5.6, 9.1, 12.2, 14.0]
    for event, offset in zip(stream.events.order_by("timestamp", "id"), offsets, strict=True):
        StreamEvent.objects.filter(pk=event.pk).update(timestamp=created + timedelta(seconds=offset))
    samples = [[t, min(100.0, max(0.0, (t - 2) * 8.4))] for t in range(0, 14)] + [[14, 100.0]]
    Stream.objects.filter(pk=stream.pk).update(
        bill_duration=14,
        created_at=created,
        start_time=created + timedelta(seconds=0.4),
        end_time=created + timedelta(seconds=14),
        duration=14,
        buffer_samples=samples,
    )
    return Stream.objects.get(pk=stream.pk)


def test_an_operator_filters_reads_the_debug_log_and_stops_a_live_stream(console: Console, account: Account) -> None:
    make_staff("operator", group="Stream console operators")
    done = finished_stream(account)
    live = start_stream(open_call(account, from_number="+14155550100"), service_url="wss://bot.example.com/live")
    others = [start_stream(open_call(account), service_url=f"wss://quiet{i}.example.com/") for i in range(3)]
    for stream in others:
        services.stream_stop(stream=stream)

    console.login("operator")

    # The list, then filtered to what is live, then searched by call id.
    console.open("/admin/streams/stream/")
    assert len(console.row_ids()) == 5
    assert "1 live stream" in console.one("#live-streams").text
    console.snap("stream-list")
    console.click(console.driver.find_element(By.LINK_TEXT, "in-progress"))
    assert "status__exact=in-progress" in console.driver.current_url
    assert console.row_ids() == [str(live.stream_id)]
    console.snap("stream-list-filtered")
    console.open("/admin/streams/stream/")
    console.follow(lambda: console.one("#searchbar").send_keys(str(done.call.call_uuid) + "\n"))
    assert console.row_ids() == [str(done.stream_id)]

    # The finished stream's page: the stream log record, the timeline and the debug log.
    console.open_stream(done)
    assert "Connection error" in console.one("#content-main").text
    timeline = console.one("svg.stream-timeline")
    assert timeline.is_displayed() and timeline.size["width"] > 600
    assert len(console.all("svg.stream-timeline g.mark")) == 6
    assert console.one("svg.stream-timeline polyline.buffer-fill").is_displayed()
    events = [row.get_attribute("data-event") for row in console.all("#debug-log tbody tr")]
    assert events == ["StreamCreated", "StartStream", *["DegradedStream"] * 3, "DroppedStream"]
    console.snap("stream-page")

    console.click_css("a.debug-logs-link")
    assert "Debug logs of stream" in console.driver.title
    assert services.DROPPED_SLOW in console.one("#debug-log").text
    assert "BufferUsage" in console.one("#debug-log").text
    console.snap("debug-logs")

    # Without JavaScript the timeline is still there: it is drawn by the server.
    console.driver.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    console.driver.refresh()
    assert console.one("svg.stream-timeline").is_displayed()
    console.snap("debug-logs-no-javascript")
    console.driver.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})

    # Stop the live stream from the list: select it, pick the action, confirm.
    console.open("/admin/streams/stream/?status__exact=in-progress")
    console.one(f'#result_list input[name="_selected_action"][value="{live.pk}"]').click()
    Select(console.one('select[name="action"]')).select_by_value("stop_selected")
    console.click_css('button[name="index"]')
    assert "Stop these streams?" in console.driver.page_source
    assert str(live.stream_id) in console.one(".confirm-list").text
    console.snap("stop-confirmation")
    console.click_css('input[type="submit"][value="Yes, stop them"]')
    assert any(f"Stopped 1 stream (reason “API request”): {live.stream_id}" in m for m in console.messages())
    console.snap("stopped")
    live.refresh_from_db()
    assert live.status == "stopped" and live.hangup_reason == "API request"
    assert [e.event for e in live.events.all()][-1] == "StopStream"

    # Its call, with its streams inline, and the start-stream form (same fields as the REST API).
    console.open(f"/admin/streams/call/{live.call_id}/")
    assert "API request" in console.one(".inline-group").text
    console.snap("call-page")
    console.click_css("a.start-stream-link")
    assert console.one("#start_stream_form input[name=service_url]").is_displayed()
    console.snap("start-stream-form")


def test_a_viewer_can_look_but_not_act(console: Console, account: Account) -> None:
    make_staff("viewer", group="Stream console viewers")
    live = start_stream(open_call(account), service_url="wss://bot.example.com/live")
    console.login("viewer")
    console.open("/admin/streams/stream/")
    assert console.row_ids() == [str(live.stream_id)]
    assert console.all('select[name="action"]') == []
    assert console.all('input[name="_selected_action"]') == []
    console.open_stream(live)
    assert console.all(".stop-stream-link") == []
    assert console.all(".debug-logs-link")
    console.open(f"/admin/streams/stream/{live.pk}/stop/")
    assert "403" in console.driver.title or "Forbidden" in console.driver.page_source
    console.open(f"/admin/streams/call/{live.call_id}/")
    assert console.all(".hangup-link") == [] and console.all(".start-stream-link") == []
    console.snap("viewer-call-page")
    live.refresh_from_db()
    assert live.is_active
    assert User.objects.get(username="viewer").has_perm("streams.view_stream")
