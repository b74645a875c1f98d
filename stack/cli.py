"""What every ``python -m flows.<step>`` entry point shares: read settings once, point
Prefect at the control plane, and turn errors into one clear line and an exit code."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from stack.proc import StackError
from stack.settings import SettingsError, StackSettings, load_settings

T = TypeVar("T")


class StepArgumentParser(argparse.ArgumentParser):
    """argparse with the stack's error style: one line, exit 2, before anything runs."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message}; see --help\n")


def step_parser(module: str, doc: str | None) -> StepArgumentParser:
    """The parser of ``python -m <module>``: its docstring as --help, no options yet."""
    return StepArgumentParser(prog=f"python -m {module}", description=doc,
                              formatter_class=argparse.RawDescriptionHelpFormatter)


def parse_step_args(module: str, doc: str | None, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line of a step that takes no options: --help, and nothing else."""
    return step_parser(module, doc).parse_args(argv)


def main(step: Callable[[StackSettings], T], *, control_plane: bool = True, print_result: bool = True,
         command: str | None = None, before_control_plane: Callable[[StackSettings], None] | None = None) -> T:
    """Run ``step(settings)``; exit 2 on bad settings and 1 on a failed step.

    A step's typed result (a pydantic model) is printed as JSON on stdout; logs go to stderr.
    ``before_control_plane`` starts background work once the settings and inputs passed
    their checks, while the control plane starts.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        settings = load_settings()
    except SettingsError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    # The files a user edits and the machine, before anything is created or changed.
    from stack.checks import InputError, run_checks

    try:
        run_checks(settings, command or Path(sys.argv[0]).stem)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if before_control_plane is not None:
        before_control_plane(settings)
    try:
        if not control_plane:
            result = step(settings)
        else:
            from stack import controlplane

            with controlplane.client_settings(settings) as url:
                print(f"control plane: {url.removesuffix('/api')} (runs, logs and artifacts of every step)",
                      file=sys.stderr)
                result = step(settings)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    if print_result and isinstance(result, BaseModel):
        print(result.model_dump_json(indent=2))
    return result
