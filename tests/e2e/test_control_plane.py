"""The control plane never surprises: a nightly teardown that starts overdue destroys
nothing, and no command runs beside another on the same stack."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from stack import aws
from tests.conftest import TEST_STACK_ENV, clean_env, run_step

pytestmark = pytest.mark.e2e


def _running_instances(settings) -> int:
    return len(aws.running_hosts(settings))


def test_overdue_nightly_teardown_is_skipped_and_destroys_nothing(stack):
    from prefect.client.orchestration import PrefectClient
    from prefect.states import Scheduled

    s = stack["settings"]
    assert _running_instances(s) == 2

    async def run_overdue():
        async with PrefectClient(api=s.control_plane_api_url) as client:
            dep = await client.read_deployment_by_name("teardown/p2test-nightly-teardown")
            five_hours_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=5)
            run = await client.create_flow_run_from_deployment(dep.id, state=Scheduled(scheduled_time=five_hours_ago))
            for _ in range(600):  # the control plane's runner picks it up
                run = await client.read_flow_run(run.id)
                if run.state and run.state.is_final():
                    return run
                await asyncio.sleep(0.5)
            return run

    run = asyncio.run(run_overdue())
    assert run.state.is_completed() and run.state.name == "Skipped", run.state
    assert "overdue" in run.state.message and "nothing was destroyed" in run.state.message
    assert _running_instances(s) == 2


def test_a_command_waits_for_the_one_holding_the_stack_then_names_it(stack):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from stack.lock import stack_lock

    s = stack["settings"]
    with temporary_settings(updates={PREFECT_API_URL: s.control_plane_api_url}), stack_lock(s):
        proc = run_step("flows.teardown", env=clean_env(**TEST_STACK_ENV, STACK_LOCK_WAIT_SECONDS="3"), check=False)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: stack p2test is busy") and "holds it" in last, last
    assert _running_instances(s) == 2  # nothing half destroyed
