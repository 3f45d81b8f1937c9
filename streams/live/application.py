"""A call's Plivo application: request the answer URL, run the Plivo XML it returns, hang up at its end.

Contract (docs/applications.md, decisions A1…):
- The answer request is Plivo's (streams.core.application.answer_params), signed with
  X-Plivo-Signature-V3 like the status callbacks, with a total deadline per try. The answer
  URL gets `STREAMHUB_ANSWER_TRIES` tries, then the fallback answer URL as many. A try fails
  on a connection error, a timeout, a status other than 2xx, an empty, oversize or
  malformed body, a root other than <Response>, or an element that does not validate; the
  first try that yields a valid document wins. Every try is one row of the call's debug log
  (which URL, which try, status, latency, content type, size, first bytes, and why it failed).
- The document runs in order: <Stream> creates the stream (validated as a REST start, the
  same validator) and dials it; keepCallAlive="true" holds the document until that stream
  ends; <Wait length> waits; <Hangup> hangs up (or schedules it); anything else is logged
  as unsupported and skipped. When the document ends, the hub hangs the call up as Plivo does
  (End Of XML Instructions). When no try gave a usable document the call is hung up with the
  cause recorded. Nothing here raises into the session: a bug is logged, the call hung up.
- Audio (D2): the call's audio from its start is kept while the answer is fetched; the
  streams the document starts before anything lets time pass (a <Wait>, a held stream) get
  it all, backdated to the call's start; streams started later get the audio from their own
  start, as a REST start does.
- The debug-log writes run in the database threads, never on the audio path.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from django.conf import settings

from streams import services
from streams.core import application as plivo_app
from streams.core.plivoxml import (
    MAX_DOCUMENT_BYTES,
    Document,
    HangupVerb,
    PlivoXmlError,
    StreamVerb,
    Unsupported,
    WaitVerb,
    parse_document,
)
from streams.live import answer_http
from streams.live.dbasync import db_async
from streams.live.relay import StreamRelay
from streams.models import Application, Call, Stream

log = logging.getLogger(__name__)

FIRST_BYTES = 200


class ApplicationHost(Protocol):
    """What the runner needs from its call; the CallSession implements it."""

    ended: bool
    audio_since: float

    def add_relay(self, stream: Stream, *, backfill: bool = False, backfill_since: float | None = None) -> Any:
        """Start relaying `stream` (a StreamRelay, or None when the call is ending)."""

    async def hangup(self) -> None:
        """Hang the call up on the gateway and end it."""

    def end_preanswer(self) -> None:
        """The audio kept since the call's start is no longer needed."""

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """A task that ends with the call."""


class AnswerFailed(Exception):
    def __init__(self, cause: plivo_app.HangupCause, detail: str) -> None:
        super().__init__(detail)
        self.cause = cause
        self.detail = detail


class ApplicationRunner:
    def __init__(self, *, host: ApplicationHost, call: Call, application: Application | None, app_id: str) -> None:
        self.host = host
        self.call = call
        self.application = application
        self.app_id = app_id
        self.head = True  # no element has let time pass yet: new streams get the audio since the call's start

    async def log(self, event: str, error: str = "", **params: Any) -> None:
        try:
            await db_async(services.call_log)(call=self.call, event=event, error=error, params=params)
        except Exception:
            log.exception("call %s: could not write %s to the call's debug log", self.call.call_uuid, event)

    async def run(self) -> None:
        try:
            if self.application is None:
                detail = f"appId {self.app_id!r} is not an application of account {self.call.account.auth_id}"
                await self.log("ApplicationNotFound", detail, AppID=self.app_id)
                await self.hang_up(plivo_app.APPLICATION_NOT_FOUND, detail)
                return
            try:
                document = await self.fetch()
            except AnswerFailed as exc:
                await self.hang_up(exc.cause, exc.detail)
                return
            await self.execute(document)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("call %s: the application failed", self.call.call_uuid)
            await self.log("ApplicationError", f"internal error: {type(exc).__name__}")
            detail = f"internal error while running the application: {type(exc).__name__}"
            await self.hang_up(plivo_app.HUB_ERROR, detail)
        finally:
            self.host.end_preanswer()

    # --- the answer request ---------------------------------------------------------

    async def fetch(self) -> Document:
        app = self.application
        assert app is not None
        targets = [("answer_url", app.answer_url, app.answer_method)]
        if app.fallback_answer_url:
            targets.append(("fallback_answer_url", app.fallback_answer_url, app.fallback_method))
        params = plivo_app.answer_params(services.call_facts(self.call))
        tries = settings.STREAMHUB_ANSWER_TRIES
        cause, failures = plivo_app.ANSWER_URL_FAILED, []
        for target, url, method in targets:
            for attempt in range(1, tries + 1):
                if self.host.ended:
                    raise AnswerFailed(cause, "the call ended while the answer was being fetched")
                try:
                    return await self.try_once(target, url, method, params, attempt, tries)
                except AnswerFailed as exc:
                    cause = exc.cause
                    failures.append(f"{target} try {attempt}: {exc.detail}")
                if attempt < tries:
                    await asyncio.sleep(settings.STREAMHUB_ANSWER_RETRY_DELAY_SECONDS * attempt)
        fallback = "" if app.fallback_answer_url else " (no fallback_answer_url)"
        raise AnswerFailed(cause, f"no usable answer after {len(failures)} tries{fallback}; last: {failures[-1]}")

    async def try_once(
        self, target: str, url: str, method: str, params: dict[str, str], attempt: int, tries: int
    ) -> Document:
        app = self.application
        assert app is not None
        timeout = settings.STREAMHUB_ANSWER_TIMEOUT_SECONDS
        result = await answer_http.fetch(
            method=method,
            url=url,
            params=params,
            auth_token=self.call.account.auth_token,
            deadline=timeout,
            limit=MAX_DOCUMENT_BYTES,
        )
        record: dict[str, Any] = {
            "Target": target,
            "URL": plivo_app.strip_fragment(url),
            "Method": method,
            "Try": attempt,
            "MaxTries": tries,
            "Status": "" if result.status_code is None else result.status_code,
            "LatencyMs": result.latency_ms,
            "ContentType": result.content_type,
            "Bytes": result.size,
            "FirstBytes": result.body[:FIRST_BYTES].decode("utf-8", errors="replace").replace("\x00", ""),
        }
        error, cause = self.judge(result)
        document: Document | None = None
        if not error:
            try:
                document = parse_document(
                    result.body, forbid_private_callbacks=settings.STREAMHUB_FORBID_PRIVATE_CALLBACKS
                )
            except PlivoXmlError as exc:
                error, cause = f"invalid Plivo XML: {exc}", plivo_app.INVALID_ANSWER_XML
                record.update({"Element": exc.element, "Attribute": exc.attribute})
        if document is None:
            await self.log("AnswerRequest", f"{target} try {attempt} of {tries}: {error}", **record)
            raise AnswerFailed(cause, error)
        record.update({"Elements": len(document.verbs), "Streams": document.streams})
        await self.log("AnswerRequest", **record)
        return document

    @staticmethod
    def judge(result: answer_http.AnswerResult) -> tuple[str, plivo_app.HangupCause]:
        """Why a try's HTTP outcome is unusable ("" when it is fine so far)."""
        if result.status_code is None:
            return result.error, plivo_app.ANSWER_URL_FAILED
        if not 200 <= result.status_code < 300:
            return f"HTTP {result.status_code} (a 2xx answer with Plivo XML is needed)", plivo_app.ANSWER_URL_FAILED
        if result.oversize:
            return (
                f"the answer is {result.size} bytes, over Plivo's {MAX_DOCUMENT_BYTES}-byte limit",
                plivo_app.INVALID_ANSWER_XML,
            )
        if result.error:
            return result.error, plivo_app.ANSWER_URL_FAILED
        return "", plivo_app.ANSWER_URL_FAILED

    # --- the document ---------------------------------------------------------------

    async def execute(self, document: Document) -> None:
        for verb in document.verbs:
            if self.host.ended:
                return
            if isinstance(verb, StreamVerb):
                await self.stream(verb)
            elif isinstance(verb, WaitVerb):
                await self.wait(verb)
            elif isinstance(verb, HangupVerb):
                if await self.hangup_verb(verb):
                    return
            elif isinstance(verb, Unsupported):
                await self.log("UnsupportedElement", verb.note, Element=verb.index, Name=verb.name)
        if self.host.ended:
            return
        await self.log("EndOfDocument", Elements=len(document.verbs))
        await self.hang_up(plivo_app.END_OF_XML, "no more XML instructions to execute")

    def time_passes(self) -> None:
        if self.head:
            self.head = False
            self.host.end_preanswer()

    async def stream(self, verb: StreamVerb) -> None:
        try:
            stream = await db_async(services.stream_create)(call=self.call, params=verb.params, notify_session=False)
        except services.StreamConflict:
            await self.log(
                "StreamRefused",
                f"element {verb.index} <Stream>: an active stream to {verb.params.service_url} exists on this call",
                Element=verb.index,
            )
            return
        except services.CallNotLive:
            return
        stream.account, stream.call = self.call.account, self.call
        relay: StreamRelay | None = self.host.add_relay(
            stream, backfill_since=self.host.audio_since if self.head else None
        )
        keep = verb.params.keep_call_alive
        await self.log(
            "StreamStarted",
            Element=verb.index,
            StreamID=str(stream.stream_id),
            ServiceURL=stream.service_url,
            KeepCallAlive="true" if keep else "false",
            AudioFrom="call start" if self.head else "stream start",
        )
        if keep and relay is not None:
            self.time_passes()
            await relay.wait()
            if not self.host.ended:
                reason = relay.end_reason or ""
                await self.log("StreamEnded", Element=verb.index, StreamID=str(stream.stream_id), HangupReason=reason)

    async def wait(self, verb: WaitVerb) -> None:
        self.time_passes()
        ignored = [name for name, on in (("silence", verb.silence), ("beep", verb.beep)) if on]
        note = f"{' and '.join(ignored)} not executed: waited the full length" if ignored else ""
        await self.log("Wait", note, Element=verb.index, Length=verb.length)
        await asyncio.sleep(verb.length)

    async def hangup_verb(self, verb: HangupVerb) -> bool:
        """True when the call was hung up (the document stops)."""
        cause = plivo_app.answer_xml_cause(verb.reason)
        detail = f"element {verb.index} <Hangup{f' reason={verb.reason}' if verb.reason else ''}>"
        if verb.schedule is not None:
            await self.log("HangupScheduled", Element=verb.index, Schedule=verb.schedule, Reason=verb.reason)
            self.host.spawn(self.scheduled_hangup(verb.schedule, cause, f"{detail} after {verb.schedule} s"))
            return False
        await self.log("Hangup", Element=verb.index, Reason=verb.reason)
        await self.hang_up(cause, detail)
        return True

    async def scheduled_hangup(self, seconds: int, cause: plivo_app.HangupCause, detail: str) -> None:
        await asyncio.sleep(seconds)
        if not self.host.ended:
            await self.hang_up(cause, detail)

    async def hang_up(self, cause: plivo_app.HangupCause, detail: str) -> None:
        if self.host.ended:
            return
        try:
            await db_async(services.call_record_hangup)(call=self.call, cause=cause, detail=detail)
        except Exception:
            log.exception("call %s: could not record its hangup cause", self.call.call_uuid)
        log.info("call %s: hanging up (%s; the call's debug log says why)", self.call.call_uuid, cause.name)
        await self.host.hangup()
