"""Every shell command the docs show works as written (what can be checked without a gateway).

Commands come from the shell blocks and inline code of every Markdown page, the Procfile and
the systemd units (tests/docs/pages.py). The project's programs are written `.venv/bin/…`
(what `bash bin/setup` creates), scripts as `bash bin/…`; every `manage.py` command and
option exists (Django's own parsers), every option of uvicorn, daphne, Celery and the
project's scripts appears in that program's `--help`; one hub port everywhere.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache

import pytest
from django.core.management import CommandError, get_commands, load_command_class

from streamhub.servers import APPLICATION, UVICORN_FLAGS
from tests.docs.pages import ROOT, Command, documented_commands, page, pages

VENV_BIN = ROOT / ".venv" / "bin"
# Programs the project installs into .venv: run them from there, never from an activated shell.
PROJECT_PROGRAMS = frozenset(
    {"python", "python3", "manage.py", "uvicorn", "celery", "daphne", "pytest", "ruff", "mypy", "lint-imports"}
    | {"pre-commit", "pip", "pip3", "django-admin"}
)
HUB_PATHS = ("/ingest/", "/v1/", "/admin/", "/healthz", "/readyz")


def base(word: str) -> str:
    return word.rsplit("/", 1)[-1]


def in_venv(word: str) -> bool:
    return re.search(r"(^|/)\.venv/bin/[^/]+$", word) is not None


@cache
def commands() -> tuple[Command, ...]:
    return tuple(documented_commands())


def test_the_docs_show_commands_at_all() -> None:
    found = {base(c.program) for c in commands()}
    assert {"python", "uvicorn", "celery", "bash"} <= found, found


def test_project_programs_are_run_from_the_virtualenv() -> None:
    wrong = []
    for c in commands():
        program = c.program
        if base(program) == "manage.py":
            wrong.append(f"{c.where}: `{c.source}`: write .venv/bin/python manage.py")
        elif base(program) in PROJECT_PROGRAMS and not in_venv(program):
            wrong.append(f"{c.where}: `{c.source}`: write .venv/bin/{base(program)}")
        if re.match(r"^(\./)?bin/", program):
            wrong.append(f"{c.where}: `{c.source}`: write bash {program.removeprefix('./')}")
    assert wrong == [], "\n".join(wrong)


def test_every_script_named_exists() -> None:
    scripts = [c for c in commands() if c.program == "bash" and len(c.words) > 1]
    assert scripts
    missing = [f"{c.where}: {c.words[1]}" for c in scripts if not (ROOT / c.words[1]).is_file()]
    assert missing == [], "\n".join(missing)


def test_every_virtualenv_program_named_exists_after_setup() -> None:
    if not (VENV_BIN / "python").exists():
        pytest.fail(f"{VENV_BIN} is missing: run bash bin/setup first")
    named = {(c.where, base(c.program)) for c in commands() if in_venv(c.program)}
    for p in pages():
        named |= {(p.name, m) for m in re.findall(r"\.venv/bin/([\w.-]+)", p.path.read_text())}
    missing = sorted(f"{where}: .venv/bin/{name}" for where, name in named if not (VENV_BIN / name).exists())
    assert missing == [], "\n".join(missing)


def manage_py_commands() -> list[Command]:
    return [c for c in commands() if len(c.words) > 2 and base(c.program) == "python" and c.words[1] == "manage.py"]


def test_every_documented_manage_py_command_and_option_exists() -> None:
    known = get_commands()
    wrong = []
    assert manage_py_commands(), "no manage.py command found in the docs"
    for c in manage_py_commands():
        name, args = c.words[2], list(c.words[3:])
        if name not in known:
            wrong.append(f"{c.where}: manage.py has no command {name!r}")
            continue
        parser = load_command_class(known[name], name).create_parser("manage.py", name)
        if not c.complete:  # named in prose or elided: its options must exist all the same
            options = parser._option_string_actions
            wrong += [f"{c.where}: {name} has no option {o}" for o in options_of(tuple(args)) if o not in options]
            continue
        try:
            parser.parse_args(args)
        except (CommandError, SystemExit) as exc:
            wrong.append(f"{c.where}: `{c.source}`: {exc}")
    assert wrong == [], "\n".join(wrong)


@cache
def help_text(argv: tuple[str, ...]) -> str:
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{' '.join(argv)} failed:\n{out.stderr[-2000:]}"
    if "flower" in argv:  # Flower's own options are Tornado options, which click's --help does not list
        import flower.options  # noqa: F401  (defines them)
        from tornado.options import options as tornado_options

        return out.stdout + " ".join(f"--{name}" for name in tornado_options._options)
    return out.stdout


def options_of(words: tuple[str, ...]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if w.startswith("-") and w not in ("-", "--")]


def option_in(option: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def tool_commands() -> list[tuple[Command, tuple[str, ...], list[str]]]:
    """(command, its --help argv, the options it uses) for the servers, Celery and scripts."""
    found = []
    for c in commands():
        name = base(c.program)
        if not in_venv(c.program):
            continue
        if name in ("uvicorn", "daphne"):
            found.append((c, (str(VENV_BIN / name), "--help"), options_of(c.words[1:])))
        elif name == "celery":
            words = list(c.words[1:])
            while words and words[0] in ("-A", "--app"):
                words = words[2:]
            sub = words[0] if words else ""
            found.append((c, (str(VENV_BIN / "celery"), "-A", "streamhub", sub, "--help"), options_of(tuple(words))))
        elif name == "python" and len(c.words) > 1 and c.words[1].endswith(".py") and c.words[1] != "manage.py":
            script = ROOT / c.words[1]
            found.append((c, (str(VENV_BIN / "python"), str(script), "--help"), options_of(c.words[2:])))
    return found


def test_every_option_of_the_servers_celery_and_scripts_exists() -> None:
    wrong = []
    checked = tool_commands()
    assert {base(c.program) for c, _, _ in checked} >= {"uvicorn", "daphne", "celery", "python"}
    for c, argv, options in checked:
        if argv[1].endswith(".py") and not (ROOT / c.words[1]).exists():
            wrong.append(f"{c.where}: no such script {c.words[1]}")
            continue
        text = help_text(argv)
        wrong += [f"{c.where}: `{c.source}`: {o} is not an option" for o in options if not option_in(o, text)]
    assert wrong == [], "\n".join(wrong)


def readme_port() -> str:
    ports = set()
    for c in commands():
        if c.where.startswith("README.md") and base(c.program) == "uvicorn":
            words = list(c.words)
            ports.add(words[words.index("--port") + 1])
    assert len(ports) == 1, f"the README shows one uvicorn command with one port, not {ports}"
    return ports.pop()


def test_every_hub_command_line_is_the_deployed_one() -> None:
    """uvicorn as streamhub/servers.py runs it; daphne and uvicorn on the README's port (or the
    Procfile's $PORT, the systemd unit's %i)."""
    port = readme_port()
    wrong = []
    for c in commands():
        name, words = base(c.program), list(c.words)
        if "…" in words:
            continue  # an elided command line in prose
        if name == "uvicorn":
            text = " ".join(words)
            wrong += [f"{c.where}: uvicorn without {' '.join(flag)}" for flag in _pairs() if " ".join(flag) not in text]
            if words[-1] != APPLICATION:
                wrong.append(f"{c.where}: uvicorn serves {words[-1]}, not {APPLICATION}")
            flag = "--port"
        elif name == "daphne":
            flag = "-p"
        else:
            continue
        value = words[words.index(flag) + 1] if flag in words else None
        if value not in (port, "$PORT", "%i"):
            wrong.append(f"{c.where}: `{c.source}` listens on {value}, not the README's {port}")
    assert wrong == [], "\n".join(wrong)


def _pairs() -> list[tuple[str, str]]:
    return [(UVICORN_FLAGS[i], UVICORN_FLAGS[i + 1]) for i in range(0, len(UVICORN_FLAGS), 2)]


def test_one_hub_port_everywhere() -> None:
    port = readme_port()
    texts = [(p.name, p.path.read_text()) for p in pages()]
    files = [ROOT / "Procfile", *(f for f in (ROOT / "deploy").rglob("*") if f.is_file())]
    texts += [(str(f.relative_to(ROOT)), f.read_text()) for f in files]
    texts.append(("bin/demo", (ROOT / "bin" / "demo").read_text()))
    wrong = []
    for name, text in texts:
        for match in re.finditer(r"(?:127\.0\.0\.1|localhost):(\d{2,5})(/\S*)?", text):
            hub_like = match[2] is not None and match[2].startswith(HUB_PATHS)
            if hub_like and match[1] != port:
                wrong.append(f"{name}: {match[0]} (the hub listens on {port})")
        for match in re.finditer(r"--hub\s+wss?://[^:/\s]+:(\d+)", text):
            if match[1] != port:
                wrong.append(f"{name}: {match[0]} (the hub listens on {port})")
        wrong += [f"{name}: port 8000 in {m[0]!r}" for m in re.finditer(r"(?:[\w.\]]:|--port[ =]|-p )8000\b", text)]
    demo_default = re.search(r"STREAMHUB_DEMO_PORT:-(\d+)", (ROOT / "bin" / "demo").read_text())
    assert demo_default is not None
    if demo_default[1] != port:
        wrong.append(f"bin/demo: default port {demo_default[1]}")
    assert wrong == [], "\n".join(wrong)


def test_one_description_of_the_worker_and_the_beat() -> None:
    """Workers are plain `celery -A streamhub worker` (threads, 8, from the settings), the beat
    runs on its own: no page starts a worker with --beat or another pool."""
    from django.conf import settings

    assert (settings.CELERY_WORKER_POOL, settings.CELERY_WORKER_CONCURRENCY) == ("threads", 8)
    wrong = []
    celery = [c for c in commands() if base(c.program) == "celery"]
    assert {"worker", "beat"} <= {w for c in celery for w in c.words}
    for c in celery:
        words = list(c.words)
        if "-A" not in words or words[words.index("-A") + 1] != "streamhub":
            wrong.append(f"{c.where}: `{c.source}` without -A streamhub")
        if "worker" in words and ({"--beat", "-B"} & set(words)):
            wrong.append(f"{c.where}: `{c.source}`: the beat runs on its own, once per deployment")
        if any(w.startswith(("--pool", "-P")) and "threads" not in w for w in words):
            wrong.append(f"{c.where}: `{c.source}`: the worker pool is threads")
    assert wrong == [], "\n".join(wrong)


def test_the_readme_says_how_to_run_the_worker_and_the_beat() -> None:
    readme = {(base(c.program), *c.words[1:4]) for c in commands() if c.where.startswith("README.md")}
    assert ("celery", "-A", "streamhub", "worker") in readme and ("celery", "-A", "streamhub", "beat") in readme
    assert "exactly one" in page("README.md").prose
