"""The hub's REST API as the simulator uses it, and the stream records it prints after a call."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from django.db import DatabaseError

API_TIMEOUT = 5.0
STREAMS_END_WITHIN = 15.0
INGEST_PATH = "/ingest/audio-fork"
CDR_FIELDS = (
    ("status", "status"),
    ("hangup_reason", "hangup reason"),
    ("start_time", "start time"),
    ("end_time", "end time"),
    ("bill_duration", "bill duration (s)"),
    ("rounded_bill_duration", "rounded bill duration (s)"),
    ("billed_amount", "billed amount"),
)


class SimulationError(Exception):
    """Ends the command with this one-line message."""


class ApiUnavailable(SimulationError):
    pass


class HubApi:
    def __init__(self, base: str, auth_id: str, auth_token: str) -> None:
        self.base = base.rstrip("/")
        self.auth_id = auth_id
        self.session = requests.Session()
        self.session.auth = (auth_id, auth_token)

    def _url(self, *parts: str) -> str:
        return f"{self.base}/v1/Account/{self.auth_id}/" + "".join(f"{part}/" for part in parts)

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            return self.session.request(method, url, timeout=API_TIMEOUT, **kwargs)
        except requests.RequestException as exc:
            raise ApiUnavailable(f"the hub's REST API at {self.base} cannot be reached ({type(exc).__name__})") from exc

    @staticmethod
    def _error(response: requests.Response) -> str:
        try:
            return str(response.json().get("error") or response.text)[:300]
        except ValueError:
            return response.text[:300] or response.reason

    def call(self, call_uuid: str) -> dict[str, Any] | None:
        response = self._request("GET", self._url("Call", call_uuid))
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ApiUnavailable(f"GET call: HTTP {response.status_code} {self._error(response)}")
        return dict(response.json())

    def application(self, app_id: str) -> dict[str, Any] | None:
        response = self._request("GET", self._url("Application", app_id))
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ApiUnavailable(f"GET application: HTTP {response.status_code} {self._error(response)}")
        return dict(response.json())

    def start_stream(self, call_uuid: str, body: dict[str, Any]) -> str:
        response = self._request("POST", self._url("Call", call_uuid, "Stream"), json=body)
        if response.status_code != 201:
            raise SimulationError(f"the hub refused the stream (HTTP {response.status_code}): {self._error(response)}")
        return str(response.json()["stream_id"])

    def stream(self, call_uuid: str, stream_id: str) -> dict[str, Any]:
        response = self._request("GET", self._url("Call", call_uuid, "Stream", stream_id))
        if response.status_code != 200:
            raise ApiUnavailable(f"GET stream: HTTP {response.status_code} {self._error(response)}")
        return dict(response.json())

    def streams(self, call_uuid: str) -> list[dict[str, Any]]:
        response = self._request("GET", self._url("Call", call_uuid, "Stream"), params={"limit": 20})
        if response.status_code != 200:
            raise ApiUnavailable(f"GET streams: HTTP {response.status_code} {self._error(response)}")
        return list(response.json().get("objects", []))


def wait_for_stream_records(api: HubApi, call_uuid: str) -> list[dict[str, Any]]:
    """Every stream of the call once ended (or as it is after STREAMS_END_WITHIN)."""
    deadline = time.monotonic() + STREAMS_END_WITHIN
    while True:
        streams = api.streams(call_uuid)
        if all(stream.get("end_time") for stream in streams) or time.monotonic() > deadline:
            return list(reversed(streams))  # oldest first, as they were asked for
        time.sleep(0.2)


def stream_records_from_db(call_uuid: str) -> list[dict[str, Any]]:
    from streams.models import Stream

    deadline = time.monotonic() + STREAMS_END_WITHIN
    while True:
        rows = list(Stream.objects.filter(call__call_uuid=call_uuid).order_by("created_at", "id"))
        if all(row.end_time for row in rows) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return [
        {
            "stream_id": str(row.stream_id),
            "service_url": row.service_url,
            "bidirectional": row.bidirectional,
            "audio_track": row.audio_track,
            "content_type": row.content_type,
            "status": row.status,
            "hangup_reason": row.hangup_reason,
            "start_time": row.start_time.isoformat(sep=" ", timespec="seconds") if row.start_time else None,
            "end_time": row.end_time.isoformat(sep=" ", timespec="seconds") if row.end_time else None,
            "bill_duration": row.bill_duration,
            "rounded_bill_duration": row.rounded_bill_duration,
            "billed_amount": f"{row.billed_amount:.5f}",
        }
        for row in rows
    ]


def admin_links(http_base: str, stream_ids: list[str]) -> dict[str, str]:
    """The stream pages in the admin: by primary key when this process shares the hub's
    database, else the admin's search for the stream id (one click away)."""
    links = {sid: f"{http_base}/admin/streams/stream/?q={sid}" for sid in stream_ids}
    try:
        from streams.models import Stream

        for sid, pk in Stream.objects.filter(stream_id__in=stream_ids).values_list("stream_id", "pk"):
            links[str(sid)] = f"{http_base}/admin/streams/stream/{pk}/change/"
    except DatabaseError:
        pass  # another machine's hub, or no database here: the search link works anyway
    return links


def hub_urls(hub: str) -> tuple[str, str]:
    """(ingest WebSocket URL, HTTP base URL) from --hub (ws, wss, http or https)."""
    parts = urlsplit(hub if "://" in hub else f"ws://{hub}")
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        raise SimulationError(f"--hub {hub!r} is not a ws://, wss://, http:// or https:// URL")
    secure = scheme in ("wss", "https")
    path = parts.path.rstrip("/")
    ingest = urlunsplit(("wss" if secure else "ws", parts.netloc, path + INGEST_PATH, "", ""))
    http = urlunsplit(("https" if secure else "http", parts.netloc, path, "", ""))
    return ingest, http
