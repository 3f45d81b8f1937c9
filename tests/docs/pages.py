"""What the docs tests read: every Markdown page of the repository, cut into fenced blocks,
inline code spans, links and headings, plus the deployment files that hold commands.

Pages are found by globbing, so a page added tomorrow is checked like today's.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
SKIP_DIRS = {".git", ".venv", "var", "node_modules", "test-artifacts", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
SHELL_INFOS = {"sh", "bash", "shell", "console", ""}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\s`]*)")
HEADING = re.compile(r"^#{1,6}\s+(?P<text>.+?)\s*#*\s*$")
LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"(?P<ticks>`+)(?P<code>.+?)(?P=ticks)", re.DOTALL)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    info: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


@dataclass(frozen=True)
class Span:
    page: Path
    line: int
    code: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


@dataclass
class Page:
    path: Path
    blocks: list[Block] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    links: list[tuple[int, str]] = field(default_factory=list)
    anchors: set[str] = field(default_factory=set)
    prose: str = ""  # the page without its fenced blocks

    @property
    def name(self) -> str:
        return str(self.path.relative_to(ROOT))


def markdown_files(root: Path = ROOT) -> list[Path]:
    found = []
    for path in sorted(root.rglob("*.md")):
        parts = set(path.relative_to(root).parts[:-1])
        if not parts & SKIP_DIRS:
            found.append(path)
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading).strip().lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def parse(path: Path) -> Page:
    page = Page(path)
    lines = path.read_text().splitlines()
    prose: list[tuple[int, str]] = []
    fence: re.Match[str] | None = None
    body: list[str] = []
    start = 0
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if fence is None:
            opened = FENCE.match(line)
            if opened:
                fence, body, start = opened, [], number
                continue
            prose.append((number, line))
            heading = HEADING.match(line)
            if heading:
                base = slug(heading["text"])
                count = seen.get(base, 0)
                seen[base] = count + 1
                page.anchors.add(base if count == 0 else f"{base}-{count}")
            continue
        closing = line.strip()
        if closing.startswith(fence["fence"]) and set(closing) <= set(fence["fence"][0]):
            indent = len(fence["indent"])
            text = "\n".join(b[indent:] if b[:indent].strip() == "" else b for b in body)
            page.blocks.append(Block(path, start, fence["info"].lower(), text))
            fence = None
            continue
        body.append(line)
    page.prose = "\n".join(line for _, line in prose)
    # inline code and links, paragraph by paragraph (a span may wrap onto the next line)
    paragraph: list[tuple[int, str]] = []
    for number, line in [*prose, (len(lines) + 1, "")]:
        if line.strip():
            paragraph.append((number, line))
            continue
        if paragraph:
            _scan_paragraph(page, paragraph)
            paragraph = []
    return page


def _scan_paragraph(page: Page, paragraph: list[tuple[int, str]]) -> None:
    text = "\n".join(line for _, line in paragraph)
    offsets = []
    at = 0
    for number, line in paragraph:
        offsets.append((at, number))
        at += len(line) + 1

    def line_of(index: int) -> int:
        return max(number for start, number in offsets if start <= index)

    for match in CODE_SPAN.finditer(text):
        code = " ".join(match["code"].split())
        page.spans.append(Span(page.path, line_of(match.start()), code))
    without_code = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), text)
    for match in LINK.finditer(without_code):
        page.links.append((line_of(match.start()), match["target"]))


@cache
def pages() -> tuple[Page, ...]:
    return tuple(parse(path) for path in markdown_files())


def page(name: str) -> Page:
    return next(p for p in pages() if p.name == name)


# --- shell commands ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    where: str
    words: tuple[str, ...]  # after leading VAR=value assignments
    source: str
    complete: bool = True  # False: inline code naming a command in prose, or arguments elided with …

    @property
    def program(self) -> str:
        return self.words[0] if self.words else ""


ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def split_commands(text: str, where: str, *, strict: bool) -> list[Command]:
    """Shell text -> simple commands (`&&`, `||`, `;`, `|` separate them; comments dropped)."""
    text = re.sub(r"\\\n\s*", " ", text)
    found: list[Command] = []
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError:
            if strict:
                raise AssertionError(f"{where}: not a shell command line: {line}") from None
            continue
        words: list[str] = []
        on_line: list[Command] = []
        for token in [*tokens, ";"]:
            if token and set(token) <= set("&|;"):
                while words and ASSIGNMENT.match(words[0]):
                    words.pop(0)
                if words:
                    complete = strict and not any("…" in w for w in words)
                    on_line.append(Command(where, tuple(words), line, complete))
                words = []
            else:
                words.append(token)
        if not strict:
            # text that may not be shell at all (a plain ``` block, inline code): only a line that
            # starts like a command counts, and only its first command
            on_line = [c for c in on_line[:1] if PROGRAM.match(c.program)]
        found += on_line
    return found


PROGRAM = re.compile(r"^(\.{0,2}/)?[\w.-]+(/[\w.-]+)*$")


def shell_blocks() -> list[Block]:
    return [b for p in pages() for b in p.blocks if b.info in SHELL_INFOS]


def documented_commands() -> list[Command]:
    """Every shell command the docs and the deployment files show, code blocks and inline code alike."""
    commands: list[Command] = []
    for block in shell_blocks():
        commands += split_commands(block.text, block.where, strict=block.info != "")
    for p in pages():
        for span in p.spans:
            commands += [c for c in split_commands(span.code, span.where, strict=False) if len(c.words) > 1]
    procfile = ROOT / "Procfile"
    for number, line in enumerate(procfile.read_text().splitlines(), start=1):
        if line and not line.startswith("#") and ":" in line:
            commands += split_commands(line.split(":", 1)[1], f"Procfile:{number}", strict=True)
    for unit in sorted((ROOT / "deploy").rglob("*.service")):
        for number, line in enumerate(unit.read_text().splitlines(), start=1):
            if line.startswith("ExecStart="):
                where = f"{unit.relative_to(ROOT)}:{number}"
                commands += split_commands(line.removeprefix("ExecStart="), where, strict=True)
    return commands
