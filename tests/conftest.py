"""Shared test fixtures.

The end-to-end tests build one stack per session on the emulated cloud, with its own
name prefix, state directory and ports, so they never touch a stack a user has running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

import stack

stack.cache_byte_code()  # the tests' processes cache their byte-code (stack/__init__.py)

REPO = Path(__file__).resolve().parent.parent

# The test stack: everything differs from the defaults a user's stack has.
TEST_STACK_ENV = {
    "STACK_NAME_PREFIX": "p2test",
    "STACK_STATE_DIR": str(REPO / ".stack-test"),
    "STACK_EMULATOR_PORT": "4666",
    "STACK_CONTROL_PLANE_PORT": "4300",
    "STACK_PLATFORM_PORT": "4301",
    "STACK_LOAD_BALANCER_PORT": "4302",
    "STACK_CONFIG_FILE": "/nonexistent/stack.toml",  # a user's stack.toml must not leak in
    "STACK_NIGHTLY_TEARDOWN_CRON": "",  # no scheduled teardown in the middle of a test run
    # The server host's backup timer stays armed (a test checks it), on a day no test run
    # meets: a backup of its own in the middle of a test would be the "latest" one.
    "STACK_BACKUP_CRON": "0 2 29 2 *",
}


def clean_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The process environment (or ``base``) without any STACK_* of the user's, plus ``extra``."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.startswith("STACK_") and k != "PREFECT_API_URL"}
    env.update(extra)
    return env


def run_step(module: str, *args: str, env: dict[str, str] | None = None, check: bool = True,
             timeout: float = 1800, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run ``python -m <module>`` the way a user does (in ``cwd``, a copy of the repository
    if given); stdout holds its JSON result."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env or clean_env(**TEST_STACK_ENV),
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )
    # Where a slow test spends its time (shown with -s, or with a failure's captured output).
    print(f"[step] python -m {module} {' '.join(args)}: {time.monotonic() - started:.1f} s, exit {proc.returncode}",
          file=sys.stderr)
    if check and proc.returncode != 0:
        pytest.fail(f"python -m {module} exited {proc.returncode}\n--- stderr tail ---\n{proc.stderr[-4000:]}")
    return proc


def result_json(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def test_settings():
    from stack.settings import StackSettings

    # Build from the test environment only, whatever the developer's shell holds.
    env = TEST_STACK_ENV
    return StackSettings(
        name_prefix=env["STACK_NAME_PREFIX"], state_dir=Path(env["STACK_STATE_DIR"]),
        emulator_port=int(env["STACK_EMULATOR_PORT"]), control_plane_port=int(env["STACK_CONTROL_PLANE_PORT"]),
        platform_port=int(env["STACK_PLATFORM_PORT"]), load_balancer_port=int(env["STACK_LOAD_BALANCER_PORT"]),
        backup_cron=env["STACK_BACKUP_CRON"],
    )


def discard_test_stack(settings) -> None:
    """The test stack gone, without a teardown: its control plane stopped, its host
    containers and their volumes, the images of its baked AMIs, its data volume, the emulator (the cloud, Terraform's
    state, the backups and the secrets live there) and its state directory emptied. Only
    what carries the test stack's prefix. ``flows.teardown --all`` took about 100 s of
    Terraform for the same end; test_teardown tests the real teardown."""
    import shutil

    from stack import controlplane
    from stack.localcloud import emulator, registry
    from stack.localcloud import hosts as host_containers
    from stack.localcloud import loadbalancer
    from stack.localcloud.images import docker_client

    controlplane.stop(settings)
    host_containers.remove_all(settings)
    loadbalancer.remove_all(settings)
    # The AMI bake's builder and the images of its AMIs (the emulator forgets the AMIs, and
    # a bake would register a kept image again instead of baking).
    host_containers.remove_builder(settings)
    host_containers.remove_ami_images(settings, keep=set())
    registry.down(settings, with_images=True)
    for volume in docker_client().volumes.list(filters={"label": f"{emulator.LABEL_PROJECT}={settings.name_prefix}"}):
        volume.remove(force=True)
    emulator.down(settings)
    if settings.state_path.exists():  # Terraform's provider cache stays: it is not the stack's
        for entry in settings.state_path.iterdir():
            if entry.name != "terraform-plugin-cache":
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


@pytest.fixture(scope="session")
def stack(test_settings):
    """One bootstrapped test stack for the whole session; discarded at the end."""
    # Leftovers of an interrupted run (containers, data volume, backups, emulator) would
    # not match a new state.
    discard_test_stack(test_settings)
    first = run_step("flows.bootstrap")
    yield {"settings": test_settings, "first_bootstrap": result_json(first)}
    discard_test_stack(test_settings)


# The order of a whole run. First the end-to-end tests that leave the shared stack as it
# was (SHARED_STACK_ORDER), then the tests that need no stack, then those marked
# ``teardown_last``, which change or destroy the shared stack (TEARDOWN_LAST_ORDER): the
# stack scaled out and back, faults the platform survives, then destroyed; last, a stack
# made anew on stock hosts and an older Prefect, upgraded and rolled back. Scale comes
# first because it asserts that configure runs on the new host alone, which needs the
# stack's own settings in the last bootstrap: the last fault test bootstraps with
# STACK_BAKE=ami. Within a module, tests run in the order they are written.
SHARED_STACK_ORDER = ("test_benchmark", "test_bootstrap_steps", "test_browser", "test_control_plane",
                      "test_hosts_and_configure", "test_platform", "test_provision", "test_remote_state")
TEARDOWN_LAST_ORDER = ("test_scale", "test_durability", "test_teardown", "test_upgrade")

# --- Work started early in the fast lane ---------------------------------------------------
# The fast lane's slowest work is CPU-bound commands: ansible-lint, and some thirty
# ``python -m flows.<step>`` runs that each start Python and import Prefect. When no
# end-to-end test is selected, a test module's ``start_early(env)`` runs in the background
# from the moment the tests are collected, on the core the in-process tests leave idle,
# if a selected test uses the fixture the module names in ``EARLY_FIXTURE``; that fixture
# takes the result with ``early_result``. ``env`` is the process environment as it was at
# collection: tests change os.environ while the background runs. In the full suite the
# work runs when its module comes, as before: beside the stack's bootstrap it would only
# slow that down.
_early: dict[str, Future] = {}
_background = ThreadPoolExecutor(max_workers=3, thread_name_prefix="early")
EARLY_STOP = threading.Event()  # set when the session ends: early work not begun is skipped


def pytest_collection_finish(session):
    if session.config.option.collectonly or any(item.get_closest_marker("e2e") for item in session.items):
        return
    env = dict(os.environ)
    for item in session.items:
        module = getattr(item, "module", None)
        fixture = getattr(module, "EARLY_FIXTURE", None)
        if fixture in getattr(item, "fixturenames", ()) and module.__name__ not in _early:
            _early[module.__name__] = _background.submit(module.start_early, env)


def pytest_sessionfinish(session):
    EARLY_STOP.set()
    _background.shutdown(wait=False, cancel_futures=True)


def early_result(module_name: str, start):
    """What ``start(env)`` returns: from the background run begun at collection, or run now."""
    future = _early.pop(module_name, None)
    return future.result() if future else start(dict(os.environ))


def pytest_collection_modifyitems(items):
    def order(item) -> tuple[int, int]:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if item.get_closest_marker("teardown_last") is not None:
            if module not in TEARDOWN_LAST_ORDER:
                raise pytest.UsageError(f"{module} is marked teardown_last: put it in TEARDOWN_LAST_ORDER "
                                        "(tests/conftest.py)")
            return (2, TEARDOWN_LAST_ORDER.index(module))
        if item.get_closest_marker("e2e") is not None:
            if module not in SHARED_STACK_ORDER:
                raise pytest.UsageError(f"{module} is marked e2e: put it in SHARED_STACK_ORDER (tests/conftest.py), "
                                        "or mark it teardown_last if it changes the shared stack")
            return (0, SHARED_STACK_ORDER.index(module))
        return (1, 0)

    items.sort(key=order)
