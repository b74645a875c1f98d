"""The versions pinned in constraints.txt: the one source of what the operator venv, the
hosts' Prefect venv and the stack's images install."""

from __future__ import annotations

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from stack.proc import StackError
from stack.settings import REPO_ROOT

CONSTRAINTS = REPO_ROOT / "constraints.txt"


def _pins() -> dict[str, str]:
    """Canonical package name -> its exact pin (``==``), from constraints.txt."""
    pins = {}
    for number, line in enumerate(CONSTRAINTS.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()  # uv's "# via ..." notes
        if not line or line.startswith("-"):  # blank, or an option such as --index-url
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise StackError(f"constraints.txt line {number} is not a requirement ({exc}); regenerate it") from None
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            pins[canonicalize_name(req.name)] = exact[0]
    return pins


def pinned_versions(names) -> list[str]:
    """``name==version`` for each name, read from constraints.txt."""
    pins = _pins()
    missing = [n for n in names if canonicalize_name(n) not in pins]
    if missing:
        raise StackError(f"constraints.txt pins no version of {', '.join(missing)}; regenerate it")
    return [f"{n}=={pins[canonicalize_name(n)]}" for n in names]

