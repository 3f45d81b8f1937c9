"""Plivo XML from an application's answer URL: the hardened parser and the document model (pure).

Contract:
- `parse_document(body)` takes the raw bytes of an answer and returns a `Document`, or raises
  `PlivoXmlError` and nothing else. Its message names what is wrong precisely enough for a
  debug log: the element (by position and name), the attribute, and why.
- Hardened: at most `MAX_DOCUMENT_BYTES` (Plivo's 100 KB), parsed by defusedxml with DTDs,
  entity declarations and external references refused, so billion-laughs and external-entity
  tricks fail before expansion. The five predefined entities and character references work.
- The whole document is validated before anything runs: the root must be `<Response>`;
  `<Stream>` is checked by `streams.core.validation` (the same validator and messages as a REST
  start) with its XML attribute names and the WebSocket URL as its text; `<Wait>` and
  `<Hangup>` are checked against Plivo's rules. Element and attribute names are case-sensitive,
  as on Plivo.
- Every other element (`<Speak>`, `<Play>`, `<GetDigits>`, `<Dial>`, …) is kept as `Unsupported`:
  the runner logs it and goes on, so one verb the hub cannot execute never fails the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException, DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
from defusedxml.ElementTree import fromstring

from streams.core.validation import FIELD_NAMES, StreamParamError, StreamParams, parse_bool, validate_stream_params

MAX_DOCUMENT_BYTES = 100 * 1024
MAX_ELEMENTS = 200
MAX_STREAMS = 20
MAX_WAIT_SECONDS = 86400
MAX_HANGUP_SCHEDULE_SECONDS = 86400
HANGUP_REASONS = ("rejected", "busy")
# <Stream> attributes under their XML names; the URL is the element's text, never an attribute.
STREAM_ATTRIBUTES = frozenset(spellings[-1] for spellings in FIELD_NAMES.values()) - {"serviceUrl"}
WAIT_ATTRIBUTES = frozenset({"length", "silence", "minSilence", "beep"})
HANGUP_ATTRIBUTES = frozenset({"reason", "schedule"})
EXECUTED = ("Stream", "Wait", "Hangup")
# Plivo's other verbs: named in the log as Plivo verbs the hub does not execute.
PLIVO_VERBS = frozenset(
    {
        "Speak",
        "Play",
        "GetDigits",
        "GetInput",
        "Dial",
        "Record",
        "Conference",
        "MultiPartyCall",
        "DTMF",
        "PreAnswer",
        "Redirect",
        "Message",
        "AudioStream",
    }
)


class PlivoXmlError(ValueError):
    """An answer the hub cannot run. `element`/`attribute` say where, when it is one place."""

    def __init__(self, message: str, *, element: str = "", attribute: str = "") -> None:
        super().__init__(message)
        self.element = element
        self.attribute = attribute


@dataclass(frozen=True)
class StreamVerb:
    index: int
    params: StreamParams


@dataclass(frozen=True)
class WaitVerb:
    index: int
    length: int = 1
    silence: bool = False
    min_silence_ms: int = 2000
    beep: bool = False


@dataclass(frozen=True)
class HangupVerb:
    index: int
    reason: str = ""
    schedule: int | None = None


@dataclass(frozen=True)
class Unsupported:
    index: int
    name: str
    note: str


Verb = StreamVerb | WaitVerb | HangupVerb | Unsupported


@dataclass(frozen=True)
class Document:
    verbs: tuple[Verb, ...]

    @property
    def streams(self) -> int:
        return sum(1 for verb in self.verbs if isinstance(verb, StreamVerb))


def element_label(index: int, name: str) -> str:
    return f"element {index} <{name}>"


def parse_document(body: bytes, *, forbid_private_callbacks: bool = False) -> Document:
    """The answer's bytes -> the verbs to run, in order; PlivoXmlError for anything unusable."""
    if len(body) > MAX_DOCUMENT_BYTES:
        raise PlivoXmlError(f"the answer is {len(body)} bytes, over Plivo's {MAX_DOCUMENT_BYTES}-byte limit")
    if not body.strip():
        raise PlivoXmlError("the answer is empty: expected a Plivo XML <Response>")
    root = _parse(body)
    if root.tag != "Response":
        raise PlivoXmlError(f"the root element is <{_name(root.tag)}>, not <Response>", element=_name(root.tag))
    children = list(root)
    if len(children) > MAX_ELEMENTS:
        raise PlivoXmlError(f"<Response> has {len(children)} elements; at most {MAX_ELEMENTS} are run")
    verbs = tuple(_verb(index, child, forbid_private_callbacks) for index, child in enumerate(children, start=1))
    streams = sum(1 for verb in verbs if isinstance(verb, StreamVerb))
    if streams > MAX_STREAMS:
        raise PlivoXmlError(f"<Response> has {streams} <Stream> elements; at most {MAX_STREAMS} per call")
    return Document(verbs=verbs)


def _parse(body: bytes) -> Element:
    try:
        return fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DTDForbidden:
        raise PlivoXmlError("the answer has a DTD (<!DOCTYPE …>): DTDs and entity declarations are refused") from None
    except EntitiesForbidden as exc:
        raise PlivoXmlError(f"the answer declares the entity {exc.name!r}: entity declarations are refused") from None
    except ExternalReferenceForbidden:
        raise PlivoXmlError("the answer refers to an external resource: external references are refused") from None
    except DefusedXmlException as exc:
        raise PlivoXmlError(f"the answer was refused by the hardened parser: {type(exc).__name__}") from None
    except ParseError as exc:
        raise PlivoXmlError(f"the answer is not well-formed XML: {exc}") from None
    except (LookupError, UnicodeError, ValueError) as exc:  # an encoding expat does not know
        raise PlivoXmlError(f"the answer's XML cannot be decoded: {exc}") from None


def _name(tag: str) -> str:
    # ElementTree writes a namespaced name as {uri}local; Plivo XML has no namespaces
    return tag if len(tag) <= 60 else tag[:57] + "..."


def _verb(index: int, element: Element, forbid_private_callbacks: bool) -> Verb:
    name = _name(element.tag)
    if name not in EXECUTED:
        return Unsupported(index, name, _unsupported_note(name))
    label = element_label(index, name)
    if len(element):
        raise PlivoXmlError(f"{label} has a child element <{_name(element[0].tag)}>: it takes none", element=label)
    if name == "Stream":
        return _stream(index, label, element, forbid_private_callbacks)
    if name == "Wait":
        return _wait(index, label, element.attrib)
    return _hangup(index, label, element.attrib)


def _unsupported_note(name: str) -> str:
    for executed in EXECUTED:
        if name.lower() == executed.lower():
            return f"<{name}> is not executed: element names are case-sensitive (did you mean <{executed}>?)"
    if name in PLIVO_VERBS:
        return f"<{name}> is a Plivo verb streamhub does not execute; skipped"
    return f"<{name}> is not a Plivo XML element streamhub executes; skipped"


def _stream(index: int, label: str, element: Element, forbid_private_callbacks: bool) -> StreamVerb:
    unknown = [key for key in element.attrib if key not in STREAM_ATTRIBUTES]
    if unknown:
        raise PlivoXmlError(
            f"{label}, attribute {unknown[0]}: is not a <Stream> attribute (the URL is the element's text)",
            element=label,
            attribute=unknown[0],
        )
    data: dict[str, Any] = dict(element.attrib)
    data["serviceUrl"] = (element.text or "").strip()
    try:
        params = validate_stream_params(data, forbid_private_callbacks=forbid_private_callbacks)
    except StreamParamError as exc:
        problems = []
        for field, message in exc.errors.items():
            where = "the URL (element text)" if field in ("serviceUrl", "service_url") else f"attribute {field}"
            problems.append(f"{where}: {message}")
        first = next(iter(exc.errors))
        raise PlivoXmlError(
            f"{label}, {'; '.join(problems)}",
            element=label,
            attribute="" if first in ("serviceUrl", "service_url") else first,
        ) from None
    return StreamVerb(index, params)


def _check_attributes(label: str, attrib: dict[str, str], allowed: frozenset[str], name: str) -> None:
    for key in attrib:
        if key not in allowed:
            raise PlivoXmlError(f"{label}, attribute {key}: is not a <{name}> attribute", element=label, attribute=key)


def _attribute(label: str, attrib: dict[str, str], key: str, parse: Any, default: Any) -> Any:
    if key not in attrib:
        return default
    try:
        return parse(attrib[key])
    except ValueError as exc:
        raise PlivoXmlError(f"{label}, attribute {key}: {exc}", element=label, attribute=key) from None


def _positive(maximum: int) -> Any:
    def parse(value: str) -> int:
        text = value.strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 12) or int(text) <= 0:
            raise ValueError("must be a positive integer")
        if int(text) > maximum:
            raise ValueError(f"must be at most {maximum}")
        return int(text)

    return parse


def _wait(index: int, label: str, attrib: dict[str, str]) -> WaitVerb:
    _check_attributes(label, attrib, WAIT_ATTRIBUTES, "Wait")
    return WaitVerb(
        index,
        length=_attribute(label, attrib, "length", _positive(MAX_WAIT_SECONDS), 1),
        silence=_attribute(label, attrib, "silence", parse_bool, False),
        min_silence_ms=_attribute(label, attrib, "minSilence", _positive(MAX_WAIT_SECONDS * 1000), 2000),
        beep=_attribute(label, attrib, "beep", parse_bool, False),
    )


def _reason(value: str) -> str:
    if value not in HANGUP_REASONS:
        raise ValueError(f"must be one of {', '.join(HANGUP_REASONS)}")
    return value


def _hangup(index: int, label: str, attrib: dict[str, str]) -> HangupVerb:
    _check_attributes(label, attrib, HANGUP_ATTRIBUTES, "Hangup")
    return HangupVerb(
        index,
        reason=_attribute(label, attrib, "reason", _reason, ""),
        schedule=_attribute(label, attrib, "schedule", _positive(MAX_HANGUP_SCHEDULE_SECONDS), None),
    )
