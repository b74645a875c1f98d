"""The versions pinned in constraints.txt: the one source of what the operator venv, the
hosts' Prefect venv and the stack's images install."""

from __future__ import annotations

import re

from stack.proc import StackError
from stack.settings import REPO_ROOT


def pinned_versions(names) -> list[str]:
    """``name==version`` for each name, read from constraints.txt."""
    pins = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    missing = [n for n in names if n not in pins]
    if missing:
        raise StackError(f"constraints.txt pins no version of {', '.join(missing)}; regenerate it")
    return [f"{n}=={pins[n]}" for n in names]


def pinned_version(name: str) -> str:
    """The version constraints.txt pins for ``name``."""
    return pinned_versions((name,))[0].partition("==")[2]
