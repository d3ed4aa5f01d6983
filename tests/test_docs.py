"""The documentation stays true: the command reference matches ``snapctl --help``,
every relative link resolves, and every test the docs cite exists.

The reference is checked against click's command tree (the same objects
``--help`` prints), so a new command or option fails here until
docs/reference.md describes it; each failure says what to add where.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import click

from reconciler.cli import cli

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference.md"
HELP_OPTIONS = {"-h", "--help"}

OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
COMMAND_HEADING = re.compile(r"^(#{2,6}) `(snapctl(?: [a-z][a-z0-9-]*)*)`\s*$")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


# -- the command tree --------------------------------------------------------


def command_tree() -> dict[str, set[str]]:
    """``"snapctl state list"`` -> its long options, for every command and group."""
    tree: dict[str, set[str]] = {}

    def walk(command: click.Command, path: str, ctx: click.Context) -> None:
        tree[path] = {
            name
            for param in command.params
            if isinstance(param, click.Option) and not param.hidden
            for name in (*param.opts, *param.secondary_opts)
            if name.startswith("--") and name not in HELP_OPTIONS
        }
        if isinstance(command, click.Group):
            sub_ctx = click.Context(command, parent=ctx, info_name=path.rsplit(" ", 1)[-1])
            for name in command.list_commands(sub_ctx):
                sub = command.get_command(sub_ctx, name)
                if sub is not None and not sub.hidden:
                    walk(sub, f"{path} {name}", sub_ctx)

    walk(cli, "snapctl", click.Context(cli, info_name="snapctl"))
    return tree


# -- markdown ------------------------------------------------------------------


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text()):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def documents() -> list[Path]:
    pages = [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "CHANGELOG.md", ROOT / "manifests" / "README.md"]
    return [page for page in pages if page.exists()] + sorted((ROOT / "docs").rglob("*.md"))


# -- the reference ---------------------------------------------------------------


def reference_sections() -> tuple[dict[str, list[tuple[int, str]]], list[tuple[int, str]]]:
    """The lines of each ``### `snapctl …` `` section, and the lines outside any."""
    sections: dict[str, list[tuple[int, str]]] = {}
    outside: list[tuple[int, str]] = []
    current: list[tuple[int, str]] = outside
    for number, line in prose_lines(REFERENCE.read_text()):
        heading = COMMAND_HEADING.match(line)
        if heading:
            current = sections.setdefault(heading.group(2), [])
        elif line.startswith("#"):
            current = outside  # a heading that names no command ends the section
        else:
            current.append((number, line))
    return sections, outside


def named_options(lines: list[tuple[int, str]], default: str | None, tree: dict[str, set[str]]):
    """(line, option, command it is named for) of every option in the lines. An
    option in a code span that starts with a command (`apply --refresh`,
    `snapctl state migrate --to`) belongs to that command; any other to
    ``default`` (None: to whichever command has it)."""
    for number, line in lines:
        rest = line
        for span in CODE_SPAN.findall(line):
            words = span.split()
            if words and words[0] == "snapctl":
                words = words[1:]
            owner = default
            for size in range(len(words), 0, -1):
                candidate = " ".join(["snapctl", *words[:size]])
                if candidate in tree:
                    owner = candidate
                    break
            for option in OPTION.findall(span):
                yield number, option, owner
            rest = rest.replace(f"`{span}`", " ", 1)
        for option in OPTION.findall(rest):
            yield number, option, default


def test_every_command_and_option_is_in_the_reference():
    tree = command_tree()
    sections, _ = reference_sections()
    problems = []
    for command, options in sorted(tree.items()):
        if command not in sections:
            level = "#" * min(2 + command.count(" "), 6)
            listed = ", ".join(f"`{o}`" for o in sorted(options)) or "no options"
            problems.append(
                f"docs/reference.md has no section for `{command}`: add a heading "
                f"'{level} `{command}`' under '## Commands' (beside its siblings) saying what it does, "
                f"with its options: {listed}"
            )
            continue
        text = "\n".join(line for _, line in sections[command])
        mentioned = set(OPTION.findall(text))
        for option in sorted(options - mentioned):
            problems.append(
                f"docs/reference.md, section '`{command}`': `{option}` is not mentioned: "
                f"add it there (what it does and its default; `{command} --help` shows them)"
            )
    assert not problems, "\n".join(problems)


def option_lists(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The lines of a section that list its command's own options: the paragraphs that
    start with "Options:" or "Also the [shared options]", and the list items that start
    with an option (``- `--out FILE` saves…``): only their first option."""
    listed, in_list = [], False
    for number, line in lines:
        if not line.strip():
            in_list = False
        elif line.startswith(("Options:", "Also the [shared options]")):
            in_list = True
        item = re.match(r"^- `(--[a-z][a-z0-9-]*)", line)
        if in_list:
            listed.append((number, line))
        elif item:
            listed.append((number, item.group(1)))
    return listed


def test_every_command_and_option_in_the_reference_exists():
    """A section names a command that exists; its option lists name only that command's
    options; any other option the page names belongs to the command its code span
    starts with (`apply --refresh`), or else to some command."""
    tree = command_tree()
    every_option = set().union(*tree.values()) | HELP_OPTIONS
    sections, outside = reference_sections()
    problems = [
        f"docs/reference.md has a section '`{command}`' but there is no such command "
        f"(commands: {', '.join(sorted(tree))}): rename or remove it"
        for command in sorted(sections)
        if command not in tree
    ]
    checks = [(option_lists(lines), command) for command, lines in sections.items() if command in tree]
    checks += [(lines, None) for command, lines in sections.items()] + [(outside, None)]
    reported = set()
    for lines, default in checks:
        for number, option, owner in named_options(lines, default, tree):
            known = every_option if owner is None else tree[owner] | HELP_OPTIONS
            if option not in known and (number, option) not in reported:
                reported.add((number, option))
                where = f"`{owner}`" if owner else "any command"
                problems.append(f"docs/reference.md:{number}: `{option}` is not an option of {where}: fix or remove it")
    assert not problems, "\n".join(problems)


# -- links -------------------------------------------------------------------------


def test_every_relative_link_resolves():
    problems = []
    for page in documents():
        for number, line in prose_lines(page.read_text()):
            for target in LINK.findall(CODE_SPAN.sub("", line)):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                    continue
                file_part, _, anchor = target.partition("#")
                resolved = (page.parent / file_part).resolve() if file_part else page
                where = f"{page.relative_to(ROOT)}:{number}"
                if not resolved.exists():
                    problems.append(f"{where}: link {target!r}: {file_part} does not exist")
                elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                    problems.append(
                        f"{where}: link {target!r}: no heading in {resolved.relative_to(ROOT)} "
                        f"has the anchor #{anchor} (headings give GitHub anchors: "
                        f"lower case, punctuation dropped, spaces to hyphens)"
                    )
    assert not problems, "\n".join(problems)


# -- cited tests ----------------------------------------------------------------------


def functions_by_test_file() -> dict[str, set[str]]:
    """tests/FILE.py -> the names of its test functions."""
    found = {}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        found[f"tests/{path.name}"] = {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
        }
    return found


def test_every_cited_test_exists():
    """`tests/FILE.py::test_name` names a test of that file; `::test_name` one of the
    file named last before it; `tests/FILE.py` alone a file that exists."""
    functions = functions_by_test_file()
    everywhere = set().union(*functions.values())
    problems = []
    for page in documents():
        last_file = None
        text = page.read_text()
        for match in re.finditer(
            r"((?:tests/)?test_\w+\.py)?::(test_\w+)|((?:tests/)?test_\w+\.py)|\b(test_\w+)\b", text
        ):
            number = text.count("\n", 0, match.start()) + 1
            where = f"{page.relative_to(ROOT)}:{number}"
            file_, name, bare_file, bare_name = match.groups()
            if bare_file or file_:
                last_file = "tests/" + (bare_file or file_).removeprefix("tests/")
                if last_file not in functions:
                    problems.append(f"{where}: {last_file} does not exist")
                    continue
            if name:
                in_file = functions.get(last_file or "", set())
                if name not in in_file:
                    problems.append(f"{where}: {last_file}::{name} does not exist (renamed? cite its new name)")
            elif bare_name and page.name == "guarantees.md" and bare_name not in everywhere:
                problems.append(f"{where}: {bare_name} is no test in tests/")
    assert not problems, "\n".join(problems)


# -- cited files ----------------------------------------------------------------------


def test_every_cited_file_of_the_project_exists():
    """A path into the project (`reconciler/plan/planner.py`, `bench/startup.py`, `deploy/`)
    names a file or folder that exists: modules move, and the pages that cite them must follow.
    The changelog is history and keeps the names of its time."""
    cited = re.compile(r"(?<![\w./-])((?:reconciler|bench|deploy|docs|tests)/[\w./-]*[\w/])")
    problems = []
    for page in documents():
        if page.name == "CHANGELOG.md":
            continue
        text = page.read_text()
        for match in cited.finditer(text):
            path = match.group(1)
            if "*" in path or not (ROOT / path).exists():
                number = text.count("\n", 0, match.start()) + 1
                problems.append(f"{page.relative_to(ROOT)}:{number}: {path} does not exist")
    assert not problems, "\n".join(problems)
