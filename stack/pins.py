"""The versions pinned in constraints.txt: the one source of what the operator venv, the
hosts' Prefect venv and the stack's images install.

The platform (the hosts' Prefect virtualenv and the flow-runner image) may run another
Prefect than the operator's (STACK_PREFECT_VERSION, for an upgrade): its pins then come
from that version's lock, ``locks/prefect-<version>.txt``, which ``bin/lock-prefect``
writes; the pinned version's lock is constraints.txt itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from stack.proc import StackError
from stack.settings import REPO_ROOT

CONSTRAINTS = REPO_ROOT / "constraints.txt"
LOCKS_DIR = REPO_ROOT / "locks"


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def _pins(constraints: Path) -> dict[str, str]:
    """Canonical package name -> its exact pin (``==``), from a constraints file."""
    pins = {}
    name = _shown(constraints)
    for number, line in enumerate(constraints.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()  # uv's "# via ..." notes
        if not line or line.startswith("-"):  # blank, or an option such as --index-url
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise StackError(f"{name} line {number} is not a requirement ({exc}); regenerate it") from None
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            pins[canonicalize_name(req.name)] = exact[0]
    return pins


def pinned_versions(names, constraints: Path | None = None) -> list[str]:
    """``name==version`` for each name, read from ``constraints`` (default constraints.txt;
    or a platform lock: ``platform_constraints``)."""
    constraints = constraints or CONSTRAINTS
    pins = _pins(constraints)
    missing = [n for n in names if canonicalize_name(n) not in pins]
    if missing:
        raise StackError(f"{_shown(constraints)} pins no version of {', '.join(missing)}; regenerate it")
    return [f"{n}=={pins[canonicalize_name(n)]}" for n in names]


def pinned_prefect() -> str:
    """The Prefect version constraints.txt pins (the operator's, and the platform's default)."""
    return pinned_versions(("prefect",))[0].split("==")[1]


def lock_file(version: str) -> Path:
    """Where the lock of a platform on Prefect ``version`` lives (bin/lock-prefect writes it)."""
    return LOCKS_DIR / f"prefect-{version}.txt"


def platform_constraints(version: str) -> Path:
    """The constraints file of a platform on Prefect ``version``: constraints.txt for the
    pinned version, else that version's lock (the settings refuse a version without one)."""
    return CONSTRAINTS if version == pinned_prefect() else lock_file(version)



# What the platform's Prefect virtualenvs hold: the hosts' (the server and the workers)
# and, of these, the flow-runner image's. The caps keep the server off releases that
# break it quietly (fastapi 0.151 answers 422, SQLAlchemy 2.1 schedules no runs).
# prefect-redis: the multi-server mode's messaging, ordering, leases (STACK_SERVER_COUNT);
# installed everywhere so that one lock serves every host, unused with one server host.
PLATFORM_PACKAGES = ("prefect", "prefect-aws", "prefect-docker", "s3fs", "docker", "prefect-redis")
PLATFORM_CAPS = ("fastapi<0.151", "sqlalchemy<2.1")
# The hosts and the flow-runner image run Debian 12's python3.
PLATFORM_PYTHON = "3.11"


def write_lock(version: str) -> Path:
    """Resolve the platform's packages on Prefect ``version`` (with the caps) into its
    lock file, with the operator venv's uv; the file to commit."""
    if version == pinned_prefect():
        raise StackError(f"Prefect {version} is the pinned version: constraints.txt is its lock")
    requirements = [f"prefect=={version}", *PLATFORM_PACKAGES[1:], *PLATFORM_CAPS]
    out = lock_file(version)
    out.parent.mkdir(exist_ok=True)
    # An existing lock's pins are kept where they still fit (uv prefers the versions of
    # its output file): to keep a former pin's versions, copy constraints.txt there first.
    with tempfile.NamedTemporaryFile("w", suffix=".in") as source:
        source.write("\n".join(requirements) + "\n")
        source.flush()
        done = _compile(["--python-version", PLATFORM_PYTHON, source.name], out)
    if done.returncode != 0:
        out.unlink(missing_ok=True)
        raise StackError(f"Prefect {version} does not resolve with {', '.join(PLATFORM_CAPS)}: {_last_line(done)}")
    out.write_text(f"# The platform's pins on Prefect {version} (STACK_PREFECT_VERSION={version}):\n"
                   f"# written by bin/lock-prefect {version}; do not edit.\n" + out.read_text())
    return out


def _compile(args: list[str], output: Path) -> subprocess.CompletedProcess:
    """``uv pip compile`` with the operator venv's uv, trusting the system CA store (an
    intercepting proxy's CA is there)."""
    uv = Path(sys.executable).parent / "uv"
    return subprocess.run([str(uv), "pip", "compile", "--quiet", "--python-platform", "linux", "--no-header",
                           "-o", str(output), *args],
                          capture_output=True, text=True, env={**os.environ, "UV_SYSTEM_CERTS": "1"}, cwd=REPO_ROOT)


def _last_line(done: subprocess.CompletedProcess) -> str:
    err = done.stderr.strip().splitlines()
    return err[-1] if err else "no message"


def write_constraints(output: Path = CONSTRAINTS, upgrade: bool = False) -> Path:
    """Regenerate constraints.txt (``bin/lock``): pyproject.toml's dependencies and every
    extra (dev; hosts and emulator, which only the hosts and images install) resolved for this Python (the operator's), then checked against the hosts'
    Python: the platform's packages must resolve there with the same pins, since the hosts'
    virtualenv and the flow-runner image install from this file too. Nothing is replaced
    unless both resolve. The current pins are kept wherever they still fit (uv prefers
    the versions of an existing output file), so a changed pyproject.toml moves only what
    it must; ``upgrade`` resolves every package anew. Returns the file written."""
    new = output.with_name(output.name + ".new")
    new.unlink(missing_ok=True)
    if output.exists() and not upgrade:
        shutil.copy(output, new)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    done = _compile(["--python-version", python, "--no-annotate", "--all-extras", "pyproject.toml"], new)
    if done.returncode != 0:
        new.unlink(missing_ok=True)
        raise StackError(f"pyproject.toml's dependencies do not resolve on Python {python}: {_last_line(done)}")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "platform.in"
        source.write_text("\n".join([*PLATFORM_PACKAGES, *PLATFORM_CAPS]) + "\n")
        hosts = _compile(["--python-version", PLATFORM_PYTHON, "-c", str(new), str(source)], Path(tmp) / "out.txt")
    if hosts.returncode != 0:
        new.unlink(missing_ok=True)
        raise StackError(f"with the new pins, the platform's packages do not resolve on the hosts' Python "
                         f"{PLATFORM_PYTHON}: {_last_line(hosts)}; constraints.txt is unchanged")
    new.replace(output)
    return output
