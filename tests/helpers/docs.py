"""Claims the docs make, read from their markdown: sections, tables, statuses, JSON examples."""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The pages that describe medflow to its users.
USER_DOCS = (
    ROOT / "README.md",
    ROOT / "deploy" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
)

ERROR_STATUSES = frozenset(s.value for s in HTTPStatus if s >= 400)


def section(text: str, heading: str) -> str:
    """The text under the markdown heading line `heading` (e.g. "## Errors"), up to the next
    heading of the same or a higher level; raises KeyError when there is no such heading."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text.splitlines()
    try:
        start = lines.index(heading) + 1
    except ValueError:
        raise KeyError(heading) from None
    end = next(
        (
            i
            for i in range(start, len(lines))
            if re.match(rf"#{{1,{level}}} ", lines[i]) and not _in_fence(lines[:i])
        ),
        len(lines),
    )
    return "\n".join(lines[start:end])


def _in_fence(lines: list[str]) -> bool:
    return sum(line.lstrip().startswith("```") for line in lines) % 2 == 1


def serving_error_table(root: Path = ROOT) -> dict[str, int]:
    """error code -> HTTP status, from the table under "## Errors" in docs/serving.md."""
    codes: dict[str, int] = {}
    for line in section((root / "docs" / "serving.md").read_text(), "## Errors").splitlines():
        row = re.match(r"\|\s*(\d{3})\s*\|([^|]*)\|", line)
        if row:
            for code in re.findall(r"`([a-z_]+)`", row.group(2)):
                codes[code] = int(row.group(1))
    return codes


def status_claims(text: str, codes: set[str]) -> dict[str, set[int]]:
    """code -> the HTTP statuses `text` gives it: each `code` (of `codes`, in backticks) counts
    for the last error status (a number that is an HTTP 4xx/5xx) before it in its paragraph,
    as in "415 for a file that is not DICOM (`not_dicom`)" or a table row "| 415 | `not_dicom` |".
    Fenced code blocks are left out."""
    claims: dict[str, set[int]] = {}
    text = re.sub(r"```.*?```", "\n\n", text, flags=re.DOTALL)
    for paragraph in re.split(r"\n\s*\n", text):
        status = None
        for token in re.finditer(r"`([a-z_]+)`|\b(\d{3})\b", paragraph):
            if token.group(2) and int(token.group(2)) in ERROR_STATUSES:
                status = int(token.group(2))
            elif token.group(1) in codes and status is not None:
                claims.setdefault(token.group(1), set()).add(status)
    return claims


def json_examples(text: str) -> list[object]:
    """The parsed contents of every ```json fenced block of `text`, in order."""
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, re.DOTALL)]


def repo_paths(text: str) -> set[str]:
    """The paths into the repository's code folders that `text` names (src/..., flows/...,
    tests/..., benchmarks/..., deploy/..., docs/*.md, docs/decisions/...), without a trailing
    full stop. A path inside another (data/validation/docs/...) is not one of them, nor one
    under docs/ that is no page (the Data Docs' own docs/ folder)."""
    found = re.findall(
        r"(?<![\w./<-])((?:src|flows|tests|benchmarks|deploy|docs)/[\w./-]*[\w/])", text
    )
    return {
        p for p in found if not p.startswith("docs/") or re.match(r"docs/(.*\.md$|decisions)", p)
    }


def module_names(text: str) -> set[str]:
    """The Python names `text` gives: under medflow (medflow.x, medflow.x.y.Attr, ...) and
    every module run by `python -m`."""
    names = re.findall(r"(?<![\w.])(medflow(?:\.[A-Za-z_]\w*)+)", text)
    return {*names, *re.findall(r"python -m ([A-Za-z_][\w.]*\w)", text)}


def medflow_commands(text: str) -> list[list[str]]:
    """Each `medflow ...` command line of `text` (in code spans and code blocks), as words up to
    a shell operator or comment; brackets of optional parts dropped."""
    spans = re.findall(r"```[a-z]*\n(.*?)```", text, re.DOTALL)
    spans += re.findall(r"(?<!`)`([^`\n]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
    commands = []
    for span in spans:
        for line in span.splitlines():
            line = re.split(r"(?:^|\s)#", line)[0]  # not a shell comment
            for match in re.finditer(r"(?:^|[\s(=$])(?:\S*/)?medflow((?: [^\s|;&#)`]+)*)", line):
                words = [w.strip("[]") for w in match.group(1).split()]
                commands.append([w for w in words if w])
    return commands
