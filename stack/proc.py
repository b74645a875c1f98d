"""One way to run a subprocess: stream its output to the current logger, redact secrets,
and raise an error that names the command and why it failed.

Why not prefect-shell's ``ShellOperation``, which also streams a command's output to the
run's logs: every command a step runs needs what it lacks. ``prefect deploy`` and
Ansible get the platform's auth string in their environment, and their output is
redacted line by line before it reaches a log (the stack's rule: no secret in a log);
Terraform's ``-json`` output is parsed line by line (``on_line``) into the plan and its
errors; ``pg_dump`` streams binary data. So the project does not
depend on prefect-shell."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


class StackError(RuntimeError):
    """An error the operator can act on; its message says what failed and what to do.
    ``exit_code``: 1 for a failed step, 2 for a request refused before anything changed."""

    exit_code = 1


class CommandError(StackError):
    """A subprocess failed. ``message`` is the tool's own explanation when known."""

    def __init__(self, argv: Sequence[str], returncode: int, message: str, transient: bool = False):
        self.argv = list(argv)
        self.returncode = returncode
        self.message = message
        self.transient = transient
        name = " ".join(self.argv[:2])
        super().__init__(f"`{name}` failed (exit {returncode}): {message}")


def get_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a flow or task run; a plain logger elsewhere."""
    try:
        from prefect.exceptions import MissingContextError
        from prefect.logging import get_run_logger

        try:
            return get_run_logger()
        except MissingContextError:
            pass
    except ImportError:  # pragma: no cover - prefect is a hard dependency
        pass
    # Under "prefect." so that Prefect's console handler prints it (e.g. from a background
    # thread of a flow, which has no run context).
    return logging.getLogger("prefect.stack")


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "****")
    return text


@dataclass
class Completed:
    argv: list[str]
    returncode: int
    lines: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run(
    argv: Sequence[str],
    *,
    cwd: Path | str | None = None,
    env: dict[str, str] | None = None,
    secrets: Iterable[str] = (),
    ok_codes: Iterable[int] = (0,),
    on_line: Callable[[str], None] | None = None,
    quiet: bool = False,
) -> Completed:
    """Run ``argv``; each output line goes to ``on_line`` or the logger, secrets redacted.

    Raises CommandError when the exit code is not in ``ok_codes``; its message is the last
    lines of output.
    """
    logger = get_logger()
    secrets = [s for s in secrets if s]
    full_env = {**os.environ, **(env or {})}
    started = time.monotonic()
    lines: list[str] = []
    tail: deque[str] = deque(maxlen=15)
    try:
        proc = subprocess.Popen(
            list(argv), cwd=cwd, env=full_env, text=True, bufsize=1,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
    except FileNotFoundError:
        raise StackError(f"`{argv[0]}` is not installed or not on PATH; run bin/setup") from None
    assert proc.stdout
    for raw in proc.stdout:
        line = redact(raw.rstrip("\n"), secrets)
        lines.append(line)
        tail.append(line)
        if on_line:
            on_line(line)
        elif not quiet:
            logger.info("%s", line)
    rc = proc.wait()
    done = Completed(list(argv), rc, lines, time.monotonic() - started)
    if rc not in tuple(ok_codes):
        raise CommandError(argv, rc, "\n".join(tail).strip() or "no output")
    return done
