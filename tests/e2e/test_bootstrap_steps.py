"""Bootstrap runs what changed and resumes what failed: a changed role reruns configure
(and what its outputs feed), a changed flow-runner image reaches the Docker pool and case
4, a failed smoke is run in full until it passes, a broken playbook stops bootstrap at configure and the next bootstrap starts
there, --only runs one step, the control plane's Run button runs one step with the
current settings, and a changed schedule reaches the control plane.

The repository is changed only in a copy (run with that copy as the working directory).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from stack.steps import STEPS
from tests.conftest import REPO, TEST_STACK_ENV, clean_env, result_json, run_step

pytestmark = pytest.mark.e2e


def outcomes(report: dict) -> dict[str, str]:
    return {s["step"]: s["outcome"] for s in report["steps"]}


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".venv", ".stack*", ".git", "__pycache__", ".pytest_cache"))
    return copy


def run_in(copy: Path, *args: str, check: bool = True):
    return run_step("flows.bootstrap", *args, cwd=copy, check=check)


def test_a_changed_role_reruns_configure_which_changes_nothing_and_not_what_it_does_not_feed(stack, repo_copy):
    defaults = repo_copy / "ansible/roles/base_system/defaults/main.yml"
    defaults.write_text(defaults.read_text() + "# a comment changes the role's files, not what it does\n")
    report = result_json(run_in(repo_copy))
    got = outcomes(report)
    assert (got["provision"], got["hosts"], got["configure"]) == ("skipped", "skipped", "ran"), got
    # The whole playbook ran again on every host, a second time on configured hosts: it
    # changed nothing (the roles are idempotent).
    assert set(report["configure"]["recap"]) == {"p2test-ec2-0", "p2test-ec2-1"}
    for host, recap in report["configure"]["recap"].items():
        assert recap["changed"] == 0 and recap["failed"] == 0 and recap["unreachable"] == 0, (host, recap)
        assert recap["ok"] > 0, (host, recap)
    # configure's outputs (platform URL, flow-runner image reference) did not change:
    # register and deploy keep their keys. configure changed no task on a host, so a
    # health check (every worker online) stands in for the full smoke.
    assert (got["register"], got["deploy"], got["smoke"]) == ("skipped", "skipped", "ran"), got
    assert report["configure"]["changed"] == 0
    assert report["smoke"]["health_only"] is True


def test_a_failed_smoke_is_run_in_full_by_the_next_bootstrap_not_a_health_check(stack):
    """A smoke that failed (recorded in the steps' outcomes, as a bootstrap does) is not
    forgotten by the next bootstrap in which nothing changed."""
    import json

    path = stack["settings"].state_path / "steps.json"
    known = json.loads(path.read_text())
    known["smoke"]["outcome"] = "failed"
    path.write_text(json.dumps(known))
    report = result_json(run_step("flows.bootstrap"))
    # Nothing that flow runs meet changed (register and deploy kept their keys) ...
    assert (outcomes(report)["register"], outcomes(report)["deploy"]) == ("skipped", "skipped"), outcomes(report)
    # ... and still the full smoke ran.
    assert report["smoke"]["health_only"] is False
    assert all(c["ok"] for c in report["smoke"]["cases"]), report["smoke"]["cases"]
    # It passed: the bootstrap after it trusts a health check again.
    assert result_json(run_step("flows.bootstrap"))["smoke"]["health_only"] is True


def _docker_images_in_use(stack) -> tuple[str, str]:
    """The Docker pool's default image and case 4's image, read back from the platform."""
    from stack import platform

    s = stack["settings"]

    async def read():
        async with platform.prefect_client(s, platform.api_url(s)) as client:
            pool = await client.read_work_pool(platform.DOCKER_POOL)
            case4 = await client.read_deployment_by_name("concurrent-flows/case4-s3-docker")
            return (pool.base_job_template["variables"]["properties"]["image"]["default"],
                    case4.job_variables.get("image"))

    return asyncio.run(read())


def _host_has_image(host: str, image: str) -> bool:
    return subprocess.run(["docker", "exec", host, "docker", "image", "inspect", image],
                          capture_output=True).returncode == 0


def test_a_changed_flow_runner_image_is_built_on_a_worker_host_and_reaches_the_docker_pool_and_case_4(
        stack, repo_copy):
    """The bug of issue 27: configure loaded a new image, register and deploy were skipped
    (their keys did not hash it), so the pool kept the old tag and case 4 failed on the
    next new worker host, which has only the new one. The pool and case 4's deployment
    now name the new tag. (A worker host created later gets the current image and runs
    case 4: tests/e2e/test_durability.py, the morning after the nightly teardown.)

    The new image is made the way aws makes it (STACK_FLOW_RUNNER_BUILD=host): the
    repository lacks its tag, so the first worker host builds it on Debian (the twin's
    registry stands in for Docker Hub) and pushes it with the operator's ECR token, which
    is left nowhere: not in the state directory (Ansible's artifacts), not on the host."""
    from stack import aws
    from stack.localcloud.flow_runner import registry_login, repository_url

    s = stack["settings"]
    old_image = stack["first_bootstrap"]["configure"]["flow_runner_image"]
    dockerfile = repo_copy / "stack/localcloud/images/flow-runner/Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "# one line more: a new content hash, a new tag\n")

    proc = run_step("flows.bootstrap", cwd=repo_copy, env=clean_env(**TEST_STACK_ENV, STACK_FLOW_RUNNER_BUILD="host"))
    report = result_json(proc)
    got = outcomes(report)
    new_image = report["configure"]["flow_runner_image"]
    assert new_image != old_image and new_image.startswith(repository_url(s) + ":host-"), new_image
    assert (got["configure"], got["register"], got["deploy"]) == ("ran", "ran", "ran"), got
    assert _docker_images_in_use(stack) == (new_image, new_image)
    worker = next(i for i in aws.running_hosts(s, "worker"))["name"]
    assert f"building the flow-runner image {new_image} on {worker}" in proc.stderr
    assert _host_has_image(worker, new_image)
    assert subprocess.run(["docker", "image", "inspect", new_image], capture_output=True).returncode != 0, \
        "the operator's machine built the image"
    cases = {c["case"]: c for c in report["smoke"]["cases"]}
    assert report["smoke"]["health_only"] is False
    assert cases["case4-s3-docker"]["ok"] is True, cases["case4-s3-docker"]

    _, token = registry_login(s)
    holding = [str(p) for p in s.state_path.rglob("*") if p.is_file() and not p.is_symlink()
               and "terraform-plugin-cache" not in p.parts and token.encode() in p.read_bytes()]
    assert holding == []
    on_host = subprocess.run(["docker", "exec", worker, "grep", "-rls", token, "/root", "/tmp", "/var/tmp"],
                             capture_output=True, text=True)
    assert on_host.stdout == "", on_host.stdout
    left = subprocess.run(["docker", "exec", worker, "ls", "-d", "/var/tmp/flow-runner-build"],
                          capture_output=True, text=True)
    assert left.stdout == "", f"the push's login or build folder is left on {worker}: {left.stdout}"


def test_a_failed_step_stops_bootstrap_and_the_next_one_starts_there(stack, repo_copy):
    # Valid YAML that fails when it runs (a YAML error is refused before anything runs:
    # tests/unit/test_bad_inputs.py), as every host's first task: the failed configure
    # ends in seconds. (This file is not one the bake reads, so the hosts stay.)
    tasks = repo_copy / "ansible/roles/base_system/tasks/main.yml"
    tasks.write_text("- name: Fail on purpose\n  ansible.builtin.fail:\n    msg: broken by the test\n\n" + tasks.read_text())
    failed = run_in(repo_copy, check=False)
    assert failed.returncode == 1
    last = failed.stderr.strip().splitlines()
    assert any(line.startswith("error: bootstrap failed at step configure:") for line in last[-12:]), last[-12:]

    # The fix (the unchanged repository): earlier steps are skipped by their keys, the
    # failed one runs again although its key matches its last success.
    report = result_json(run_step("flows.bootstrap"))
    got = outcomes(report)
    assert (got["provision"], got["hosts"], got["configure"]) == ("skipped", "skipped", "ran"), got


def test_only_smoke_runs_only_smoke(stack):
    proc = run_step("flows.bootstrap", "--only", "smoke")
    table = Path(stack["settings"].state_path / "last-bootstrap.json").read_text()
    import json

    got = {r["step"]: r["outcome"] for r in json.loads(table)}
    assert got == {"preflight": "not run", "bake": "not run", "provision": "not run", "hosts": "not run",
                   "configure": "not run", "restore": "not run", "register": "not run", "deploy": "not run",
                   "smoke": "ran"}
    assert "5/5 cases passed" in proc.stderr


def _run_deployment_and_wait(api: str, name: str):
    from prefect.client.orchestration import PrefectClient

    async def go():
        async with PrefectClient(api=api) as client:
            dep = await client.read_deployment_by_name(name)
            run = await client.create_flow_run_from_deployment(dep.id)
            for _ in range(1200):
                run = await client.read_flow_run(run.id)
                if run.state and run.state.is_final():
                    return run
                await asyncio.sleep(0.5)
            return run

    return asyncio.run(go())


def _flows_run_between(api: str, start, end) -> list[str]:
    """Names of the flows whose runs started on the control plane between ``start`` and ``end``."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime

    async def go():
        async with PrefectClient(api=api) as client:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                start_time=FlowRunFilterStartTime(after_=start, before_=end)), limit=200)
            return sorted([(await client.read_flow(r.flow_id)).name for r in runs])

    return asyncio.run(go())


def _deployment_names(api: str) -> set[str]:
    from prefect.client.orchestration import PrefectClient

    async def go():
        async with PrefectClient(api=api) as client:
            return {d.name for d in await client.read_deployments()}

    return asyncio.run(go())


def test_control_plane_serves_every_step_and_the_run_button_of_configure_runs_only_configure(stack):
    s = stack["settings"]
    names = _deployment_names(s.control_plane_api_url)
    for step in ("bootstrap", *STEPS, "nightly-teardown", "backup"):
        assert f"p2test-{step}" in names
    run = _run_deployment_and_wait(s.control_plane_api_url, "configure/p2test-configure")
    assert run.state.is_completed(), run.state
    # Only configure ran: no other step's flow started while it ran.
    assert _flows_run_between(s.control_plane_api_url, run.start_time, run.end_time) == ["configure"]


def _teardown_schedules(api: str) -> list[tuple[str, str]]:
    from prefect.client.orchestration import PrefectClient

    async def go():
        async with PrefectClient(api=api) as client:
            dep = await client.read_deployment_by_name("teardown/p2test-nightly-teardown")
            return [(s.schedule.cron, s.schedule.timezone) for s in dep.schedules]

    return asyncio.run(go())


def test_a_changed_teardown_schedule_reaches_the_control_plane(stack):
    s = stack["settings"]
    env = clean_env(**TEST_STACK_ENV) | {"STACK_NIGHTLY_TEARDOWN_CRON": "30 4 * * *",
                                         "STACK_SCHEDULE_TIMEZONE": "Europe/Madrid"}
    try:
        run_step("flows.controlplane", "start", env=env)
        for _ in range(120):
            if _teardown_schedules(s.control_plane_api_url) == [("30 4 * * *", "Europe/Madrid")]:
                break
            asyncio.run(asyncio.sleep(0.5))
        assert _teardown_schedules(s.control_plane_api_url) == [("30 4 * * *", "Europe/Madrid")]
    finally:
        # Back to the test stack's settings (no schedule), so nothing fires during the tests.
        run_step("flows.controlplane", "start")
    for _ in range(120):
        if _teardown_schedules(s.control_plane_api_url) == []:
            break
        asyncio.run(asyncio.sleep(0.5))
    assert _teardown_schedules(s.control_plane_api_url) == []
