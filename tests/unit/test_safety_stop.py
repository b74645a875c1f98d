"""The safety stop's Python side: the next bootstrap starts the instances that stopped
(stack/aws.py), and status says when and why the compute stopped (flows/status.py). The
timer on the hosts, the poweroff and the emulator's view run in
tests/e2e/test_teardown.py against the real stack."""

from __future__ import annotations

import datetime as dt

import boto3
from moto import mock_aws

from flows.status import compute_stopped
from stack import aws, backups
from stack.settings import EMULATOR_DEFAULT_AMI, load_settings


def _backup(name: str) -> backups.Backup:
    return backups.Backup(name, backups._time_of(name), 10, f"s3://b/backups/{name}")


def test_status_says_the_hosts_stopped_themselves_when_the_last_backup_is_the_safety_stops():
    instances = [{"name": "p-ec2-0", "state": "stopped", "state_reason": "User initiated"},
                 {"name": "p-ec2-1", "state": "stopped", "state_reason": "User initiated"}]
    found = [_backup("p-platform-20261201T020000Z.dump"), _backup("p-platform-20261201T033000Z-safety-stop.dump")]
    stopped = compute_stopped(instances, found)
    assert stopped["hosts"] == ["p-ec2-0", "p-ec2-1"]
    assert stopped["at"] == dt.datetime(2026, 12, 1, 3, 30, tzinfo=dt.UTC).isoformat()
    assert "the nightly teardown did not run" in stopped["why"]
    # Stopped some other way: EC2's reason, no claim about a timer.
    other = compute_stopped(instances, found[:1])
    assert other["at"] is None and "User initiated" in other["why"] and "timer" not in other["why"]
    assert compute_stopped([{**instances[0], "state": "running"}], found) is None


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
