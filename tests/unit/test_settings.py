"""Bad settings fail before anything is created, with one line naming the setting."""

from __future__ import annotations

import os

import pytest

from stack.settings import SettingsError, load_settings

BAD_INPUTS = [
    ("STACK_REGION", "mars-north-1"),
    ("STACK_OPERATOR_CIDR", "10.0.0.300/32"),
    ("STACK_OPERATOR_CIDR", "0.0.0.0/0"),
    ("STACK_WORKER_COUNT", "0"),
    ("STACK_WORKER_COUNT", "two"),
    ("STACK_SERVER_COUNT", "0"),
    ("STACK_SERVER_COUNT", "6"),
    ("STACK_NAME_PREFIX", "team--a"),  # ElastiCache refuses "--" in its id
    ("STACK_NAME_PREFIX", "internal"),  # a load balancer "internal-api" is refused by AWS
    ("STACK_NAME_PREFIX", "internal-a"),
    ("STACK_BUCKET_NAME", "Not_A_Bucket"),
    ("STACK_STATE_BUCKET", "Not_A_Bucket"),
    ("STACK_BACKUP_RETENTION_DAYS", "0"),
    ("STACK_BACKUP_CRON", "0 2 1 * 1"),
    ("STACK_TARGET", "gcp"),
    ("STACK_HOST_IMAGE", "golden"),
    ("STACK_SSH_USER", "ubuntu"),  # the emulated hosts' user is admin
    ("STACK_PREFECT_VERSION", "3.9"),
    ("STACK_PREFECT_VERSION", "3.7.99"),  # no lock for it: bin/lock-prefect writes one
    ("STACK_NIGHTLY_TEARDOWN_CRON", "*/30 3 * * *"),  # the safety stop needs one time of day
    ("STACK_TEARDOWN_GRACE_MINUTES", "1440"),  # the safety stop would fall on the next teardown
]


@pytest.mark.parametrize(("variable", "value"), BAD_INPUTS)
def test_bad_setting_is_refused_naming_it(variable, value, monkeypatch):
    """The check of each value, in process. That a refused setting exits 2 with that one
    line and creates nothing is tests/unit/test_bad_inputs.py's, which runs the real
    command for some of them (a Python with Prefect imported takes seconds to start)."""
    for name in [n for n in os.environ if n.startswith("STACK_")]:  # the developer's own settings stay out
        monkeypatch.delenv(name)
    monkeypatch.setenv("STACK_CONFIG_FILE", "/nonexistent/stack.toml")
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert str(refused.value).startswith(f"setting {variable}"), str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_name_prefix_only_like_internal_is_accepted():
    assert load_settings(name_prefix="internals").name_prefix == "internals"
    assert load_settings(name_prefix="team-internal").name_prefix == "team-internal"


def test_aws_target_requires_operator_cidr_and_ami():
    with pytest.raises(SettingsError, match="STACK_OPERATOR_CIDR"):
        load_settings(target="aws", ami_id="ami-0123456789abcdef0")
    with pytest.raises(SettingsError, match="STACK_AMI_ID"):
        load_settings(target="aws", operator_cidr="203.0.113.7/32")


def test_public_api_needs_explicit_opt_in():
    s = load_settings(operator_cidr="0.0.0.0/0", allow_public_api=True)
    assert s.effective_operator_cidr == "0.0.0.0/0"


def test_defaults_name_hosts_and_keep_the_operator_on_loopback():
    s = load_settings(name_prefix="prefect2", region="us-east-1")
    assert s.host_name(0) == "prefect2-ec2-0" and s.host_name(1) == "prefect2-ec2-1"
    assert s.effective_operator_cidr == "127.0.0.1/32"


def test_teardown_deployment_is_scheduled_nightly_unless_disabled():
    from flows.serve import deployments

    scheduled = {d.name: d for d in deployments(load_settings(name_prefix="prefect2", nightly_teardown_cron="0 3 * * *"))}
    teardown = scheduled["prefect2-nightly-teardown"]
    assert [sch.schedule.cron for sch in teardown.schedules] == ["0 3 * * *"]
    unscheduled = {d.name: d for d in deployments(load_settings(name_prefix="prefect2", nightly_teardown_cron=""))}
    assert not unscheduled["prefect2-nightly-teardown"].schedules
    with pytest.raises(SettingsError, match="STACK_NIGHTLY_TEARDOWN_CRON"):
        load_settings(nightly_teardown_cron="every night")


def test_the_backup_is_scheduled_on_the_server_host_in_the_schedules_time_zone_not_on_the_control_plane():
    from flows.configure import backup_vars
    from flows.serve import deployments

    settings = load_settings(name_prefix="prefect2", backup_cron="0 1 * * *", schedule_timezone="Europe/Madrid",
                             bucket_name="prefect2-code")
    deps = {d.name: d for d in deployments(settings)}
    assert deps["prefect2-backup"].schedules in (None, [])  # a Run button only: the server's timer runs it
    assert backup_vars(settings)["prefect_server_backup_on_calendar"] == "*-*-* 01:00:00 Europe/Madrid"
    assert backup_vars(settings.model_copy(update={"backup_cron": ""}))["prefect_server_backup_on_calendar"] == ""
    assert [s.schedule.timezone for s in deps["prefect2-nightly-teardown"].schedules] == ["Europe/Madrid"]
    assert "prefect2-restore" in deps


def test_the_safety_stop_fires_the_grace_after_the_nightly_teardown_in_its_time_zone():
    from stack.oncalendar import host_timers

    def safety_stop_calendar(settings):
        return host_timers(settings)["safety_stop"]

    s = load_settings(nightly_teardown_cron="45 23 * * 1-5", teardown_grace_minutes=30,
                      schedule_timezone="Europe/Madrid")
    # Past midnight: the next day of the week, in the schedules' time zone.
    assert safety_stop_calendar(s) == "Tue,Wed,Thu,Fri,Sat *-*-* 00:15:00 Europe/Madrid"
    assert safety_stop_calendar(load_settings()) == "*-*-* 03:30:00 UTC"  # defaults: 03:00 plus 30 min
    # Off, or nothing to wait for: the timer is disarmed ('').
    assert safety_stop_calendar(load_settings(safety_stop=False)) == ""
    assert safety_stop_calendar(load_settings(nightly_teardown_cron="")) == ""
    # A teardown cron the safety stop cannot follow is fine once the safety stop is off.
    assert load_settings(nightly_teardown_cron="*/30 3 * * *", safety_stop=False).safety_stop is False
    with pytest.raises(SettingsError, match="STACK_SAFETY_STOP=false"):
        load_settings(nightly_teardown_cron="0 3 1 * *")


def test_the_schedules_time_zone_is_still_read_under_its_old_name_with_a_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("STACK_CONFIG_FILE", str(tmp_path / "none.toml"))
    monkeypatch.setenv("STACK_NIGHTLY_TEARDOWN_TIMEZONE", "Europe/Madrid")
    with caplog.at_level("WARNING", logger="stack"):
        assert load_settings().schedule_timezone == "Europe/Madrid"
    assert "STACK_SCHEDULE_TIMEZONE" in caplog.text and "STACK_NIGHTLY_TEARDOWN_TIMEZONE" in caplog.text
    monkeypatch.setenv("STACK_SCHEDULE_TIMEZONE", "Asia/Tokyo")  # the new name wins
    assert load_settings().schedule_timezone == "Asia/Tokyo"
    monkeypatch.delenv("STACK_SCHEDULE_TIMEZONE")
    monkeypatch.delenv("STACK_NIGHTLY_TEARDOWN_TIMEZONE")
    toml = tmp_path / "stack.toml"
    toml.write_text('nightly_teardown_timezone = "America/Lima"\n')  # the old key in stack.toml
    monkeypatch.setenv("STACK_CONFIG_FILE", str(toml))
    assert load_settings().schedule_timezone == "America/Lima"
