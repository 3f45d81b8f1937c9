"""Settings, links and quoted log lines in the docs are the code's.

- Every environment variable or setting a page names (`STREAMHUB_…`, `DJANGO_…`,
  `CELERY_…`, `DATABASE_URL`, `REDIS_URL`) is read by the settings or by a script; every
  `STREAMHUB_…` variable settings.py reads has a row in the README's configuration table
  (a `PREFIX_*` row counts when a table in docs/ lists the variable itself).
- Every relative link resolves to a file of the repository, and its `#anchor` to a heading.
- Every hub log line a page quotes in a ```log block is one the named logger can print.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

from django.conf import settings

from tests.docs.pages import ROOT, page, pages

NAME = re.compile(r"(?<![\w-])((?:STREAMHUB|DJANGO|CELERY)_[A-Z0-9_]*[A-Z0-9*]|DATABASE_URL|REDIS_URL)(?![\w-])")
ENV_READ = re.compile(r"(?:getenv|environ\.get|env_bool|env_int|env_float|env_list)\(\s*\"([A-Z0-9_]+)\"")
SETTINGS = ROOT / "streamhub" / "settings.py"


@cache
def code_text() -> str:
    """Everything that could read a variable: the Python sources and the scripts in bin/."""
    files = [*ROOT.glob("streamhub/*.py"), *ROOT.glob("streams/**/*.py"), *ROOT.glob("callbacks/**/*.py")]
    files += [*ROOT.glob("examples/*.py"), *ROOT.glob("bench/*.py"), *(f for f in ROOT.glob("bin/*") if f.is_file())]
    return "\n".join(f.read_text() for f in files)


def env_read_by_settings() -> set[str]:
    return set(ENV_READ.findall(SETTINGS.read_text()))


def known(name: str) -> bool:
    if name.endswith("_*"):
        prefix = name[:-1]
        return any(n.startswith(prefix) for n in env_read_by_settings())
    if hasattr(settings, name) or name in env_read_by_settings():
        return True
    text = code_text()
    return f'"{name}"' in text or f"${{{name}" in text or f"${name}" in text or f"{name}=" in text


def test_every_setting_the_docs_name_exists() -> None:
    wrong = []
    named = 0
    for p in pages():
        for name in sorted(set(NAME.findall(p.path.read_text()))):
            named += 1
            if not known(name):
                wrong.append(f"{p.name}: {name} is read by nothing")
    assert named > 20, "the docs name no settings?"
    assert wrong == [], "\n".join(wrong)


def table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|") and not set(line) <= set("|-: ")]


def test_every_streamhub_variable_settings_reads_is_in_the_readmes_table() -> None:
    readme = page("README.md").prose
    section = readme[readme.index("## Configuration") :]
    section = section[: section.index("\n## ", 1)]
    in_table = set(NAME.findall("\n".join(table_rows(section))))
    wildcards = [n[:-1] for n in in_table if n.endswith("*")]
    doc_tables = set(NAME.findall("\n".join(row for p in pages() for row in table_rows(p.prose))))
    missing = []
    for name in sorted(n for n in env_read_by_settings() if n.startswith("STREAMHUB_")):
        if name in in_table:
            continue
        if any(name.startswith(prefix) for prefix in wildcards) and name in doc_tables:
            continue
        missing.append(name)
    assert missing == [], f"README's configuration table lacks {missing}"


def test_every_relative_link_resolves() -> None:
    wrong = []
    checked = 0
    for p in pages():
        for line, target in p.links:
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            checked += 1
            path_part, _, anchor = target.partition("#")
            destination = (p.path.parent / path_part).resolve() if path_part else p.path
            where = f"{p.name}:{line}: ({target})"
            if not destination.is_relative_to(ROOT):
                wrong.append(f"{where} leaves the repository: a clone cannot follow it")
            elif not destination.exists():
                wrong.append(f"{where} does not exist")
            elif anchor and destination.suffix == ".md":
                target_page = next((q for q in pages() if q.path == destination), None)
                if target_page is None or anchor not in target_page.anchors:
                    wrong.append(f"{where}: no heading #{anchor}")
    assert checked > 10
    assert wrong == [], "\n".join(wrong)


LOG_LINE = re.compile(
    r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} )?(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    r"(?P<logger>(?:streams|callbacks|streamhub)(?:\.\w+)+) (?P<message>.+)$"
)


def format_strings(module: Path) -> list[str]:
    """The message formats a module logs: the first argument of every log.<level>(…) call."""
    found = []
    for node in ast.walk(ast.parse(module.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("debug", "info", "warning", "error", "exception", "critical")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append(node.args[0].value)
    return found


def as_pattern(fmt: str) -> re.Pattern[str]:
    parts = re.split(r"(%[-+ #0]*\d*(?:\.\d+)?[sdfr])", fmt)
    body = "".join(".+?" if i % 2 else re.escape(part) for i, part in enumerate(parts))
    return re.compile(f"^{body}$")


def test_every_quoted_log_line_is_one_the_hub_prints() -> None:
    wrong = []
    quoted = 0
    for p in pages():
        for block in (b for b in p.blocks if b.info == "log"):
            for line in block.text.splitlines():
                match = LOG_LINE.match(line.strip())
                if match is None:
                    wrong.append(f"{block.where}: `{line}` is not LEVEL logger message")
                    continue
                quoted += 1
                module = ROOT / Path(*match["logger"].split(".")).with_suffix(".py")
                if not module.exists():
                    wrong.append(f"{block.where}: no module for logger {match['logger']}")
                    continue
                if not any(as_pattern(f).match(match["message"]) for f in format_strings(module)):
                    wrong.append(f"{block.where}: {match['logger']} never logs `{match['message']}`")
    assert quoted, "no ```log block found"
    assert wrong == [], "\n".join(wrong)
