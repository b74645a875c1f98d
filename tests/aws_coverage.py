"""Which Python lines only the aws target reaches, and which of them no test executed.

    bin/aws-coverage [pytest arguments]     # the suite under coverage.py, then this report
    .venv/bin/python -m tests.aws_coverage  # the report of the last measured run

Every end-to-end test runs the emulated cloud (STACK_TARGET=local), so code behind a
target check that says aws runs only where a unit test calls it. This finds those
branches in the source (``if settings.target != "local":`` and the like, their ``else``
when the check says local) and lists their statements that coverage.py saw no test
execute. What remains should be calls that need a real account (see docs/aws.md).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("flows", "stack", "blocks")


def _target_test(node: ast.expr) -> str | None:
    """"aws" when ``node`` is true on the aws target only, "local" when on local only,
    None when it is not a target check (``x.target ==/!= "aws"/"local"``)."""
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.left, ast.Attribute)
            and node.left.attr == "target" and isinstance(node.comparators[0], ast.Constant)):
        return None
    value, op = node.comparators[0].value, node.ops[0]
    if value not in ("aws", "local") or not isinstance(op, (ast.Eq, ast.NotEq)):
        return None
    means_aws = (value == "aws") == isinstance(op, ast.Eq)
    return "aws" if means_aws else "local"


def _lines(body: list[ast.stmt]) -> set[int]:
    return {n.lineno for stmt in body for n in ast.walk(stmt) if isinstance(n, ast.stmt)}


def aws_only_lines(source: str) -> set[int]:
    """Statement lines of ``source`` inside a branch that only the aws target takes."""
    found: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.If):
            kind = _target_test(node.test)
            if kind == "aws":
                found |= _lines(node.body)
            elif kind == "local":
                found |= _lines(node.orelse)
    return found


@dataclass
class FileReport:
    path: str
    aws_only: set[int] = field(default_factory=set)
    missed: list[int] = field(default_factory=list)


def report(data_file: Path = REPO / ".coverage") -> list[FileReport]:
    import coverage

    cov = coverage.Coverage(data_file=str(data_file))
    cov.load()
    out = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            aws_only = aws_only_lines(path.read_text())
            if not aws_only:
                continue
            try:
                _, statements, _, missing, _ = cov.analysis2(str(path))
            except coverage.CoverageException:  # never imported by any test
                statements, missing = sorted(aws_only), sorted(aws_only)
            rel = str(path.relative_to(REPO))
            out.append(FileReport(rel, aws_only & set(statements), sorted(aws_only & set(missing))))
    return out


def main() -> int:
    reports = report()
    total = sum(len(r.aws_only) for r in reports)
    missed = sum(len(r.missed) for r in reports)
    print(f"aws-only statements: {total}, executed by a test: {total - missed}, never executed: {missed}")
    for r in reports:
        if r.missed:
            source = (REPO / r.path).read_text().splitlines()
            print(f"\n{r.path}: {len(r.missed)} of {len(r.aws_only)} never executed")
            for line in r.missed:
                print(f"  {line:5d}  {source[line - 1].strip()[:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
