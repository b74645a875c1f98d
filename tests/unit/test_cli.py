"""Every step module is a command: ``--help`` explains it, and an unknown option (say a
hoped-for ``--dry-run``) is refused with one line and exit 2 before anything runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import early_result

REPO = Path(__file__).resolve().parents[2]
# Every flow module with an entry point (testflow is the user's flow, not a step).
STEP_MODULES = sorted(p.stem for p in (REPO / "flows").glob("*.py")
                      if p.stem not in ("__init__", "testflow"))


# Runs each ``python -m flows.<module> <option>`` the way ``python -m`` does (runpy, as
# __main__), all in one interpreter: a fresh one per call spent about 40 s of the fast
# lane starting Python and importing Prefect 30 times. Prints {"module option": [exit
# code, stdout, stderr]} as JSON.
ANSWER_ALL = """
import contextlib, io, json, runpy, sys, warnings
# A module another one imported already runs again as __main__, as python -m would run it.
warnings.filterwarnings("ignore", message=".*found in sys.modules after import of package", category=RuntimeWarning)
answers = {}
for call in sys.argv[1:]:
    module, option = call.split(" ")
    out, err = io.StringIO(), io.StringIO()
    code = 0
    sys.argv = [module, option]
    # The project's own modules are imported afresh for each call, as by a new python -m
    # (an import cycle only one entry point meets still shows); Prefect stays imported.
    for name in [n for n in sys.modules if n.split(".")[0] in ("flows", "stack", "blocks")]:
        del sys.modules[name]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as exited:
            if exited.code is None or isinstance(exited.code, int):
                code = exited.code or 0
            else:  # SystemExit("message"): python prints it and exits 1
                print(exited.code, file=sys.stderr)
                code = 1
    answers[call] = [code, out.getvalue(), err.getvalue()]
sys.stdout.write(json.dumps(answers))
"""


def _answers(calls: list[tuple[str, str]]) -> dict[tuple[str, str], subprocess.CompletedProcess]:
    # A state directory that does not exist: were anything to run, it would show there.
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "STACK_STATE_DIR": "/nonexistent/stack-cli-test"}
    done = subprocess.run([sys.executable, "-c", ANSWER_ALL, *(f"flows.{m} {a}" for m, a in calls)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    answered = json.loads(done.stdout)
    return {(m, a): subprocess.CompletedProcess([f"flows.{m}", a], *answered[f"flows.{m} {a}"]) for m, a in calls}


EARLY_FIXTURE = "answers"


def start_early(env: dict[str, str]) -> dict[tuple[str, str], subprocess.CompletedProcess]:
    return _answers([(m, a) for m in STEP_MODULES for a in ("--help", "--dry-run")])


@pytest.fixture(scope="module")
def answers() -> dict[tuple[str, str], subprocess.CompletedProcess]:
    return early_result(__name__, start_early)


def test_every_step_module_has_an_entry_point():
    assert {"preflight", "bake", "provision", "hosts", "configure", "restore", "register", "deploy", "smoke",
            "bootstrap", "teardown", "backup", "status", "controlplane", "serve"} <= set(STEP_MODULES)


@pytest.mark.parametrize("module", STEP_MODULES)
def test_help_explains_the_step(answers, module):
    proc = answers[(module, "--help")]
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python -m flows.{module}")
    assert len(proc.stdout.splitlines()) > 2  # the module's description follows the usage
    assert not Path("/nonexistent/stack-cli-test").exists()


@pytest.mark.parametrize("module", STEP_MODULES)
def test_unknown_option_is_refused_in_one_line(answers, module):
    proc = answers[(module, "--dry-run")]
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: python -m flows.{module}: ") and lines[0].endswith("; see --help")
    # controlplane first misses its required action; every other one names the option
    assert "unrecognized arguments: --dry-run" in lines[0] or module == "controlplane"
    assert proc.stdout == ""


def test_work_before_the_control_plane_starts_only_once_the_settings_passed(monkeypatch, tmp_path):
    """bootstrap starts its image builds through before_control_plane: never on bad settings."""
    from stack import cli

    monkeypatch.setenv("STACK_STATE_DIR", str(tmp_path))
    calls = []
    cli.main(lambda s: calls.append("step"), control_plane=False, print_result=False, command="unit-test",
             before_control_plane=lambda s: calls.append("early"))
    assert calls == ["early", "step"]
    calls.clear()
    monkeypatch.setenv("STACK_TARGET", "mars")
    with pytest.raises(SystemExit) as exited:
        cli.main(lambda s: calls.append("step"), control_plane=False, print_result=False, command="unit-test",
                 before_control_plane=lambda s: calls.append("early"))
    assert exited.value.code == 2 and calls == []


def test_early_image_builds_do_nothing_on_aws(monkeypatch):
    from stack.localcloud import bake
    from stack.settings import StackSettings

    def no_docker():
        raise AssertionError("aws needs no local image")

    monkeypatch.setattr(bake, "docker_client", no_docker)
    settings = StackSettings(target="aws", operator_cidr="203.0.113.7/32", ami_id="ami-12345678")
    assert bake.start_early_builds(settings) is None
