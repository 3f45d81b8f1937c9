"""What a Plivo application hears from the hub: answer and hangup request parameters, hangup causes (pure).

The parameter names are Plivo's (XML request and Application pages): the answer request
carries CallUUID, From, To, Direction, CallStatus and what the gateway supplied of
ForwardedFrom, ALegUUID, ALegRequestUUID and CallerName, plus the extras real Plivo traffic
carries (Event, CallerName, SessionStart, RequestUUID, ParentAuthID). The hangup request adds
HangupCause, HangupCauseName, HangupCauseCode, HangupSource, Duration, BillDuration,
StartTime, AnswerTime and EndTime. Times are UTC (`YYYY-MM-DD HH:MM:SS`; SessionStart with
microseconds), durations whole seconds, all values strings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from streams.core.validation import check_callback_url, parse_bool

ANSWER_EVENT = "StartApp"
HANGUP_EVENT = "Hangup"
# Plivo names the gateway may pass in its metadata, forwarded as they are
GATEWAY_PARAMS = ("ForwardedFrom", "ALegUUID", "ALegRequestUUID", "CallerName")


@dataclass(frozen=True)
class HangupCause:
    cause: str  # HangupCause: the Q.850 / FreeSWITCH name
    source: str  # HangupSource: Caller, API Request, Answer XML, Plivo, Error, Unknown
    name: str  # HangupCauseName
    code: str  # HangupCauseCode

    def as_params(self) -> dict[str, str]:
        return {
            "HangupCause": self.cause,
            "HangupSource": self.source,
            "HangupCauseName": self.name,
            "HangupCauseCode": self.code,
        }


# Plivo's own (docs: troubleshooting/hangup-causes)
CALLER = HangupCause("NORMAL_CLEARING", "Caller", "Normal Hangup", "4000")
API_REQUEST = HangupCause("NORMAL_CLEARING", "API Request", "Normal Hangup", "4000")
ANSWER_XML = HangupCause("NORMAL_CLEARING", "Answer XML", "Normal Hangup", "4000")
END_OF_XML = HangupCause("NORMAL_CLEARING", "Plivo", "End Of XML Instructions", "4010")
# <Hangup reason="…">: Plivo documents the reasons, not the codes it reports for them (decision A9)
ANSWER_XML_BUSY = HangupCause("USER_BUSY", "Answer XML", "Busy Line", "3000")
ANSWER_XML_REJECTED = HangupCause("CALL_REJECTED", "Answer XML", "Rejected", "3010")
# Plivo publishes no codes for these; streamhub's own, in a range Plivo does not use (decision A9)
ANSWER_URL_FAILED = HangupCause("NORMAL_TEMPORARY_FAILURE", "Error", "Answer URL Failed", "9000")
INVALID_ANSWER_XML = HangupCause("NORMAL_TEMPORARY_FAILURE", "Error", "Invalid Answer XML", "9010")
APPLICATION_NOT_FOUND = HangupCause("UNALLOCATED_NUMBER", "Error", "Application Not Found", "9020")
HUB_ERROR = HangupCause("NORMAL_TEMPORARY_FAILURE", "Error", "Hub Error", "9030")
HUB_LOST = HangupCause("NORMAL_TEMPORARY_FAILURE", "Unknown", "Hub Process Lost", "9040")

CAUSES = {
    c.name: c
    for c in (
        CALLER,
        API_REQUEST,
        END_OF_XML,
        ANSWER_XML_BUSY,
        ANSWER_XML_REJECTED,
        ANSWER_URL_FAILED,
        INVALID_ANSWER_XML,
        APPLICATION_NOT_FOUND,
        HUB_ERROR,
        HUB_LOST,
    )
}


def answer_xml_cause(reason: str) -> HangupCause:
    """The cause a `<Hangup reason=…>` records."""
    return {"busy": ANSWER_XML_BUSY, "rejected": ANSWER_XML_REJECTED}.get(reason, ANSWER_XML)


def plivo_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def session_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def strip_fragment(url: str) -> str:
    """Plivo's `#ct=…&rt=…` callback options never go on the wire (nor into the signature)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, ""))


@dataclass(frozen=True)
class CallFacts:
    call_uuid: str
    from_number: str
    to_number: str
    direction: str
    auth_id: str
    started_at: datetime
    gateway_params: Mapping[str, str]


def answer_params(call: CallFacts) -> dict[str, str]:
    """The answer (and fallback) request: the call is answered, so CallStatus is in-progress."""
    params = {
        "CallUUID": call.call_uuid,
        "From": call.from_number,
        "To": call.to_number,
        "Direction": call.direction,
        "CallStatus": "in-progress",
        "Event": ANSWER_EVENT,
        "CallerName": call.from_number,
        "SessionStart": session_time(call.started_at),
        "RequestUUID": call.call_uuid,
        "ParentAuthID": call.auth_id,
    }
    for key in GATEWAY_PARAMS:
        value = call.gateway_params.get(key)
        if value:
            params[key] = value
    return params


def duration_seconds(start: datetime, end: datetime) -> int:
    if end <= start:
        return 0
    return math.ceil((end - start).total_seconds() - 1e-9)


def hangup_params(call: CallFacts, *, ended_at: datetime, cause: HangupCause, interval: int = 60) -> dict[str, str]:
    """The hangup request: what the answer request carried, the end, and why it ended."""
    params = answer_params(call)
    seconds = duration_seconds(call.started_at, ended_at)
    params.update(
        {
            "CallStatus": "completed",
            "Event": HANGUP_EVENT,
            "Duration": str(seconds),
            # Plivo rounds the billed duration up to the billing increment (60 s in its examples)
            "BillDuration": str(math.ceil(seconds / interval) * interval if seconds else 0),
            "StartTime": plivo_time(call.started_at),
            "AnswerTime": plivo_time(call.started_at),
            "EndTime": plivo_time(ended_at),
            **cause.as_params(),
        }
    )
    return params


# --- the Application resource's parameters (REST API and admin) ----------------------------

APP_URL_FIELDS = ("answer_url", "hangup_url", "fallback_answer_url", "message_url")
APP_METHOD_FIELDS = ("answer_method", "hangup_method", "fallback_method", "message_method")
APP_BOOL_FIELDS = ("default_number_app", "default_endpoint_app", "public_uri", "log_incoming_messages")
# Sent by the plivo SDK or documented by Plivo, meaningless here (API callbacks, endpoints): accepted, ignored.
APP_IGNORED_FIELDS = frozenset({"app_id", "callback_url", "callback_method", "cascade", "new_endpoint_application"})
MAX_APP_NAME = 200
SUBACCOUNT = re.compile(r"^SA[A-Z0-9]{18}$")


class ApplicationParamError(ValueError):
    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))


def validate_application(
    data: Mapping[str, Any], *, creating: bool, forbid_private_callbacks: bool = False
) -> dict[str, Any]:
    """The fields to store, named as the model names them; ApplicationParamError names every bad one.

    `None` means "not given". On create, `app_name` and `answer_url` are required and
    `hangup_url` defaults to `answer_url` (Plivo's create page); on update every given key
    is stored as sent (the plivo SDK sends its defaults on every update).
    """
    errors: dict[str, str] = {}
    clean: dict[str, Any] = {}
    for key, raw in data.items():
        if key in APP_IGNORED_FIELDS or raw is None:
            continue
        try:
            if key == "app_name":
                clean[key] = _app_name(raw)
            elif key in APP_URL_FIELDS:
                clean[key] = _http_url(raw, required=key == "answer_url", forbid_private=forbid_private_callbacks)
            elif key in APP_METHOD_FIELDS:
                clean[key] = _method(raw)
            elif key in APP_BOOL_FIELDS:
                clean[key] = parse_bool(raw)
            elif key == "subaccount":
                clean[key] = _subaccount(raw)
            else:
                errors[key] = "is not an application parameter"
        except ValueError as exc:
            errors[key] = str(exc)
    if creating:
        for required in ("app_name", "answer_url"):
            if required not in clean and required not in errors:
                errors[required] = "is required"
        if data.get("hangup_url") is None and "answer_url" in clean:
            clean["hangup_url"] = clean["answer_url"]
    if errors:
        raise ApplicationParamError(errors)
    return clean


def _app_name(value: Any) -> str:
    text = value.strip() if isinstance(value, str) else str(value) if isinstance(value, int | float) else None
    if not text:
        raise ValueError("must be a non-empty name")
    if len(text) > MAX_APP_NAME:
        raise ValueError(f"must be at most {MAX_APP_NAME} characters")
    if any(ord(ch) < 32 for ch in text):
        raise ValueError("must not contain control characters")
    return text


def _http_url(value: Any, *, required: bool, forbid_private: bool) -> str:
    if isinstance(value, str) and not value.strip():
        if required:
            raise ValueError("must be an http:// or https:// URL")
        return ""
    return check_callback_url(value, forbid_private=forbid_private)


def _method(value: Any) -> str:
    if not isinstance(value, str) or value.strip().upper() not in ("GET", "POST"):
        raise ValueError("must be GET or POST")
    return value.strip().upper()


def _subaccount(value: Any) -> str:
    if isinstance(value, str) and (value == "" or SUBACCOUNT.match(value)):
        return value
    raise ValueError("must be a subaccount auth_id (SA followed by 18 capital letters or digits)")
