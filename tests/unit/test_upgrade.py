"""STACK_PREFECT_VERSION: the platform's Prefect, its lock, and what a change of it means
(an upgrade after a backup named for the two versions; a downgrade refused before
anything changes). The S3 record is checked against moto in-process; the upgrade of a
running platform end to end is tests/e2e/test_upgrade.py."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from stack import backups, pins, statebackend, upgrade
from stack.aws import SettingRefused
from stack.settings import SettingsError, load_settings


def test_the_default_is_the_pin_and_another_version_needs_its_committed_lock():
    assert load_settings().prefect_version == pins.pinned_prefect()
    assert pins.platform_constraints(pins.pinned_prefect()) == pins.CONSTRAINTS
    s = load_settings(prefect_version="3.8.8")  # the release pinned before 3.9.1
    lock = pins.platform_constraints(s.prefect_version)
    assert lock == pins.LOCKS_DIR / "prefect-3.8.8.txt" and lock.exists()
    assert pins.pinned_versions(["prefect"], lock) == ["prefect==3.8.8"]
    with pytest.raises(SettingsError, match=r"STACK_PREFECT_VERSION.*bin/lock-prefect 3\.7\.99"):
        load_settings(prefect_version="3.7.99")


def test_a_lock_keeps_the_caps_that_keep_the_server_working():
    lock = pins.LOCKS_DIR / "prefect-3.8.8.txt"
    versions = dict(line.split("==") for line in lock.read_text().splitlines() if "==" in line and not line.startswith("#"))
    fastapi = tuple(int(x) for x in versions["fastapi"].split(".")[:2])
    sqlalchemy = tuple(int(x) for x in versions["sqlalchemy"].split(".")[:2])
    assert fastapi < (0, 151) and sqlalchemy < (2, 1)
    assert {"prefect-aws", "prefect-docker", "s3fs", "docker"} <= set(versions)


def test_the_hosts_and_the_flow_runner_install_the_platforms_version():
    from stack.ansible import install_vars
    from stack.localcloud import flow_runner

    s = load_settings(prefect_version="3.8.8")
    v = install_vars(s)
    assert "prefect==3.8.8" in v["base_system_prefect_packages"]
    assert v["base_system_constraints_file"].endswith("locks/prefect-3.8.8.txt")
    assert "prefect==3.8.8" in flow_runner._build_args(s)["PACKAGES"]
    assert f"prefect=={pins.pinned_prefect()}" in install_vars(load_settings())["base_system_prefect_packages"]
    # A different version is a different flow-runner image, so every step using it runs.
    assert (flow_runner.flow_runner_identity(s)["content"]
            != flow_runner.flow_runner_identity(load_settings())["content"])


@pytest.fixture
def bucket(monkeypatch, tmp_path):
    with mock_aws():
        monkeypatch.setattr(upgrade.aws, "running_hosts", lambda settings, role=None: [])
        s = load_settings(state_dir=tmp_path, bucket_name="stack-unit-code")
        s3 = boto3.client("s3", region_name=s.region)
        s3.create_bucket(Bucket=statebackend.code_bucket_name(s))
        monkeypatch.setattr(upgrade.aws, "client", lambda settings, service: boto3.client(service, region_name=s.region))
        yield s


def test_a_new_platform_records_its_version_and_a_lower_one_is_refused(bucket):
    assert upgrade.recorded_version(bucket) is None
    change = upgrade.check_version_change(bucket)
    assert change.running is None and not change.is_upgrade and "new platform" in change.describe()
    upgrade.record_version(bucket.model_copy(update={"prefect_version": "3.99.0"}))
    assert upgrade.recorded_version(bucket) == "3.99.0"
    with pytest.raises(SettingRefused, match=r"prefect_version: the platform runs Prefect 3\.99\.0.*only go forward") as refused:
        upgrade.check_version_change(bucket)
    assert refused.value.exit_code == 2


def test_a_higher_version_is_an_upgrade_named_for_both(bucket):
    upgrade.record_version(bucket.model_copy(update={"prefect_version": "3.8.7"}))
    change = upgrade.check_version_change(bucket)
    assert change.is_upgrade and change.backup_label == f"pre-upgrade-3.8.7-to-{pins.pinned_prefect()}"
    upgrade.record_version(bucket)
    assert not upgrade.check_version_change(bucket).is_upgrade


def test_a_labelled_backup_keeps_its_time_and_sorts_with_the_others():
    plain = backups._time_of("p2-platform-20261130T020000Z.dump")
    labelled = backups._time_of("p2-platform-20261130T030000Z-pre-upgrade-3.8.8-to-3.9.1.dump")
    assert plain is not None and labelled is not None and labelled > plain
    assert backups._time_of("p2-platform-20261130T030000Z-../x.dump") is None


def test_only_a_backup_taken_before_the_upgrade_from_the_older_version_rolls_back(monkeypatch, tmp_path):
    import datetime as dt

    from flows.restore import _rollback_to

    monkeypatch.setattr(upgrade, "running_version", lambda settings: "3.9.1")  # the pin
    when = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    pre = backups.Backup("p2-platform-20261130T030000Z-pre-upgrade-3.8.8-to-3.9.1.dump", when, 1, "s3://b/k")
    nightly = backups.Backup("p2-platform-20261130T020000Z.dump", when, 1, "s3://b/k")
    assert backups.upgrade_versions(pre.name) == ("3.8.8", "3.9.1") and backups.upgrade_versions(nightly.name) is None
    on_old = load_settings(state_dir=tmp_path, prefect_version="3.8.8")
    assert _rollback_to(on_old, pre) == "3.8.8"
    with pytest.raises(SettingRefused, match="a rollback restores a backup taken before the upgrade from 3.8.8"):
        _rollback_to(on_old, nightly)
    # On the running version, any backup is a plain restore (the server migrates it forward).
    assert _rollback_to(load_settings(state_dir=tmp_path), pre) is None


def test_pools_are_resumed_only_when_an_upgrade_paused_them_and_only_those(bucket, monkeypatch):
    calls = []

    async def set_paused(settings, url, paused, pools=upgrade.HOST_POOLS):
        calls.append((paused, list(pools)))
        return list(pools)

    monkeypatch.setattr(upgrade, "_set_paused", set_paused)
    assert upgrade.resume_pools_paused_by_upgrade(bucket, "https://unused") is False and calls == []
    upgrade.mark_pools_paused(bucket, ["docker"])  # the operator had paused "process" before the upgrade
    assert upgrade.resume_pools_paused_by_upgrade(bucket, "https://unused") is True and calls == [(False, ["docker"])]
    assert upgrade.resume_pools_paused_by_upgrade(bucket, "https://unused") is False and len(calls) == 1


def test_an_s3_error_other_than_not_found_is_not_taken_for_no_record(bucket, monkeypatch):
    from botocore.exceptions import ClientError

    class Denied:
        def get_object(self, **kwargs):
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "GetObject")

    monkeypatch.setattr(upgrade.aws, "client", lambda settings, service: Denied())
    with pytest.raises(ClientError, match="AccessDenied"):
        upgrade.recorded_version(bucket)


def test_a_labelled_copy_keeps_the_original_and_names_both_versions(bucket):
    import datetime as dt

    s3 = boto3.client("s3", region_name=bucket.region)
    name = "p2-platform-20261130T020000Z.dump"
    s3.put_object(Bucket=statebackend.code_bucket_name(bucket), Key="backups/" + name, Body=b"dump")
    original = backups.Backup(name, dt.datetime(2026, 11, 30, 2, tzinfo=dt.UTC), 4,
                              f"s3://{statebackend.code_bucket_name(bucket)}/backups/{name}")
    copy = backups.labelled_copy(bucket, original, "pre-upgrade-3.8.8-to-3.9.1")
    assert copy.name == "p2-platform-20261130T020000Z-pre-upgrade-3.8.8-to-3.9.1.dump"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=statebackend.code_bucket_name(bucket))["Contents"]}
    assert {"backups/" + name, "backups/" + copy.name} <= keys


def test_a_failed_upgrade_whose_server_answers_is_not_rolled_back(monkeypatch):
    """The rollback is for a server that did not come up on the new Prefect (a failed
    migration); a failure elsewhere leaves the whole database in place and is only
    reported (the end-to-end rollback is in tests/e2e/test_upgrade.py)."""
    from flows import configure

    monkeypatch.setattr(configure.platform, "ready", lambda settings, url: True)
    monkeypatch.setattr(configure.backups, "restore", lambda *a, **k: pytest.fail("restored a whole database"))
    monkeypatch.setattr(configure, "get_run_logger", lambda: None)
    change = upgrade.VersionChange(running="3.8.8", wanted="3.9.1")
    assert configure._roll_back_if_the_server_is_down(load_settings(), change, "s3://b/backups/x.dump",
                                                      RuntimeError("a worker task failed"), None, None) is None


@pytest.mark.parametrize("shown, crashed", [
    ("NRestarts=2\nActiveState=activating\nResult=exit-code\n", True),   # the migration failed, systemd retries
    ("NRestarts=0\nActiveState=failed\nResult=exit-code\n", True),
    ("NRestarts=0\nActiveState=active\nResult=success\n", False),        # still migrating: not a failure
    ("NRestarts=0\nActiveState=inactive\nResult=success\n", False),      # never installed on a new host
])
def test_only_a_server_systemd_saw_fail_is_rolled_back(monkeypatch, shown, crashed):
    from flows import configure
    from stack import hostexec

    monkeypatch.setattr(hostexec, "run_on_host", lambda settings, host, command, **kw: shown)
    assert configure._server_crashed(load_settings()) is crashed


def test_a_server_host_that_does_not_answer_is_not_taken_for_a_failed_upgrade(monkeypatch):
    from flows import configure
    from stack import hostexec
    from stack.proc import StackError

    def unreachable(settings, host, command, **kw):
        raise StackError("host p2-ec2-0 is not running")

    monkeypatch.setattr(hostexec, "run_on_host", unreachable)
    assert configure._server_crashed(load_settings()) is False
