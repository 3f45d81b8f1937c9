"""The gateway snippets of the docs, checked against the hub's own parsers and validators.

- Every JSON example parses; gateway metadata (JSON blocks with `streams`, jambonz `listen`
  verbs, the metadata argument of every `uuid_audio_fork … start`) passes
  streams.core.audiofork's parser and streams.core.validation's validator, and asks for
  bidirectional streams only where the gateway is told to play them.
- `uuid_audio_fork` commands: the arguments mod_audio_fork takes, in its order; `stop` and
  `send_text` name the fork `start` named; the two-way arguments match the rate.
- Asterisk: `extensions.conf` snippets name their context, carry no unescaped `;` inside an
  application's arguments, read only `v()` names the hub reads (streams.core.asterisk),
  URL-encode every value, and load (in the page's `modules.conf`) every module they use;
  `websocket_client.conf` snippets have what chan_websocket needs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

from streams.core import asterisk, audiofork
from streams.core.validation import validate_stream_params
from tests.docs.pages import Block, Page, Span, pages

JSON_INFOS = {"json"}
INI_INFOS = {"ini", ""}


def json_blocks() -> list[Block]:
    return [b for p in pages() for b in p.blocks if b.info in JSON_INFOS]


def test_every_json_example_parses() -> None:
    wrong = []
    for block in json_blocks():
        try:
            json.loads(block.text)
        except ValueError as exc:
            wrong.append(f"{block.where}: {exc}")
    for p in pages():
        for span in p.spans:
            looks_like_json = span.code.startswith(('{"', '[{"')) and '":' in span.code
            if looks_like_json and "…" not in span.code and "<" not in span.code:
                try:
                    json.loads(span.code)
                except ValueError as exc:
                    wrong.append(f"{span.where}: `{span.code}`: {exc}")
    assert json_blocks(), "no JSON example found"
    assert wrong == [], "\n".join(wrong)


# --- gateway metadata -------------------------------------------------------------------------


def metadata_problems(text: str, *, plays: bool | None) -> list[str]:
    """What the hub would object to in this first TEXT frame; `plays`: can this gateway play audio."""
    meta = audiofork.parse_gateway_metadata(text)
    problems = list(meta.errors)
    if not isinstance(meta.raw, dict):
        return [*problems, "not a JSON object"]
    if meta.playback is not None:
        plays = meta.playback
    for index, entry in enumerate(meta.streams):
        try:
            params = validate_stream_params(entry)
        except ValueError as exc:
            problems.append(f"streams[{index}]: {exc}")
            continue
        if params.bidirectional and not plays:
            problems.append(f"streams[{index}] is bidirectional on a gateway that is not told to play audio")
    return problems


def metadata_examples() -> Iterator[tuple[str, str, bool | None]]:
    """(where, first TEXT frame, whether the gateway plays audio when the metadata does not say)."""
    for block in json_blocks():
        data = json.loads(block.text)
        if not isinstance(data, dict):
            continue
        if data.get("verb") == "listen":
            frame = {k: data[k] for k in ("sampleRate", "mixType", "metadata") if k in data}
            bidi = data.get("bidirectionalAudio") or {}
            yield block.where, json.dumps(frame), bool(bidi.get("enabled"))  # jambonz offers audio.jambonz.org
        elif "streams" in data:
            yield block.where, block.text, None


def test_gateway_metadata_examples_pass_the_hubs_validators() -> None:
    examples = list(metadata_examples())
    assert examples, "no gateway metadata example found"
    wrong = [f"{where}: {p}" for where, text, plays in examples for p in metadata_problems(text, plays=plays)]
    assert wrong == [], "\n".join(wrong)


def test_jambonz_listen_examples_play_at_the_calls_rate() -> None:
    wrong = []
    for block in json_blocks():
        data = json.loads(block.text)
        if isinstance(data, dict) and data.get("verb") == "listen":
            bidi = data.get("bidirectionalAudio") or {}
            if bidi.get("enabled") and bidi.get("sampleRate") != data.get("sampleRate"):
                wrong.append(f"{block.where}: bidirectionalAudio.sampleRate differs from sampleRate")
            if not data.get("url", "").endswith("/ingest/audio-fork"):
                wrong.append(f"{block.where}: url is not the hub's /ingest/audio-fork")
    assert wrong == [], "\n".join(wrong)


# --- mod_audio_fork commands ------------------------------------------------------------------


def fork_commands() -> Iterator[tuple[str, list[str]]]:
    """Every `uuid_audio_fork …` in code blocks and inline code, split as the module splits it."""
    for p in pages():
        for block in p.blocks:
            for offset, line in enumerate(block.text.splitlines(), start=1):
                if line.strip().startswith("uuid_audio_fork"):
                    yield f"{p.name}:{block.line + offset}", line.split()
        for span in p.spans:
            if span.code.startswith("uuid_audio_fork "):
                yield span.where, span.code.split()


RATES = {"8k": 8000, "16k": 16000}


def start_problems(args: list[str]) -> list[str]:
    """`uuid_audio_fork <uuid> start <url> <mix> <8k|16k> <bug> <metadata> [true true <rate>]`."""
    if len(args) not in (8, 11):
        return [f"start takes 8 words (11 for two-way), not {len(args)}"]
    url, mix, rate, bug, metadata = args[3:8]
    problems = []
    if urlsplit(url).scheme not in ("ws", "wss") or urlsplit(url).path != "/ingest/audio-fork":
        problems.append(f"{url} is not the hub's ws(s)://…/ingest/audio-fork")
    if mix not in ("mono", "mixed", "stereo"):
        problems.append(f"mix {mix!r} is not mono, mixed or stereo")
    if rate not in RATES:
        problems.append(f"rate {rate!r} is not 8k or 16k")
    if not bug or bug.startswith("{"):
        problems.append("no fork (bug) name before the metadata")
    if not metadata.startswith("{"):
        return [*problems, f"the metadata must be compact JSON, not {metadata[:20]!r}"]
    two_way = args[8:]
    if two_way and (two_way[:2] != ["true", "true"] or two_way[2] != str(RATES.get(rate))):
        problems.append(f"two-way arguments {' '.join(two_way)!r} are not 'true true {RATES.get(rate)}'")
    try:
        data = json.loads(metadata)
    except ValueError as exc:
        return [*problems, f"metadata: {exc}"]
    if "sampleRate" in data and data["sampleRate"] != RATES.get(rate):
        problems.append(f"sampleRate {data['sampleRate']} differs from {rate}")
    declared = data.get("playback")
    if declared is True and not two_way:
        problems.append('"playback":true without the two-way arguments (true true <rate>)')
    if two_way and declared is not True:
        problems.append('two-way mode without "playback":true: the hub would not play into it')
    problems += metadata_problems(metadata, plays=False)  # FreeSWITCH offers audio.drachtio.org
    return problems


def test_every_uuid_audio_fork_command_is_one_the_module_takes() -> None:
    found = list(fork_commands())
    assert any(args[2] == "start" for _, args in found), "no uuid_audio_fork start found"
    bugs = {args[6] for _, args in found if len(args) > 6 and args[2] == "start"}
    wrong = []
    for where, args in found:
        action = args[2] if len(args) > 2 else ""
        if action == "start":
            wrong += [f"{where}: {p}" for p in start_problems(args)]
        elif action in ("stop", "send_text"):
            if len(args) < 4 or args[3] not in bugs:
                wrong.append(f"{where}: `{' '.join(args)}` must name the fork ({', '.join(sorted(bugs))})")
            if action == "send_text" and len(args) > 4:
                try:
                    audiofork.parse_gateway_event(" ".join(args[4:]))
                except ValueError as exc:
                    wrong.append(f"{where}: send_text payload: {exc}")
        else:
            wrong.append(f"{where}: unknown uuid_audio_fork action {action!r}")
    assert wrong == [], "\n".join(wrong)


# --- Asterisk ----------------------------------------------------------------------------------

EXTEN = re.compile(r"^\s*(exten|same)\s*=>\s*(?P<rest>.*)$")
# What each dialplan application and function needs loaded; None: built into Asterisk's core.
APPLICATIONS: dict[str, str | None] = {
    "Dial": "app_dial",
    "Set": None,
    "Hangup": None,
    "Answer": None,
    "NoOp": None,
    "Goto": None,
    "Wait": None,
    "Playback": "app_playback",
    "Echo": "app_echo",
}
FUNCTIONS: dict[str, str | None] = {"URIENCODE": "func_uri", "CALLERID": "func_callerid"}
CHANNELS: dict[str, list[str]] = {
    "WebSocket": ["chan_websocket", "res_websocket_client", "res_http_websocket", "res_sorcery_config"],
    "Local": [],
    "PJSIP": ["chan_pjsip"],
}
SAFE_LITERAL = re.compile(r"^[A-Za-z0-9._~%-]*$")
SAFE_VARIABLES = {"UNIQUEID"}  # digits and a dot
V_NAMES = {*asterisk.CALL_KEYS, *asterisk.STREAM_KEYS, "streams", "token"}


def dialplan_blocks() -> list[Block]:
    return [b for p in pages() for b in p.blocks if any(EXTEN.match(line) for line in b.text.splitlines())]


def code_part(line: str) -> str:
    """The line as Asterisk reads it: up to the first `;` that is not escaped as `\\;`."""
    match = re.search(r"(?<!\\);", line)
    return line if match is None else line[: match.start()]


def balanced(text: str) -> bool:
    depth = 0
    for ch in text.replace("\\(", "").replace("\\)", ""):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0 and text.count("${") <= text.count("}")


def call_of(rest: str) -> tuple[str, str] | None:
    """`_X.,1,Dial(args)` / `n,Set(X=…)` -> (application, arguments)."""
    match = re.search(r",\s*(?P<app>[A-Z][A-Za-z]*)\((?P<args>.*)\)\s*$", rest)
    return None if match is None else (match["app"], match["args"])


def enclosed(text: str, open_at: int) -> str:
    """What the parenthesis at `open_at` encloses."""
    depth = 0
    for index in range(open_at, len(text)):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        if depth == 0:
            return text[open_at + 1 : index]
    return text[open_at + 1 :]


def split_top(text: str, sep: str = ",") -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += {"(": 1, "{": 1, ")": -1, "}": -1}.get(ch, 0)
        if ch == sep and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


def v_pairs(dial_args: str) -> list[tuple[str, str]]:
    """The `v(name=value,…)` pairs of a `WebSocket/<connection>/<options>` dial string."""
    dial_string = split_top(dial_args)[0]
    at = dial_string.find("v(")
    if at < 0:
        return []
    pairs = []
    for pair in split_top(enclosed(dial_string, at + 1)):
        name, _, value = pair.partition("=")
        pairs.append((name, value))
    return pairs


def test_every_dialplan_snippet_reads_as_asterisk_reads_it() -> None:
    blocks = dialplan_blocks()
    assert blocks, "no extensions.conf snippet found"
    wrong = []
    for block in blocks:
        lines = block.text.splitlines()
        first = next(i for i, line in enumerate(lines) if EXTEN.match(line))
        if not any(re.match(r"^\s*\[[\w-]+\]", line) for line in lines[:first]):
            wrong.append(f"{block.where}: the snippet does not say which [context] it belongs to")
        encoded: set[str] = set()
        for line in lines:
            match = EXTEN.match(line)
            if match is None:
                continue
            rest = code_part(match["rest"]).rstrip()
            if not balanced(rest):
                wrong.append(f"{block.where}: `{line.strip()}`: an unescaped ; cuts the line (write \\;)")
                continue
            call = call_of(rest)
            if call is None:
                continue
            app, args = call
            if app == "Set":
                name, _, value = args.partition("=")
                if value.startswith("${URIENCODE(") and value.endswith(")}"):
                    encoded.add(name)
            if app == "Dial" and args.startswith("WebSocket/"):
                wrong += [f"{block.where}: {p}" for p in dial_problems(args, encoded)]
    assert wrong == [], "\n".join(wrong)


def dial_problems(args: str, encoded: set[str]) -> list[str]:
    problems = []
    codec = re.search(r"/c\((\w+)\)", args)
    if codec is None or codec[1] not in asterisk.CODECS:
        problems.append(f"dial with c(ulaw), c(slin) or c(slin16), not {codec[0] if codec else 'no c()'}")
    for name, value in v_pairs(args):
        if name not in V_NAMES:
            problems.append(f"v() name {name!r} is not one the hub reads ({', '.join(sorted(V_NAMES))})")
        variable = re.fullmatch(r"\$\{(\w+)\}", value)
        if value.startswith("${URIENCODE(") and value.endswith(")}"):
            continue
        if variable and (variable[1] in encoded or variable[1] in SAFE_VARIABLES):
            continue
        if not SAFE_LITERAL.match(value):
            problems.append(f"v() value {name}={value} is not URL-encoded (wrap it in URIENCODE())")
    return problems


def modules_loaded(page_: Page) -> set[str] | None:
    for block in page_.blocks:
        if re.search(r"^\s*\[modules\]", block.text, re.MULTILINE):
            return {m for m in re.findall(r"^\s*load\s*=>?\s*([\w]+)\.so", block.text, re.MULTILINE)}
    return None


def test_every_module_the_dialplan_needs_is_loaded() -> None:
    wrong = []
    for p in pages():
        snippets = [b for b in p.blocks if b in dialplan_blocks()]
        if not snippets:
            continue
        loaded = modules_loaded(p)
        if loaded is None:
            wrong.append(f"{p.name}: a dialplan without the modules.conf it needs (autoload = no)")
            continue
        needed = {"pbx_config"}
        for block in snippets:
            text = "\n".join(code_part(line) for line in block.text.splitlines())
            for app in re.findall(r"(?:,|=>)\s*([A-Z][A-Za-z]+)\(", text):
                if app not in APPLICATIONS:
                    wrong.append(f"{block.where}: application {app}: add what it needs to APPLICATIONS")
                elif APPLICATIONS[app]:
                    needed.add(str(APPLICATIONS[app]))
            for function in re.findall(r"\$\{([A-Z_]+)\(", text):
                if function not in FUNCTIONS:
                    wrong.append(f"{block.where}: function {function}: add what it needs to FUNCTIONS")
                elif FUNCTIONS[function]:
                    needed.add(str(FUNCTIONS[function]))
            for tech in re.findall(r"Dial\((\w+)/", text):
                needed.update(CHANNELS.get(tech, [f"the channel driver of {tech}"]))
        wrong += [f"{p.name}: modules.conf does not load {m}.so" for m in sorted(needed - loaded)]
    assert wrong == [], "\n".join(wrong)


def ini_sections(text: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        line = code_part(line).strip()
        header = re.match(r"^\[([\w-]+)\]", line)
        if header:
            current = sections.setdefault(header[1], {})
        elif "=" in line and current is not None:
            key, _, value = line.partition("=")
            current[key.strip()] = value.strip()
    return sections


def test_every_websocket_client_conf_has_what_chan_websocket_needs() -> None:
    found = []
    wrong = []
    for p in pages():
        for block in p.blocks:
            for name, section in ini_sections(block.text).items():
                if section.get("type") != "websocket_client":
                    continue
                found.append(name)
                uri = urlsplit(section.get("uri", ""))
                checks = {
                    "connection_type = per_call_config": section.get("connection_type") == "per_call_config",
                    "protocols = media": section.get("protocols") == "media",
                    "uri = ws(s)://…/ingest/asterisk": uri.scheme in ("ws", "wss") and uri.path == "/ingest/asterisk",
                    "username (the auth_id) and password (the auth_token)": bool(
                        section.get("username") and section.get("password")
                    ),
                }
                wrong += [f"{block.where}: [{name}] needs {need}" for need, ok in checks.items() if not ok]
                dials = [b for b in p.blocks if b in dialplan_blocks()]
                if dials and not any(f"WebSocket/{name}/" in b.text for b in dials):
                    wrong.append(f"{block.where}: the page's Dial does not use the connection [{name}]")
    assert found, "no websocket_client.conf snippet found"
    assert wrong == [], "\n".join(wrong)


def test_every_v_name_the_docs_list_is_one_the_hub_reads() -> None:
    """The `v()` table: its first column names what a dial string may carry."""
    wrong = []
    listed = 0
    for p in pages():
        table = False
        for line in p.prose.splitlines():
            if line.startswith("|") and "v()" in line.split("|")[1]:
                table = True
                continue
            if not line.startswith("|"):
                table = False
                continue
            if table and not set(line) <= set("|-: "):
                for name in re.findall(r"`(\w+)`", line.split("|")[1]):
                    listed += 1
                    if name not in V_NAMES:
                        wrong.append(f"{p.name}: v() name {name!r} is not one the hub reads")
    assert listed, "no v() table found"
    assert wrong == [], "\n".join(wrong)


def spans_with(text: str) -> Iterator[Span]:
    for p in pages():
        yield from (s for s in p.spans if text in s.code)


def test_inline_gateway_events_parse() -> None:
    """`{"event":"dtmf",…}` examples are events the hub's parser takes."""
    wrong = []
    for span in spans_with('"event":"dtmf"'):
        if "…" in span.code:
            continue
        payload = span.code.split(" ", 4)[-1] if span.code.startswith("uuid_audio_fork") else span.code
        try:
            events = audiofork.parse_gateway_event(payload)
        except ValueError as exc:
            wrong.append(f"{span.where}: {exc}")
            continue
        if not all(isinstance(e, audiofork.GatewayDtmf) for e in events):
            wrong.append(f"{span.where}: not a DTMF event")
    assert wrong == [], "\n".join(wrong)
