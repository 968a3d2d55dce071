"""The documents a newcomer reads: every relative link and every repository path they name
resolves inside the repository, none points outside it (no notes that only the authors have),
and every ``meshlet ...`` command they show parses with the real CLI parser (the subcommand and
its flags exist)."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from control_plane.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[3]
DOCS = sorted(
    [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *(ROOT / "docs").glob("*.md"),
     *(ROOT / "loadtests").glob("*.md"), *(ROOT / "configs").rglob("*.md")]
)
IDS = [str(p.relative_to(ROOT)) for p in DOCS]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
TOP = ("proxy", "control_plane", "certs", "configs", "tests", "loadtests", "docs")
REPO_PATH = re.compile(rf"^(?:{'|'.join(TOP)})/[\w./-]*$")
OUTSIDE = re.compile(r"\.\./shared|\bresearch/|perf-anchors|security-ops\.md|CONTRACT\.md")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {slug(m[1]) for m in re.finditer(r"^#{1,6} +(.+)$", text, re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_relative_links_resolve_inside_the_repository(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    bad = []
    for target in LINK.findall(FENCE.sub("", text)):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not ours to check offline
        path, _, frag = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.is_relative_to(ROOT):
            bad.append(f"{target}: outside the repository")
        elif not dest.exists():
            bad.append(f"{target}: no such file")
        elif frag and dest.suffix == ".md" and frag not in anchors(dest):
            bad.append(f"{target}: no heading #{frag} in {dest.relative_to(ROOT)}")
    assert not bad, bad


@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_named_paths_exist_and_nothing_points_outside(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    outside = [ln.strip() for ln in text.splitlines() if OUTSIDE.search(ln)]
    assert not outside, outside
    missing = []
    for span in CODE_SPAN.findall(FENCE.sub("", text)):
        span = span.strip()
        placeholder = re.search(r"(?:^|[/_.])[A-Z]+(?:[/_.]|$)", span)  # proxy/pkg/_X_py.py
        if REPO_PATH.match(span) and not placeholder and "*" not in span \
                and not (ROOT / span).exists():
            missing.append(span)
    assert not missing, missing


def commands(text: str) -> list[str]:
    """Every ``meshlet ...`` command a document shows, in code blocks and inline code."""
    found = []
    for block in FENCE.findall(text):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = re.sub(r"^\s*\$ ", "", line)
            found += _meshlet_parts(line)
    for span in CODE_SPAN.findall(FENCE.sub("", text)):
        found += [c if " " in c.split(" ", 1)[1] else c + " --help"  # `meshlet get`: the name
                  for c in _meshlet_parts(span)]
    return found


def _meshlet_parts(line: str) -> list[str]:
    line = re.sub(r"\s+#.*$", "", line)  # a trailing shell comment
    out = []
    for part in re.split(r"\s*(?:;|&&|\|\||\|)\s*", line):
        part = re.sub(r"\s+\d?>>?\s*(?:&\d|\S+)|\s+<\s*\S+", "", part.strip())  # redirections
        # `meshlet` then something shaped like a subcommand or flag (not `meshlet / envoy` in
        # a table of benchmark output)
        if re.match(r"meshlet +-{0,2}[a-z][a-z-]*(?: |$)", part):
            out.append(part)
    return out


def is_synopsis(cmd: str) -> bool:
    """A usage line (``meshlet get KIND [NAME]``), not a command to run: placeholders in
    capitals, brackets or alternatives."""
    return bool(re.search(r"\[|\]|\.\.\.|…|\b[A-Z]{2,}\b(?![=:])|[()]", cmd))


def synopsis_errors(parser: argparse.ArgumentParser, cmd: str) -> list[str]:
    """A usage line's subcommand (and sub-subcommand) and every flag it names must exist."""
    words = cmd.split()[1:]
    p = parser
    while words and not words[0].startswith("-"):
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            break
        if words[0] not in subs[0].choices:
            return [f"{cmd}: no command {words[0]!r}"]
        p = subs[0].choices[words.pop(0)]
    flags = re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", " ".join(words))
    return [f"{cmd}: no flag {f}" for f in flags if f not in p._option_string_actions]


@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_meshlet_commands_parse(doc: Path) -> None:
    parser, _ = build_parser()
    bad = []
    for cmd in commands(doc.read_text(encoding="utf-8")):
        if is_synopsis(cmd) or "$(" in cmd:
            bad += synopsis_errors(parser, cmd)
            continue
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(shlex.split(cmd)[1:])
        except SystemExit as e:
            if e.code:
                bad.append(f"{cmd}: {err.getvalue().strip().splitlines()[-1]}")
    assert not bad, bad


def test_the_checker_sees_the_commands() -> None:
    """The extraction itself: the README's commands are found, synopses are told apart."""
    cmds = commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert "meshlet demo" in cmds
    assert any(c.startswith("meshlet proxy-config routes ") for c in cmds)
    assert is_synopsis("meshlet get KIND [NAME]") and not is_synopsis("meshlet get vs -o yaml")
    parser, _ = build_parser()
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        parser.parse_args(["demo", "--no-such-flag"])
    assert synopsis_errors(parser, "meshlet token create --service NAME [--ttl 1h]") == []
    assert synopsis_errors(parser, "meshlet get KIND [--colour C]") == [
        "meshlet get KIND [--colour C]: no flag --colour"]
    assert synopsis_errors(parser, "meshlet gett KIND") == ["meshlet gett KIND: no command 'gett'"]
