"""The README is a front door and `docs/` the manual: the README stays short, every relative link in them
resolves to a file (and heading) inside the repository, and every `make` target and `workbench` verb they
name exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
MAX_README_BYTES = 12_500

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](target "title") and ![alt](target)
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.S | re.M)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def prose(text: str) -> str:
    """The markdown without its fenced code blocks (links and headings there are not links and headings)."""
    return FENCE.sub("", text)


def code(text: str) -> list[str]:
    """The fenced code blocks and inline code spans: where commands are written."""
    return FENCE.findall(text) + CODE_SPAN.findall(prose(text))


def named(command: str, snippets: list[str]) -> set[str]:
    """The words after `command` (`make`, `workbench`) where it starts a command in `snippets`: at a line's
    start or after a space, a quote, a path's slash or a shell operator."""
    pattern = re.compile(rf"(?:^|[\s(/;&|'\"]){command}[ \t]+([a-z][\w-]*)", re.M)
    return {word for snippet in snippets for word in pattern.findall(snippet)}


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, markup and punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for heading in HEADING.findall(prose(path.read_text())):
        name, n = anchor(heading), 1
        while name in found:  # GitHub numbers repeated headings: name, name-1, name-2, ...
            name, n = f"{anchor(heading)}-{n}", n + 1
        found.add(name)
    return found


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path.read_text())) if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", (REPO / "Makefile").read_text(), re.M))


def cli_verbs() -> set[str]:
    import argparse

    from workbench.cli import build_parser

    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return set(actions[0].choices)


def test_readme_is_a_front_door():
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes; move reference material into docs/"
    first_block = FENCE.search(README.read_text())
    assert first_block is not None and first_block.start() < 2000, "the README starts with its two commands"
    commands = [line.split("#")[0].strip() for line in first_block.group().splitlines()[1:-1]]
    assert commands == ["make demo", "make test"]  # .ci/run runs the README's test command, `make test`


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve_inside_the_repository(path):
    assert path.stat().st_size > 0
    for link in relative_links(path):
        target, _, fragment = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        assert file.is_relative_to(REPO), f"{path.name}: {link} points out of the repository"
        assert file.exists(), f"{path.name}: {link} does not exist"
        if fragment and file.suffix == ".md":
            assert fragment in anchors(file), f"{path.name}: {link}: no heading #{fragment} in {file.name}"
    for span in CODE_SPAN.findall(prose(path.read_text())):  # a path named in code, as `../shared/X.md` was
        if span.startswith("../"):
            outside = not (path.parent / span).resolve().is_relative_to(REPO)
            assert not outside, f"{path.name}: `{span}` is outside the repository"


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_make_targets_and_workbench_verbs_named_exist(path):
    targets, verbs = makefile_targets(), cli_verbs()
    snippets = code(path.read_text())
    named_targets, named_verbs = named("make", snippets), named("workbench", snippets)
    assert named_targets - targets == set(), f"{path.name} names make targets the Makefile lacks"
    assert named_verbs - verbs == set(), f"{path.name} names workbench verbs the CLI lacks"
    if path == README:
        assert {"demo", "test", "setup", "stack", "fold-train"} <= named_targets
        assert {"stack", "fold-train", "submit", "import-member"} <= named_verbs


def test_the_checks_find_what_they_look_for(tmp_path):
    """The extractors on a known page: links outside code, commands inside code, GitHub's anchors."""
    page = tmp_path / "page.md"
    page.write_text(
        "# The `workbench` command\n## Past one GPU: a 4-GPU box\n[a](other.md#x) ![b](img.jpg) [c](https://x.org)\n"
        "run `make stack CONFIG=c.yaml` or `.venv/bin/workbench fold-train --config c`\n"
        "```bash\nmake demo   # [not a link](nowhere.md)\nworkbench stack --config c\n```\n"
        "the Carvana workbench for ensembling; make sure\n"
    )
    text = page.read_text()
    assert relative_links(page) == ["other.md#x", "img.jpg"]
    assert anchors(page) == {"the-workbench-command", "past-one-gpu-a-4-gpu-box"}
    assert named("make", code(text)) == {"stack", "demo"}
    assert named("workbench", code(text)) == {"fold-train", "stack"}
    assert {"demo", "test", "stack"} <= makefile_targets() and {"stack", "demo", "score"} <= cli_verbs()
