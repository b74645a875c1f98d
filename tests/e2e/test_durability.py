"""The platform keeps its data through every fault a data team's platform meets: a host
rebooted, the Docker engine restarted, the emulated cloud restarted, the nightly
teardown, a lost data volume. Each test records the platform's deployments, blocks, work
pools and completed flow runs before the fault and finds every one of them afterwards,
with a new run of case3-s3-process completing (bootstrap's smoke step runs it).

These tests change the shared stack, so they run after the others (before the final
teardown tests), each leaving the stack bootstrapped.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import pytest

from stack import aws, bake, platform, statebackend
from stack.localcloud import hosts as host_containers
from tests.conftest import TEST_STACK_ENV, clean_env, result_json, run_step

pytestmark = [pytest.mark.e2e, pytest.mark.teardown_last]
SERVER = "p2test-ec2-0"


def platform_records(settings) -> dict[str, set]:
    """What a data team would miss: ids of deployments, named blocks, work pools and completed runs."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    async def read() -> dict[str, set]:
        async with platform.prefect_client(settings, platform.api_url(settings)) as client:
            completed = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED])))
            return {
                "deployments": {str(d.id) for d in await client.read_deployments()},
                "blocks": {str(b.id) for b in await client.read_block_documents() if not b.is_anonymous},
                "work_pools": {str(p.id) for p in await client.read_work_pools()},
                "completed_runs": await all_run_ids(client, completed),
            }

    async def all_run_ids(client, flow_run_filter) -> set[str]:
        # Page through all of them: one page of 200 held 198 runs before a fault and the
        # smoke's new runs after it, so older runs fell off the page and looked lost.
        from prefect.client.schemas.sorting import FlowRunSort

        ids: set[str] = set()
        offset = 0
        while page := await client.read_flow_runs(flow_run_filter=flow_run_filter, sort=FlowRunSort.ID_DESC,
                                                  limit=200, offset=offset):
            ids |= {str(r.id) for r in page}
            offset += len(page)
        return ids

    return asyncio.run(read())


def assert_nothing_lost(before: dict[str, set], settings) -> None:
    after = platform_records(settings)
    assert before["completed_runs"], "the platform had no completed runs to lose: the check would prove nothing"
    for kind, ids in before.items():
        missing = ids - after[kind]
        assert not missing, f"{len(missing)} of {len(ids)} {kind} lost"


def assert_case3_ran(report: dict) -> None:
    cases = {c["case"]: c for c in report["smoke"]["cases"]}
    assert cases["case3-s3-process"]["ok"] is True and cases["case3-s3-process"]["state"] == "COMPLETED"


def sh(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True)


def active_since(host: str, unit: str) -> int:
    """When ``unit`` last became active on ``host`` (seconds since the epoch)."""
    out = sh("docker", "exec", host, "systemctl", "show", "-p", "ActiveEnterTimestamp", "--timestamp=unix", "--value", unit)
    return int(out.stdout.strip().lstrip("@") or 0)


def container_state(name: str) -> str:
    return sh("docker", "inspect", "-f", "{{.State.Status}}", name).stdout.strip() or "absent"


def test_stopping_and_starting_an_instance_in_ec2_stops_and_starts_its_container(stack):
    s = stack["settings"]
    worker = next(i for i in aws.project_instances(s) if i["role"] == "worker")
    container_id = sh("docker", "inspect", "-f", "{{.Id}}", worker["name"]).stdout.strip()
    ec2 = aws.client(s, "ec2")
    ec2.stop_instances(InstanceIds=[worker["id"]])
    stopped = result_json(run_step("flows.hosts"))
    assert stopped["stopped"] == [worker["name"]] and container_state(worker["name"]) == "exited"
    ec2.start_instances(InstanceIds=[worker["id"]])
    started = result_json(run_step("flows.hosts"))
    assert started["started"] == [worker["name"]] and container_state(worker["name"]) == "running"
    assert sh("docker", "inspect", "-f", "{{.Id}}", worker["name"]).stdout.strip() == container_id


def _restart_docker_engine() -> None:
    """What a reboot of the operator machine does to the stack: every container stops
    with the engine, and comes back by its restart policy when the engine starts."""
    pid = sh("pidof", "dockerd").stdout.split()
    assert pid, "no dockerd process to restart (the engine is managed some other way here)"
    sh("kill", "-TERM", *pid)
    for _ in range(120):
        if not sh("pidof", "dockerd").stdout.strip():
            break
        time.sleep(1)
    log = open(os.environ.get("DOCKERD_LOG", "/tmp/dockerd-restarted.log"), "ab")  # noqa: SIM115
    subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(60):
        if sh("docker", "info").returncode == 0:
            return
        time.sleep(1)
    pytest.fail("dockerd did not come back within 60 s")


def test_a_host_killed_mid_run_crashes_its_run_and_a_reboot_brings_everything_back_with_its_data(stack):
    """A worker host that dies mid-run sends no more heartbeats for its run: the
    platform's automation (blocks/definitions.py) marks it Crashed within 3 minutes. The
    server host is then stopped as a reboot stops it (`docker stop`), and the operator's
    machine reboots (the Docker engine restarted): every container comes back by its
    restart policy, the stopped and the killed host too; the emulated cloud (moto) comes
    back empty, and bootstrap notices and re-provisions one stack (new instances, so new
    host containers on the same data volume), no second bucket or data volume, with
    nothing lost. (An emulator restarted alone adds
    nothing the hosts step does not already do; a host started by the hosts step is the
    EC2 stop/start test's.)"""
    from stack import smoke

    s = stack["settings"]
    url = platform.api_url(s)
    worker = "p2test-ec2-1"
    run_id = asyncio.run(smoke.run_deployment_once(s, url, smoke.CASE_DEPLOYMENTS["case3-s3-process"]))

    async def state() -> tuple[str, str]:
        async with platform.prefect_client(s, url) as client:
            fr = await client.read_flow_run(run_id)
            return fr.state.type.value, fr.state.message or ""

    deadline = time.monotonic() + 120
    while asyncio.run(state())[0] != "RUNNING":
        assert time.monotonic() < deadline, f"the run never started: {asyncio.run(state())}"
        time.sleep(0.2)
    time.sleep(1)  # its first heartbeat is on its way; the testflow runs at least 2 s more
    assert sh("docker", "kill", worker).returncode == 0
    killed_at = time.monotonic()
    while asyncio.run(state())[0] == "RUNNING" and time.monotonic() - killed_at < 180:
        time.sleep(2)
    kind, message = asyncio.run(state())
    assert kind == "CRASHED", f"{kind} {time.monotonic() - killed_at:.0f} s after the host died"
    assert "heartbeat" in message

    before = platform_records(s)
    assert sh("docker", "stop", SERVER).returncode == 0
    _restart_docker_engine()
    # The restart policy brings the emulator and every host back without any command.
    for name in ("p2test-aws", SERVER, worker):
        for _ in range(30):
            if container_state(name) == "running":
                break
            time.sleep(1)
        assert container_state(name) == "running", name
    proc = run_step("flows.bootstrap")
    report = result_json(proc)
    # moto restarted with the engine and forgot everything: the stack noticed.
    assert report["provision"]["cloud_was_lost"] is True
    assert "emulated cloud restarted since the last provision" in proc.stderr
    running = aws.project_instances(s, states=("pending", "running", "stopping", "stopped"))
    assert sorted(i["role"] for i in running) == ["server", "worker"]
    buckets = [b["Name"] for b in aws.client(s, "s3").list_buckets()["Buckets"] if b["Name"].startswith("p2test")]
    # One code bucket and one state bucket (the states went with the emulator's memory).
    assert sorted(buckets) == sorted([statebackend.code_bucket_name(s), statebackend.state_bucket_name(s)])
    # The stack's secrets went too, and came back from their caches: the same auth string.
    assert aws.client(s, "secretsmanager").get_secret_value(
        SecretId=f"{s.name_prefix}/platform-auth")["SecretString"] == platform.auth_file(s).read_text()
    vols = aws.client(s, "ec2").describe_volumes(
        Filters=[{"Name": "tag:Name", "Values": [s.data_volume_name]}])["Volumes"]
    assert len(vols) == 1
    # The new server found the database on the kept data volume: nothing was restored (a
    # server on an empty volume would have restored a backup and hidden the loss).
    assert report["restore"]["restored"] is False, report["restore"]
    assert_nothing_lost(before, s)
    assert_case3_ran(report)


SAFETY_STOP_TIMER = "stack-safety-stop.timer"
# A drop-in that moves the hosts' safety stop to a time the test can wait for, instead of
# configuring a teardown cron minutes ahead: that would also schedule the control plane's
# real nightly teardown then, which would destroy the compute first.
SAFETY_STOP_DROP_IN = f"/etc/systemd/system/{SAFETY_STOP_TIMER}.d/test-soon.conf"


def _timer(host: str, prop: str) -> str:
    return sh("docker", "exec", host, "systemctl", "show", "-p", prop, "--value", SAFETY_STOP_TIMER).stdout.strip()


def _move_safety_stop(hosts: list[str], on_calendar: str | None, armed: bool = True) -> None:
    """Move each host's safety stop to ``on_calendar``, the timer enabled as an armed one
    is (at the next boot it starts again, and must not fire for the time it missed). None:
    back to configure's timer, disabled unless it was ``armed``."""
    timer = SAFETY_STOP_TIMER
    if on_calendar:
        conf = f"[Timer]\\nOnCalendar=\\nOnCalendar={on_calendar}\\n"
        script = (f"mkdir -p $(dirname {SAFETY_STOP_DROP_IN}) && printf '{conf}' > {SAFETY_STOP_DROP_IN} && "
                  f"systemctl daemon-reload && systemctl enable {timer} && systemctl restart {timer}")
    else:
        script = (f"rm -f {SAFETY_STOP_DROP_IN} && systemctl daemon-reload && "
                  + (f"systemctl restart {timer}" if armed else f"systemctl disable --now {timer}"))
    for host in hosts:
        done = sh("docker", "exec", host, "sh", "-c", script)
        assert done.returncode == 0, done.stderr


def test_hosts_stop_themselves_when_the_teardown_does_not_come_and_bootstrap_starts_them(stack):
    """The nightly teardown did not run (the operator's machine asleep): at its time plus
    the grace each host's own timer fires, the server takes a final backup, every host
    powers off, EC2 shows the instances stopped and status says why; the next bootstrap
    starts the same instances and nothing is lost."""
    s = stack["settings"]
    instances = aws.project_instances(s)
    hosts = [i["name"] for i in instances]
    # The test stack schedules no nightly teardown (STACK_NIGHTLY_TEARDOWN_CRON=''), so
    # configure left each host's safety stop disarmed: nothing to wait for. (The calendar
    # of an armed one, the teardown's time plus the grace, is a unit test's.)
    for host in hosts:
        assert _timer(host, "ActiveState") == "inactive" and _timer(host, "UnitFileState") == "disabled", host
    before = platform_records(s)
    soon = time.gmtime(time.time() + 20)
    _move_safety_stop(hosts, time.strftime("*-*-* %H:%M:%S UTC", soon))
    started_wait = time.monotonic()
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and any(container_state(h) == "running" for h in hosts):
            time.sleep(2)
        states = {h: container_state(h) for h in hosts}
        assert set(states.values()) == {"exited"}, f"hosts still up 180 s after the safety stop's time: {states}"
        print(f"every host powered itself off {time.monotonic() - started_wait:.0f} s after the timer was set "
              "20 s ahead")
        for host in hosts:  # stopped by itself (exit 0), not by Docker: the restart policy leaves it down
            assert sh("docker", "inspect", "-f", "{{.State.ExitCode}}", host).stdout.strip() == "0", host
        time.sleep(5)
        assert all(container_state(h) == "exited" for h in hosts), "the engine started a self-stopped host again"

        status = result_json(run_step("flows.status", "--json"))
        assert {i["name"]: i["state"] for i in status["instances"]} == {h: "stopped" for h in hosts}
        assert status["compute_stopped"]["hosts"] == hosts
        assert "nightly teardown did not run" in status["compute_stopped"]["why"], status["compute_stopped"]
        assert status["last_backup"]["name"].endswith("-safety-stop.dump")
        key = status["last_backup"]["location"].split("/", 3)[3]
        assert aws.client(s, "s3").head_object(Bucket=statebackend.code_bucket_name(s), Key=key)["ContentLength"] > 0

        report = result_json(run_step("flows.bootstrap"))
        # The hosts came back up, their timers with them, and stayed up: a timer that
        # missed its time while the host was stopped does not fire at boot.
        assert sorted(report["provision"]["started_instances"]) == hosts
        for host in hosts:
            assert _timer(host, "ActiveState") == "active", host
        time.sleep(5)
        assert all(container_state(h) == "running" for h in hosts), "a host stopped again at boot"
    finally:
        for host in hosts:
            if container_state(host) != "running":
                sh("docker", "start", host)
        time.sleep(3)
        _move_safety_stop(hosts, None, armed=False)  # back to configure's (disarmed) timer
    assert sorted(report["provision"]["started_instances"]) == hosts
    assert sorted(report["hosts"]["started"]) == hosts and report["hosts"]["created"] == []
    assert sorted(i["id"] for i in aws.project_instances(s, states=("running",))) == sorted(i["id"] for i in instances)
    assert_nothing_lost(before, s)
    assert_case3_ran(report)


def test_the_morning_after_the_nightly_teardown_bakes_the_ami_and_restores_a_lost_data_volume(stack):
    """The morning on aws, with a disk lost overnight. The nightly teardown backs up the
    platform, destroys the compute and keeps the data volume; here that volume is then
    lost too (its disk gone with everything on it). Bootstrap bakes the AMI
    (STACK_BAKE=ami, the aws path on the twin: a builder instance, bake.yml over SSH,
    CreateImage), the new instances boot from it with everything installed, and the
    platform is restored from the teardown's backup before anything registers: nothing
    lost, every case runs. (A kept data volume under new instances, which needs no
    restore, is the reboot test's above: moto forgets the instances and bootstrap makes
    new ones on the same volume.)"""
    s = stack["settings"]
    worker = next(i["name"] for i in aws.running_hosts(s, "worker"))
    before = platform_records(s)
    down = result_json(run_step("flows.teardown"))
    assert down["scope"] == "compute" and down["destroyed"] == ["compute"]
    assert down["backup"] and down["backup"].startswith(f"s3://{statebackend.code_bucket_name(s)}/backups/")
    key = down["backup"].split("/", 3)[3]
    assert aws.client(s, "s3").head_object(Bucket=statebackend.code_bucket_name(s), Key=key)["ContentLength"] > 0
    assert aws.project_instances(s, states=("pending", "running", "stopping", "stopped")) == []
    assert container_state(SERVER) == "absent" and container_state(worker) == "absent"
    assert sh("docker", "volume", "inspect", s.data_volume_name).returncode == 0  # the teardown kept the data
    assert sh("docker", "volume", "rm", s.data_volume_name).returncode == 0  # and then the disk was lost

    ami_env = clean_env(**TEST_STACK_ENV, STACK_BAKE="ami")
    proc = run_step("flows.bootstrap", env=ami_env, timeout=2400)
    report = result_json(proc)
    # The compute module had no resources left: created in one apply; the data module
    # kept its volume (in EC2) and bucket, so it was planned (no changes) and not applied.
    assert report["provision"]["created_in_one_apply"] == ["compute"]
    assert sorted(report["hosts"]["created"]) == sorted([SERVER, worker])
    # The empty database was found and the teardown's backup restored before register.
    assert report["restore"]["restored"] is True
    assert report["restore"]["backup"]["location"] == down["backup"]
    assert "restoring" in proc.stderr and "backup exists" in proc.stderr
    assert_nothing_lost(before, s)
    assert_case3_ran(report)
    # Every case ran, the Docker one included: its worker was restarted after the restore,
    # so it used the restored pool's job template, not the default one it made on the
    # empty database (that run's container could not reach the server).
    cases = {c["case"]: c for c in report["smoke"]["cases"]}
    assert cases["case4-s3-docker"]["state"] == "COMPLETED", cases["case4-s3-docker"]
    assert active_since(worker, "prefect-worker-docker") >= active_since(SERVER, "prefect-server")
    image = report["configure"]["flow_runner_image"]
    held = sh("docker", "exec", worker, "docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert held == [image], f"the new worker host holds {held}, the pool names {image}"

    baked = report["bake"]
    print(f"bake: {baked['seconds']} s; steps {report['seconds']}")
    assert baked["method"] == "ami" and baked["built"] is True and baked["key"] == bake.bake_key(
        s.model_copy(update={"bake": "ami"}))
    instances = aws.project_instances(s, states=("running",))
    assert len(instances) == 2 and {i["image_id"] for i in instances} == {baked["ami_id"]}
    image = host_containers.ami_image_tag(s, baked["key"])
    for i in instances:  # the twin boots an instance of the AMI from the committed builder
        assert sh("docker", "inspect", "-f", "{{.Config.Image}}", i["name"]).stdout.strip() == image
    assert sh("docker", "run", "--rm", "--entrypoint", "test", image, "-x", "/opt/prefect/venv/bin/prefect").returncode \
        == 0  # the Prefect virtualenv was baked in, like the packages and PostgreSQL
    # The builder, its key pair and its security group are gone; nothing of its first boot
    # stayed in the image (cloud-init ran again on each host, as a new instance).
    ec2 = aws.client(s, "ec2")
    mine = [{"Name": f"tag:{bake.BUILDER_TAG}", "Values": [s.name_prefix]}]
    assert {i["State"]["Name"] for r in ec2.describe_instances(Filters=mine)["Reservations"] for i in r["Instances"]} \
        == {"terminated"}
    assert ec2.describe_security_groups(Filters=mine)["SecurityGroups"] == []
    assert ec2.describe_key_pairs(Filters=mine)["KeyPairs"] == []
    assert sh("docker", "ps", "-a", "-q", "--filter", f"name={bake.builder_name(s)}").stdout.strip() == ""
    for i in instances:
        assert sh("docker", "exec", i["name"], "cloud-init", "query", "instance_id").stdout.strip() == i["id"]

    # Nothing changed since: the next bake finds the AMI by its key and makes nothing.
    again = result_json(run_step("flows.bake", env=ami_env))
    assert (again["ami_id"], again["built"]) == (baked["ami_id"], False)

    status = result_json(run_step("flows.status", "--json"))
    assert status["data_volume"]["name"] == s.data_volume_name and status["data_volume"]["size"] == s.data_volume_size
    assert status["last_backup"]["location"] == down["backup"] and status["last_backup"]["size"] > 0
