"""`/metrics` of one hub process, in Prometheus' text format (prometheus-client).

Each hub process serves its own: its calls, relays, event loop and database executor live
in its memory, so Prometheus scrapes every hub process as a target of its own (several
processes on one machine are several ports). Nothing is shared between processes and no
multiprocess mode is needed.

Cost on the audio path: none here. Frames and bytes are plain int attributes of each relay;
events (connect attempts, DegradedStream, ends) are plain ints in `live.tally`; the
collector below reads them when Prometheus scrapes. The two histograms of live state
(send-buffer fill, playback-queue depth) are sampled once a second by `sample_forever`
over the live relays, and the loop-lag histogram is fed by `live.looplag`'s ticker.

The view runs on the event loop (it is async), so it reads the sessions and relays from
the thread that changes them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from streamhub.metrics import CONTENT_TYPE, bearer_ok, process_registry, render
from streams.live import looplag, pgloop, tally
from streams.live.admission import admission
from streams.live.session import CallSession, registry
from streams.models import Stream

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 1.0
STATES = ("connecting", "streaming", "reconnecting", "ending")

buffer_fill = Histogram(
    "streamhub_send_buffer_fill_percent",
    "Send-buffer fill of each live stream, sampled once a second (100 % = STREAMHUB_STREAM_BUFFER_SECONDS)",
    buckets=(1, 5, 10, 20, 30, 45, 60, 75, 90, 100),
    registry=None,
)
playback_depth = Histogram(
    "streamhub_playback_queue_seconds",
    "Audio queued for playback into each live bidirectional call, sampled once a second",
    buckets=(0.02, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60),
    registry=None,
)
loop_lag = Histogram(
    "streamhub_event_loop_lag_seconds",
    f"How late the event loop ran a {looplag.TICK:g} s ticker (the first sign of an overloaded hub)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=None,
)
looplag.lag.observers.append(loop_lag.observe)

_db_executor: ThreadPoolExecutor | None = None


def relay_state(relay: object) -> str:
    if getattr(relay, "end_reason", None) is not None:
        return "ending"
    if getattr(relay, "reconnecting", False):  # opt-in resume (docs/resume.md): redialling after a drop
        return "reconnecting"
    return "streaming" if getattr(relay, "connected", False) else "connecting"


def sessions() -> list[CallSession]:
    return list(registry.sessions)


class HubCollector(Collector):
    """Everything read from this process's memory when Prometheus scrapes."""

    def collect(self) -> Iterator[Metric]:
        live = sessions()
        relays = [(session, relay) for session in live for relay in list(session.relays.values())]
        yield GaugeMetricFamily("streamhub_live_calls", "Calls held by this hub process", value=len(live))
        states = GaugeMetricFamily(
            "streamhub_live_streams", "Streams relayed by this process, by state", labels=["state"]
        )
        counts = dict.fromkeys(STATES, 0)
        for _, relay in relays:
            counts[relay_state(relay)] += 1
        for state in STATES:
            states.add_metric([state], counts[state])
        yield states

        yield GaugeMetricFamily("streamhub_admission_capacity", "STREAMHUB_MAX_CALLS", value=admission.limit)
        yield GaugeMetricFamily(
            "streamhub_admission_weight",
            "Capacity the admitted calls hold (a bidirectional stream weighs more)",
            value=admission.used,
        )
        yield GaugeMetricFamily(
            "streamhub_admission_admitted", "Gateway connections holding a slot", value=admission.live
        )
        yield CounterMetricFamily(
            "streamhub_admission_accepted", "Gateway connections admitted", value=admission.admitted_total
        )
        yield CounterMetricFamily(
            "streamhub_admission_refusals",
            "Gateway connections refused (at capacity, or by the loop-lag guard)",
            value=admission.refused_total,
        )
        yield CounterMetricFamily(
            "streamhub_admission_lag_refusals",
            "Gateway connections refused by the loop-lag guard (the event loop lagged)",
            value=admission.lag_refused_total,
        )
        yield GaugeMetricFamily(
            "streamhub_admission_lagging",
            "1 while the loop-lag guard refuses new calls",
            value=int(admission.overloaded()),
        )

        t = tally.tally
        frames = t.frames_sent + sum(relay.frames_sent for _, relay in relays)
        size = t.bytes_sent + sum(relay.bytes_sent for _, relay in relays)
        played = t.played_frames + sum(relay.played_ms // 20 for _, relay in relays)
        played_size = t.played_bytes + sum(tally.played_bytes(relay) for _, relay in relays)
        yield CounterMetricFamily(
            "streamhub_customer_frames",
            "WebSocket messages relayed to customers (media and the events queued with it)",
            value=frames,
        )
        yield CounterMetricFamily("streamhub_customer_bytes", "Bytes of the messages relayed to customers", value=size)
        yield CounterMetricFamily(
            "streamhub_playback_frames", "20 ms frames of customer audio played back to gateways", value=played
        )
        yield CounterMetricFamily(
            "streamhub_playback_bytes", "PCM bytes of customer audio played back to gateways", value=played_size
        )
        yield CounterMetricFamily(
            "streamhub_connect_attempts", "Attempts to dial a customer's service_url", value=t.connect_attempts
        )
        failures = CounterMetricFamily(
            "streamhub_connect_failures", "Failed attempts to dial a customer, by cause", labels=["cause"]
        )
        for cause in ("refused", "timeout", "http_status", "handshake", "tls", "network", "other"):
            failures.add_metric([cause], t.connect_failures[cause])
        yield failures
        ends = CounterMetricFamily("streamhub_stream_ends", "Streams that ended, by hangup reason", labels=["reason"])
        for reason in Stream.Reason.values:
            ends.add_metric([reason], t.ends[reason])
        yield ends
        dropped = CounterMetricFamily(
            "streamhub_dropped_streams", "DroppedStream (ended with Connection error), by cause", labels=["cause"]
        )
        for cause in ("connect_failed", "disconnected", "slow_consumer", "internal"):
            dropped.add_metric([cause], t.dropped[cause])
        yield dropped
        degraded = CounterMetricFamily(
            "streamhub_degraded_streams", "DegradedStream notices, by send-buffer usage crossed", labels=["usage"]
        )
        for usage in (30, 60, 90):
            degraded.add_metric([str(usage)], t.degraded[usage])
        yield degraded

        yield GaugeMetricFamily(
            "streamhub_event_loop_lag_current_seconds",
            "The loop lag right now (live.looplag)",
            value=looplag.current_lag(),
        )
        executor = _db_executor
        queued = executor._work_queue.qsize() if executor is not None else 0
        yield GaugeMetricFamily(
            "streamhub_db_executor_queue", "Database calls waiting for a thread of the executor", value=queued
        )
        yield GaugeMetricFamily(
            "streamhub_db_executor_threads",
            "Threads of the database executor",
            value=executor._max_workers if executor is not None else 0,
        )
        connections, waiting = pgloop.stats()
        yield GaugeMetricFamily(
            "streamhub_db_loop_connections", "PostgreSQL connections of the event loop (live.pgloop)", value=connections
        )
        yield GaugeMetricFamily(
            "streamhub_db_loop_waiting",
            "Lifecycle statements waiting for a connection of the event loop",
            value=waiting,
        )


hub_registry = process_registry(HubCollector(), buffer_fill, playback_depth, loop_lag)


def sample() -> None:
    """One sample of every live stream's send buffer and every bidirectional call's playback queue."""
    for session in sessions():
        bidirectional = False
        for relay in list(session.relays.values()):
            if relay.end_reason is None:
                buffer_fill.observe(relay.buffer.usage_pct)
                bidirectional = bidirectional or relay.stream.bidirectional
        if bidirectional:
            playback_depth.observe(len(session.playback) * 0.020)


async def sample_forever(every: float = SAMPLE_SECONDS) -> None:
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        next_at += every
        await asyncio.sleep(max(0.0, next_at - loop.time()))
        try:
            sample()
        except Exception:  # a sampling bug must not stop the sampler
            log.exception("metrics sample failed")


def own_db_executor(loop: asyncio.AbstractEventLoop) -> ThreadPoolExecutor:
    """The loop's default executor (where live.dbasync runs the ORM), made ours so its queue can be read:
    uvloop hides the one it creates. Same size as the default."""
    global _db_executor
    if _db_executor is None:
        _db_executor = ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) + 4), thread_name_prefix="db")
        loop.set_default_executor(_db_executor)
    return _db_executor


async def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET /metrics; with STREAMHUB_METRICS_TOKEN set, only with `Authorization: Bearer <token>`."""
    if not bearer_ok(request.headers.get("Authorization"), settings.STREAMHUB_METRICS_TOKEN):
        response = HttpResponse("metrics need a bearer token\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = "Bearer"
        return response
    return HttpResponse(render(hub_registry), content_type=CONTENT_TYPE)
