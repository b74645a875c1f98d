"""The processes the stack starts: stack/proc.py's runner (secrets redacted, the failed command named),
byte-code caching in child Pythons, the operator's worker (its own interpreter, killed after a short grace)
and the pools' engine command. Runs real child processes (sh, python) on this machine; no network."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stack import platform
from stack.proc import CommandError, run
from tests.conftest import REPO


def test_runner_redacts_secrets_and_names_the_failed_command():
    lines = []
    run(["sh", "-c", "echo token=s3cr3t"], secrets=["s3cr3t"], on_line=lines.append)
    assert lines == ["token=****"]
    with pytest.raises(CommandError, match=r"`sh -c` failed \(exit 3\): boom"):
        run(["sh", "-c", "echo boom; exit 3"], quiet=True)


def test_every_pool_starts_flow_runs_with_the_engine_in_one_interpreter(tmp_path):
    """Without a command, Prefect 3.8's process worker starts a workspace supervisor that
    starts the engine in a second interpreter, and the Docker worker runs the whole CLI:
    each pool's template sets the engine command instead."""
    from blocks.definitions import ENGINE_COMMAND, work_pools
    from stack.settings import StackSettings

    pools = work_pools(StackSettings(state_dir=tmp_path), "stack-flow-runner:test")
    commands = {name: template["variables"]["properties"]["command"]["default"]
                for name, (_, template, _) in pools.items()}
    assert commands == dict.fromkeys(pools, ENGINE_COMMAND)
    assert ENGINE_COMMAND == "python -m prefect.engine"


def test_the_operators_worker_finds_its_own_python_first(monkeypatch, tmp_path):
    """`python` in the pools' command is the worker's virtualenv, on the operator too."""
    import subprocess
    import sys
    from pathlib import Path

    from stack import smoke
    from stack.settings import StackSettings

    seen = {}
    real_popen = subprocess.Popen

    class Started(Exception):
        pass

    def fake_popen(argv, **kwargs):
        if "worker" not in argv:  # not the worker: other code's commands (the stdlib runs `file`)
            return real_popen(argv, **kwargs)
        seen["argv"], seen["env"] = argv, kwargs["env"]
        raise Started

    monkeypatch.setattr(subprocess, "Popen", fake_popen)
    settings = StackSettings(state_dir=tmp_path)
    platform.make_stack_secrets(settings)  # a stack whose platform exists
    with pytest.raises(Started):
        with smoke.operator_worker(settings, "https://127.0.0.1:1/api", tmp_path):
            pass
    venv_bin = str(Path(sys.executable).parent)
    assert seen["env"]["PATH"].split(":")[0] == venv_bin
    assert seen["argv"][0] == str(Path(venv_bin) / "prefect")


def test_an_operators_worker_that_does_not_stop_is_killed_after_a_short_grace(monkeypatch, tmp_path):
    """Every run the operator's worker took has ended when the block exits: one that
    ignores its stop must not hold the smoke up (it once cost a cold start 15 s)."""
    import subprocess
    import sys
    import time

    from stack import smoke
    from stack.settings import StackSettings

    real_popen = subprocess.Popen
    stubborn = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                      "print('up', flush=True); time.sleep(60)"]
    monkeypatch.setattr(subprocess, "Popen",
                        lambda argv, **kwargs: real_popen(stubborn if "worker" in argv else argv, **kwargs))
    monkeypatch.setattr(smoke, "_wait_worker_online", lambda *args: time.sleep(0.5))
    settings = StackSettings(state_dir=tmp_path)
    platform.make_stack_secrets(settings)  # a stack whose platform exists
    with smoke.operator_worker(settings, "https://127.0.0.1:1/api", tmp_path) as proc:
        started = time.monotonic()
    assert proc.poll() is not None
    assert time.monotonic() - started < smoke.OPERATOR_WORKER_STOP_GRACE_SECONDS + 2


def test_the_stacks_python_processes_cache_their_byte_code_even_where_the_environment_says_not_to():
    """Where PYTHONDONTWRITEBYTECODE is set, every process of a bootstrap would compile
    Prefect again; the entry packages lift it for themselves and what they start.
    Importing the library (``stack``) changes no process environment."""
    probe = "import os, sys, {0}; print(sys.dont_write_bytecode, 'PYTHONDONTWRITEBYTECODE' in os.environ)"
    for package, lifted in (("flows", True), ("benchmarks", True), ("stack", False)):
        out = subprocess.run([sys.executable, "-c", probe.format(package)], cwd=REPO, capture_output=True,
                             text=True, check=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        assert out.stdout.split() == (["False", "False"] if lifted else ["True", "True"]), (package, out.stdout,
                                                                                             out.stderr)
