"""The Markdown files read as documentation: links resolve inside the repository, the README stays short.

Reads README.md, SECURITY.md, docs/*.md and the TypeScript client's README as text. A relative link
must name a file of the repository (and, with `#anchor`, a heading of that file, slugged as GitHub
does); nothing may point beside the repository (`../shared/...`), which a reader of a clone does not
have. Text inside code blocks and code spans is not a link.
"""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 400
DOCUMENTS = sorted(
    [REPO / "README.md", REPO / "SECURITY.md", REPO / "clients" / "typescript" / "README.md", *(REPO / "docs").glob("*.md")]
)
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)
# How or when the repository was worked on belongs in `git log`, not in its prose.
DIARY = re.compile(r"\bissue \d+|\b(?:first|second|third|fourth|fifth|sixth|this|previous|earlier|later|next) "
                   r"session\b|\b(?:slower|faster) hour\b|\b20\d\d-\d\d-\d\d\b", re.I)


def prose(text: str) -> str:
    """The text without fenced code blocks and code spans."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's `-1`, `-2` suffixes for repeats."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[str]:
    """The targets of the inline links, images and reference definitions of a Markdown file."""
    text = prose(path.read_text())
    return INLINE_LINK.findall(text) + REFERENCE.findall(text)


def broken(path: Path, target: str) -> str | None:
    """Why a link target does not resolve inside the repository, or None."""
    if SCHEME.match(target) or target.startswith("//"):
        return None
    file_part, _, anchor = target.partition("#")
    resolved = (path.parent / unquote(file_part)).resolve() if file_part else path
    if not resolved.is_relative_to(REPO):
        return "points outside the repository"
    if not resolved.exists():
        return "no such file"
    if anchor and resolved.suffix == ".md" and unquote(anchor).lower() not in anchors(resolved):
        return f"no heading #{anchor} in {resolved.relative_to(REPO)}"
    return None


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve_inside_the_repository(path):
    problems = [(target, why) for target in links(path) if (why := broken(path, target))]
    assert not problems, f"{path.relative_to(REPO)}: {problems}"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_nothing_points_beside_the_repository(path):
    lines = [n for n, line in enumerate(path.read_text().splitlines(), 1) if "../shared" in line]
    assert not lines, f"{path.relative_to(REPO)} names ../shared on lines {lines}"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_no_diary_in_the_prose(path):
    found = sorted({match.group(0) for match in DIARY.finditer(path.read_text())})
    assert not found, f"{path.relative_to(REPO)} tells how or when it was worked on: {found}"


def test_readme_is_short():
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the rest belongs in docs/"


def test_the_checks_see_what_they_check():
    """The link reader finds links and anchors in the forms the documents use, and skips code."""
    page = REPO / "docs" / "x.md"
    text = "# A `code` title: yes\n[a](../README.md#configuration) ![i](images/web.png) `[no](nowhere.md)`\n"
    assert slug("A `code` title: yes") == "a-code-title-yes"
    assert INLINE_LINK.findall(prose(text)) == ["../README.md#configuration", "images/web.png"]
    assert broken(page, "../README.md#configuration") is None
    assert broken(page, "../README.md#no-such-heading") is not None
    assert broken(page, "nowhere.md") == "no such file"
    assert broken(page, "../../shared/API.md") == "points outside the repository"
    assert broken(page, "https://example.com/x") is None
