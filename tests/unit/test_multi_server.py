"""Multi-server mode's choices that need no stack (STACK_SERVER_COUNT): with one server
host nothing of it exists (the playbook's variables and the operator's URL are what they
were); with two or more, clients go through the load balancer and the servers get Redis.
That it works is tests/e2e/test_scale.py's (two API hosts, one stopped mid-burst)."""

from __future__ import annotations

from stack import platform
from stack.settings import StackSettings


def settings(**kw) -> StackSettings:
    return StackSettings(name_prefix="p2unit", load_balancer_port=4402, platform_port=4401, **kw)


def test_one_server_host_gives_the_playbook_no_multi_server_variable_and_keeps_its_url():
    from flows.configure import multi_server_vars

    one = settings()
    assert not one.multi_server
    assert multi_server_vars(one) == {}
    assert platform.api_url(one) == "https://127.0.0.1:4401/api"
    assert platform.api_address(one) is None


def test_two_server_hosts_go_through_the_load_balancer_and_share_the_redis_host():
    from flows.configure import multi_server_vars

    two = settings(server_count=2)
    assert two.multi_server and two.load_balancer_name == "p2unit-api"
    assert platform.api_url(two) == "https://127.0.0.1:4402/api"
    assert multi_server_vars(two) == {
        "prefect_server_multi": True,
        "stack_api_address": "p2unit-api",          # the workers' URL: the balancer's container on the network
        "prefect_server_redis_address": "p2unit-redis",
        "prefect_server_version": two.prefect_version,  # an API host waits for the server host to run it
        "prefect_server_redis_ca": "/etc/prefect/ca.pem",  # the redis host's certificate is the stack CA's
    }


def test_the_server_certificate_names_the_load_balancer_in_multi_server_mode():
    assert "p2unit-api" not in platform.server_tls_names(settings())
    assert "p2unit-api" in platform.server_tls_names(settings(server_count=3))


class _Recorded:
    """stack.hostexec in the restore: every command on every host, in order, and a
    pg_restore that reads the dump and exits 0."""

    def __init__(self):
        self.commands: list[tuple[str, str]] = []

    def run(self, settings, host, argv, **kw):
        self.commands.append((host, " ".join(argv)))
        return ""

    def open(self, settings, host, argv, write=False):
        import subprocess

        self.commands.append((host, " ".join(argv)))
        proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return proc


def _restore(monkeypatch, tmp_path, s, **kw) -> list[tuple[str, str]]:
    from stack import backups

    dump = tmp_path / "p2unit-platform-20261202T000000Z.dump"
    dump.write_bytes(b"dump")
    rec = _Recorded()
    monkeypatch.setattr(backups, "run_on_host", rec.run)
    monkeypatch.setattr(backups, "open_on_host", rec.open)
    backups.restore(s, "p2unit-ec2-0", backups.Backup(dump.name, None, 4, str(dump)), **kw)
    return rec.commands


def test_a_restore_in_multi_server_mode_stops_every_database_client_before_dropdb_and_starts_them_after(
        monkeypatch, tmp_path):
    from stack import backups

    commands = _restore(monkeypatch, tmp_path, settings(server_count=2), worker_hosts=["p2unit-ec2-1"],
                        api_hosts=["p2unit-api-1"])
    drop = commands.index(("p2unit-ec2-0", "sudo -u postgres dropdb --if-exists prefect"))
    before, after = commands[:drop], commands[drop:]
    assert ("p2unit-api-1", "systemctl stop prefect-server") in before
    assert ("p2unit-ec2-0", "systemctl stop prefect-server prefect-services") in before
    assert ("p2unit-ec2-1", "systemctl stop prefect-worker-process prefect-worker-docker") in before
    # The server first; the services and the API hosts once it answers (it migrates a
    # restored older database at its start, and they do not).
    assert [c for c in after if c[1].startswith(("systemctl start", "sh -c"))] == [
        ("p2unit-ec2-0", "systemctl start prefect-server"),
        ("p2unit-ec2-0", f"sh -c {backups.WAIT_FOR_SERVER}"),
        ("p2unit-ec2-0", "systemctl start prefect-services"),
        ("p2unit-api-1", "systemctl start prefect-server"),
        ("p2unit-ec2-1", "systemctl start prefect-worker-process prefect-worker-docker")]


def test_a_rollback_restore_leaves_every_server_stopped_for_configure_and_one_server_host_has_no_services(
        monkeypatch, tmp_path):
    multi = _restore(monkeypatch, tmp_path, settings(server_count=2), api_hosts=["p2unit-api-1"], start_server=False)
    assert not [c for c in multi if c[1].startswith("systemctl start prefect-server")]
    one = _restore(monkeypatch, tmp_path, settings())
    assert ("p2unit-ec2-0", "systemctl stop prefect-server") in one
    assert not [c for c in one if "prefect-services" in c[1] or c[1].startswith("sh -c")]  # as before


def test_the_server_hosts_own_url_is_not_the_balancers():
    assert platform.server_host_api_url(settings(server_count=2)) == "https://127.0.0.1:4401/api"
    assert platform.operator_api_url(settings(server_count=2)) == "https://127.0.0.1:4402/api"
