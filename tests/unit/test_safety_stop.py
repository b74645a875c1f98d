"""The safety stop's Python side: the next bootstrap starts the instances that stopped
(stack/aws.py), and status says when and why the compute stopped (flows/status.py). The
timer on the hosts, the poweroff and the emulator's view run in
tests/e2e/test_durability.py against the real stack."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import boto3
from moto import mock_aws

from flows.status import compute_stopped
from stack import aws, backups
from stack.settings import EMULATOR_DEFAULT_AMI, load_settings


def _backup(name: str) -> backups.Backup:
    return backups.Backup(name, backups._time_of(name), 10, f"s3://b/backups/{name}")


def test_status_says_the_hosts_stopped_themselves_when_ec2_says_so():
    off = [{"name": "p-ec2-0", "state": "stopped", "state_reason": "User initiated", "stopped_by_itself": True},
           {"name": "p-ec2-1", "state": "stopped", "state_reason": "User initiated", "stopped_by_itself": True}]
    found = [_backup("p-platform-20261201T020000Z.dump"), _backup("p-platform-20261201T033000Z-safety-stop.dump")]
    stopped = compute_stopped(off, found)
    assert stopped["hosts"] == ["p-ec2-0", "p-ec2-1"]
    assert stopped["at"] == dt.datetime(2026, 12, 1, 3, 30, tzinfo=dt.UTC).isoformat()
    assert "the nightly teardown did not run" in stopped["why"] and "-safety-stop.dump" in stopped["why"]
    # Stopped by someone (StopInstances), even with a safety-stop backup in the bucket:
    # EC2's reason, no claim about a timer.
    by_hand = [{**i, "stopped_by_itself": False} for i in off]
    other = compute_stopped(by_hand, found)
    assert other["at"] is None and "User initiated" in other["why"] and "timer" not in other["why"]
    assert compute_stopped([{**off[0], "state": "running", "stopped_by_itself": False}], found) is None


def test_the_stopped_instances_are_started_again_with_the_same_ids(monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    settings = load_settings(target="aws", operator_cidr="203.0.113.7/32", ami_id=EMULATOR_DEFAULT_AMI,
                             region="us-east-1", name_prefix="p2unit")
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        ids = [i["InstanceId"] for i in ec2.run_instances(
            ImageId=EMULATOR_DEFAULT_AMI, MinCount=2, MaxCount=2, InstanceType="t3.small",
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Project", "Value": "p2unit"}]}],
        )["Instances"]]
        assert aws.start_stopped_instances(settings) == []  # nothing stopped: nothing done
        ec2.stop_instances(InstanceIds=ids)
        assert len(aws.start_stopped_instances(settings)) == 2
        running = aws.project_instances(settings, states=("running",))
        assert sorted(i["id"] for i in running) == sorted(ids)


def test_a_changed_schedule_reaches_the_hosts_timers_and_only_configure_runs_for_it(tmp_path):
    """The schedules are left out of the settings a step key hashes (the control plane
    reads them), so configure's key must hash the hosts' timers made from them."""
    from stack import steps
    from stack.settings import StackSettings

    base = StackSettings(target="local", state_dir=tmp_path / "state", name_prefix="keytest")
    keys = {step: steps.step_key(step, base) for step in ("provision", "configure")}
    for change in ({"nightly_teardown_cron": "0 4 * * *"}, {"teardown_grace_minutes": 45},
                   {"schedule_timezone": "Europe/Madrid"}, {"safety_stop": False}, {"backup_cron": "0 1 * * *"}):
        changed = base.model_copy(update=change)
        assert steps.step_key("configure", changed) != keys["configure"], change
        assert steps.step_key("provision", changed) == keys["provision"], change


SCRIPT = Path(__file__).resolve().parents[2] / "ansible/roles/base_system/files/stack-safety-stop"


def _run_script(tmp_path, stop_at: str, backup_unit: bool) -> tuple[str, list[str]]:
    """The host's safety-stop program with a systemctl that records its calls."""
    calls = tmp_path / "calls"
    stub = tmp_path / "bin" / "systemctl"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n'
                    f'case "$1" in cat) exit {0 if backup_unit else 1};; is-active) exit 3;; esac\nexit 0\n')
    stub.chmod(0o755)
    env = {"PATH": f"{stub.parent}:/usr/bin:/bin", "TZ": "UTC", "SAFETY_STOP_AT": stop_at,
           "SAFETY_STOP_LATE_MINUTES": "10"}
    out = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, check=True).stdout
    return out, calls.read_text().splitlines() if calls.exists() else []


def test_the_safety_stop_backs_up_on_the_server_then_powers_off(tmp_path):
    now = dt.datetime.now(dt.UTC).strftime("%H:%M")
    out, calls = _run_script(tmp_path, now, backup_unit=True)
    assert calls[-2:] == ["start prefect-backup-safety-stop.service", "exit 0"], calls
    assert "powering off" in out
    (tmp_path / "worker").mkdir()
    out, calls = _run_script(tmp_path / "worker", now, backup_unit=False)
    assert "start prefect-backup-safety-stop.service" not in calls and calls[-1] == "exit 0"


def test_a_safety_stop_that_fires_long_after_its_time_does_not_stop_the_host(tmp_path):
    """systemd fires a missed calendar timer when the machine wakes (a laptop, for the
    emulated cloud's hosts): that is not a night the teardown missed."""
    an_hour_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).strftime("%H:%M")
    out, calls = _run_script(tmp_path, an_hour_ago, backup_unit=True)
    assert "not stopping" in out and not [c for c in calls if c.startswith(("exit", "start"))], calls
