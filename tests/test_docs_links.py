"""The repository stands alone (issue 17): its Markdown links resolve inside it, and nothing
points at documents outside it.

- every relative link in a git-tracked ``.md`` file names a tracked file or directory, and a
  ``#fragment`` on a Markdown target names one of its headings (GitHub's slug rules);
- no tracked text file mentions the outside specification's folder or section signs;
- every "contract §N" citation names a section that ``docs/contract.md`` has.

External links (any ``scheme:``, e.g. https, mailto) are not followed: CI has no network.
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = "docs/contract.md"

# Spelled in pieces so this file does not match itself.
FORBIDDEN = ("shared" + "/", "SPEC" + " §", "SPEC" + ".md")

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^ {0,3}#{1,6}(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target "title") and ![alt](target); the target may be <wrapped in brackets>.
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^\s()]*)(?:\s+[^)]*)?\)")
_REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
_HTML_ANCHOR = re.compile(r"""<a\s[^>]*(?:name|id)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_CITATION = re.compile(r"contract §(\d+(?:\.\d+)?)((?:(?:, | and )§\d+(?:\.\d+)?|-\d+(?:\.\d+)?)*)")
_SECTION_HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)\.? ")


@dataclass(frozen=True)
class Link:
    source: str  # repository path of the .md file
    line: int
    target: str


def tracked_files() -> list[str]:
    result = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True
    )
    return [name for name in result.stdout.split("\0") if name]


def _text(path: str) -> str | None:
    data = (ROOT / path).read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    fence = ""
    for number, line in enumerate(text.splitlines(), start=1):
        opening = _FENCE.match(line)
        if fence:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence):
                fence = ""
            continue
        if opening:
            fence = opening.group(1)
            continue
        yield number, line


def links_of(source: str, text: str) -> list[Link]:
    found = []
    for number, raw in _prose_lines(text):
        line = _CODE_SPAN.sub(lambda m: " " * len(m.group(0)), raw)  # code is not a link
        targets = [m.group(1) for m in _INLINE_LINK.finditer(line)]
        definition = _REFERENCE_DEF.match(line)
        if definition:
            targets.append(definition.group(1))
        found += [Link(source, number, t.removeprefix("<").removesuffix(">")) for t in targets]
    return found


def slug(heading: str) -> str:
    """GitHub's heading id: rendered text, lower case, punctuation dropped, spaces to '-'."""
    pieces = _CODE_SPAN.split(heading)  # [text, ticks, code, ticks, code, ..., text]
    for index in range(0, len(pieces), 3):  # outside code: a link's text only, no HTML tags
        prose = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", pieces[index])
        pieces[index] = re.sub(r"<[^>]+>", "", prose)
    text = "".join(piece for index, piece in enumerate(pieces) if index % 3 != 1)
    text = text.strip().lower()
    kept = (ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in ("L", "N", "M"))
    return "".join(kept).replace(" ", "-")


def anchors_of(text: str) -> set[str]:
    """Every fragment a Markdown file answers to: heading slugs (repeats get -1, -2, ...)
    and explicit HTML anchors."""
    seen: dict[str, int] = {}
    anchors: set[str] = set()
    previous = ""
    for _, line in _prose_lines(text):
        heading = None
        atx = _ATX.match(line)
        if atx:
            heading = atx.group(1) or ""
        elif previous.strip() and _SETEXT.match(line) and not _ATX.match(previous):
            heading = previous
        if heading is not None:
            base = slug(heading)
            count = seen.get(base, 0)
            seen[base] = count + 1
            anchors.add(base if count == 0 else f"{base}-{count}")
        anchors.update(m.group(1) for m in _HTML_ANCHOR.finditer(line))
        previous = line
    return anchors


def _resolve(link: Link) -> tuple[str, str]:
    """(repository path of the target, fragment); the path is '' for a same-file link."""
    path, _, fragment = link.target.partition("#")
    path = unquote(path.split("?", 1)[0])
    if not path:
        return link.source, fragment
    base = PurePosixPath() if path.startswith("/") else PurePosixPath(link.source).parent
    parts: list[str] = []
    for part in (base / path.lstrip("/")).parts:
        if part == "..":
            if not parts:
                return "../" + path, fragment  # climbs out of the repository
            parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts), fragment


def link_problems(links: list[Link], files: set[str], texts: dict[str, str]) -> list[str]:
    directories = {str(parent) for name in files for parent in PurePosixPath(name).parents}
    anchor_cache: dict[str, set[str]] = {}
    problems = []
    for link in links:
        where = f"{link.source}:{link.line}: {link.target!r}"
        if not link.target or _SCHEME.match(link.target):
            continue
        path, fragment = _resolve(link)
        if path not in files and path.rstrip("/") not in directories:
            problems.append(f"{where} names no tracked file or directory")
            continue
        if fragment and path.endswith(".md") and path in texts:
            if path not in anchor_cache:
                anchor_cache[path] = anchors_of(texts[path])
            if fragment not in anchor_cache[path]:
                problems.append(f"{where}: {path} has no heading #{fragment}")
    return problems


@pytest.fixture(scope="module")
def repository() -> tuple[set[str], dict[str, str]]:
    files = tracked_files()
    texts = {name: text for name in files if (text := _text(name)) is not None}
    return set(files), texts


def test_every_relative_link_resolves(repository: tuple[set[str], dict[str, str]]) -> None:
    files, texts = repository
    links = [
        link
        for name in sorted(texts)
        if name.endswith(".md")
        for link in links_of(name, texts[name])
    ]
    assert len(links) > 50, "the link scanner found almost nothing: is it broken?"
    assert link_problems(links, files, texts) == []


def test_no_file_points_outside_the_repository(
    repository: tuple[set[str], dict[str, str]],
) -> None:
    _, texts = repository
    hits = [
        f"{name}:{number}: {needle!r}"
        for name, text in sorted(texts.items())
        for number, line in enumerate(text.splitlines(), start=1)
        for needle in FORBIDDEN
        if needle in line
    ]
    assert hits == []


def test_contract_citations_name_existing_sections(
    repository: tuple[set[str], dict[str, str]],
) -> None:
    _, texts = repository
    sections = {
        m.group(1) for line in texts[CONTRACT].splitlines() if (m := _SECTION_HEADING.match(line))
    }
    assert {"1", "2", "3", "4", "4.1", "4.5", "5", "6"} <= sections
    unknown = [
        f"{name}:{number}: §{cited}"
        for name, text in sorted(texts.items())
        for number, line in enumerate(text.splitlines(), start=1)
        for match in _CITATION.finditer(line)
        for cited in re.findall(r"\d+(?:\.\d+)?", match.group(0))
        if cited not in sections
    ]
    assert unknown == []


# ---- the checker itself, on small inputs -------------------------------------------------------


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("4.5 Errors and metadata", "45-errors-and-metadata"),
        ("5. Ingest — NATS JetStream", "5-ingest--nats-jetstream"),
        ("4. gRPC API — package `inventory.ledger.v1`", "4-grpc-api--package-inventoryledgerv1"),
        ("Verification (`VerifyLedger`)", "verification-verifyledger"),
        ("Exceptions on `inventory.exceptions.<type>`", "exceptions-on-inventoryexceptionstype"),
        ("See [the guide](guide.md) now", "see-the-guide-now"),
        ("Ünïcode stays, under_score too", "ünïcode-stays-under_score-too"),
    ],
)
def test_slug_follows_github(heading: str, expected: str) -> None:
    assert slug(heading) == expected


def test_checker_reports_broken_links_and_anchors() -> None:
    guide = "# Guide\n\n## Setup\n\n## Setup\n\n```\n# not a heading\n```\n"
    readme = (
        "[ok](docs/guide.md#setup-1) [ok](docs/) [web](https://example.com/x) [self](#top)\n"
        "[gone](docs/missing.md) [bad anchor](docs/guide.md#not-a-heading)\n"
        "`[in code](nowhere.md)` [out](../elsewhere.md)\n"
        '<a name="top"></a>\n'
    )
    texts = {"README.md": readme, "docs/guide.md": guide}
    files = set(texts)
    problems = link_problems(links_of("README.md", readme), files, texts)
    assert problems == [
        "README.md:2: 'docs/missing.md' names no tracked file or directory",
        "README.md:2: 'docs/guide.md#not-a-heading': docs/guide.md has no heading #not-a-heading",
        "README.md:3: '../elsewhere.md' names no tracked file or directory",
    ]
