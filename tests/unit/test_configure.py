"""The configure step's pure parts (flows/configure.py, stack/ansible.py, the connection plugin): which hosts
a scale-out configures, the configuration key, which hosts a failed playbook retries, the plugin asking
again for lost ids. No hosts, no Ansible run, no Docker."""

from __future__ import annotations

import pytest


def test_a_scale_out_configures_only_the_new_hosts_a_scale_in_none_and_anything_else_all():
    from flows.configure import hosts_needing_playbook as scope

    record = {"key": "k1", "hosts": {"s-ec2-0": "c0", "s-ec2-1": "c1"}}
    scaled = {"s-ec2-0": "c0", "s-ec2-1": "c1", "s-ec2-2": "c2"}
    assert scope(record, "k1", scaled, "s-ec2-0") == ["s-ec2-2"]
    assert scope(record, "k1", {"s-ec2-0": "c0"}, "s-ec2-0") == []  # a scale-in
    # A re-created host container is a new machine, even under the same name.
    assert scope(record, "k1", {**scaled, "s-ec2-1": "c1b"}, "s-ec2-0") == ["s-ec2-1", "s-ec2-2"]
    # All hosts (None): another configuration, no record, a new server, all new, none known.
    assert scope(record, "k2", scaled, "s-ec2-0") is None
    assert scope({}, "k1", scaled, "s-ec2-0") is None
    assert scope(record, "k1", {**scaled, "s-ec2-0": "c0b"}, "s-ec2-0") is None
    assert scope(record, "k1", {"s-ec2-0": "x", "s-ec2-1": "y"}, "s-ec2-0") is None
    assert scope(record, "k1", {}, "s-ec2-0") is None


def test_the_configuration_key_ignores_the_number_of_worker_hosts_but_not_their_settings(tmp_path):
    from flows.configure import configuration_key
    from stack.settings import StackSettings

    one = StackSettings(target="local", worker_count=1, state_dir=tmp_path, name_prefix="keytest")
    variables = {"prefect_worker_limit": 4}
    assert configuration_key(one, variables) == configuration_key(one.model_copy(update={"worker_count": 3}), variables)
    assert configuration_key(one, variables) != configuration_key(
        one.model_copy(update={"worker_concurrency": 2}), variables)
    assert configuration_key(one, variables) != configuration_key(one, {"prefect_worker_limit": 2})


def test_configure_retries_unreachable_hosts_and_lost_connections_but_not_failed_tasks():
    from stack.ansible import HostRecap, PlaybookResult

    def result(first_failure=None, unreachable=(), **recaps):
        return PlaybookResult("site.yml", "failed", recap=recaps, first_failure=first_failure,
                              unreachable_hosts=list(unreachable))

    ok, failed, dark = HostRecap(ok=5), HostRecap(ok=3, failed=1), HostRecap(unreachable=1)
    assert result(None, ["w"], s=ok, w=dark).hosts_to_retry() == ["w"]
    # A task failed: a fix is needed, not a retry (even with another host unreachable).
    assert result(("s", "Install nginx", "No package matching 'ngnix'"), ["w"], s=failed, w=dark).hosts_to_retry() == []
    # The channel lost a command's output on the server host; the worker host then failed
    # waiting for its API: both run again.
    lost = ("s", "Create clusters", "Task failed: failed to resolve remote temporary directory from "
            "ansible-tmp-1: `( umask 77 && mkdir -p ...)` returned empty string")
    assert result(lost, s=failed, w=failed, x=ok).hosts_to_retry() == ["s", "w"]
    # docker_api could not read its user's ids (the same lost output): the server host was
    # unreachable and the worker host failed waiting for it; both run again.
    no_ids = ("s", "Install the stack's CA certificate", 'Task failed: Error while determining user and group '
              'ID of current user in container "p-ec2-0": not enough values to unpack (expected 2, got 0)')
    assert result(no_ids, ["s"], s=dark, w=failed).hosts_to_retry() == ["s", "w"]
    assert result(None, s=ok).hosts_to_retry() == []


def test_the_host_connection_reads_its_users_ids_again_when_the_output_is_lost(monkeypatch):
    """The stack's connection plugin (docker_api's subclass) asks again when `id -u && id -g`
    comes back empty, and hands docker_api's copy the ids it read."""
    import importlib.util

    from stack.ansible import ANSIBLE_DIR

    spec = importlib.util.spec_from_file_location(
        "stack_docker_api", ANSIBLE_DIR / "connection_plugins" / "stack_docker_api.py")
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    answers = [(0, b"", b""), (0, b"\n", b""), (0, b"0\n0\n", b"")]
    copied = []
    connection = plugin.Connection.__new__(plugin.Connection)
    connection.ids, connection.actual_user = {}, "root"
    monkeypatch.setattr(connection, "_connect", lambda: connection, raising=False)
    monkeypatch.setattr(connection, "exec_command", lambda cmd: answers.pop(0), raising=False)
    monkeypatch.setattr(connection, "get_option", lambda name: "p-ec2-0", raising=False)
    monkeypatch.setattr(plugin.time, "sleep", lambda s: None)
    monkeypatch.setattr(plugin.DockerApiConnection, "put_file",
                        lambda self, src, dest: copied.append((src, dest, dict(self.ids))))
    connection.put_file("/tmp/a", "/etc/a")
    assert copied == [("/tmp/a", "/etc/a", {"root": (0, 0)})]
    assert answers == []  # asked three times: twice lost, then read


def test_a_failed_server_host_stops_the_worker_hosts_wait_for_it_not_their_other_tasks():
    from stack.ansible import WaitsOnFailedHost

    waits = WaitsOnFailedHost(frozenset({"srv"}), frozenset({"wait for the API"}))
    waits.saw("runner_on_start", "srv", "start the server")
    waits.saw("runner_on_start", "w1", "install packages")
    waits.saw("runner_on_start", "w2", "wait for the API")
    assert not waits.pointless()  # nothing failed yet
    waits.saw("runner_on_failed", "srv", "start the server")
    assert not waits.pointless()  # w1 is still installing: never cut an install short
    waits.saw("runner_on_ok", "w1", "install packages")
    assert not waits.pointless()  # w1 is between tasks: its next one may be an install
    waits.saw("runner_on_start", "w1", "wait for the API")
    assert waits.pointless()
    # An ignored failure, or a failed host nobody waits on, stops nothing.
    other = WaitsOnFailedHost(frozenset({"srv"}), frozenset({"wait for the API"}))
    other.saw("runner_on_start", "w2", "wait for the API")
    other.saw("runner_on_failed", "srv", "probe", ignored=True)
    other.saw("runner_on_failed", "w1", "install packages")
    assert not other.pointless()
    # An unreachable server may come back (configure retries it): the wait goes on.
    other.saw("runner_on_unreachable", "srv", "start the server")
    assert not other.pointless()


def test_a_failed_command_reports_what_it_wrote_not_only_its_return_code():
    from stack.ansible import failure_message

    said = failure_message({"msg": "non-zero return code", "rc": 1, "stdout": "",
                            "stderr": "the server keeps exiting; it said:\nValueError: boom\n"})
    assert said == "the server keeps exiting; it said: | ValueError: boom"
    assert failure_message({"msg": "Timeout waiting for the host"}) == "Timeout waiting for the host"


def test_the_worker_role_has_the_wait_that_configure_stops():
    import yaml

    from flows.configure import WORKER_WAITS_FOR_SERVER
    from stack.settings import REPO_ROOT

    tasks = yaml.safe_load((REPO_ROOT / "ansible/roles/prefect_worker/tasks/main.yml").read_text())
    assert WORKER_WAITS_FOR_SERVER in [t.get("name") for t in tasks]


def test_real_ansible_stops_a_wait_on_a_failed_host(tmp_path):
    """ansible-playbook itself (local connections): the awaited host fails, the other
    host's wait would retry for a minute and is stopped instead; the run says why."""
    from stack.ansible import WaitsOnFailedHost, run_playbook
    from stack.settings import StackSettings

    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    srv: {ansible_connection: local}\n    wrk: {ansible_connection: local}\n"
                         "  vars: {ansible_python_interpreter: auto_silent}\n")
    playbook = tmp_path / "play.yml"
    playbook.write_text("""
- hosts: all
  gather_facts: false
  strategy: free
  tasks:
    - name: Fail on the awaited host
      ansible.builtin.fail: {msg: "the server keeps exiting"}
      when: inventory_hostname == 'srv'
    - name: Wait for the awaited host
      ansible.builtin.command: "false"
      register: probe
      until: probe.rc == 0
      retries: 60
      delay: 1
      when: inventory_hostname == 'wrk'
""")
    settings = StackSettings(target="local", state_dir=tmp_path / "state", name_prefix="waittest")
    result = run_playbook(settings, str(playbook), inventory=inventory,
                          env={"ANSIBLE_INVENTORY_ENABLED": "yaml"},
                          waits=WaitsOnFailedHost(frozenset({"srv"}), frozenset({"Wait for the awaited host"})))
    assert result.status == "canceled"
    # No process of the stopped run is left (ansible-core runs each task in a worker of
    # its own session, which ansible-runner's stop alone would leave waiting for ever).
    import time
    from pathlib import Path

    def left() -> list[str]:
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if str(playbook).encode() in cmdline.read_bytes():
                    found.append(cmdline.parent.name)
            except OSError:
                pass
        return found

    deadline = time.monotonic() + 10
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left() == []
    assert result.first_failure == ("srv", "Fail on the awaited host", "the server keeps exiting")
    assert result.recap["srv"].failed == 1 and result.hosts_to_retry() == []  # a failed task: no retry


def test_the_playbook_task_runs_again_while_hosts_are_unreachable_and_never_after_a_failed_task(monkeypatch):
    """Prefect's own retries (flows/configure.py apply_playbook): a run with an
    unreachable host is retried, a failed task stops at once with the host, task and
    message. Runs the real task (and Prefect's retry machinery) with a scripted playbook."""
    import flows.configure as configure
    from stack import ansible
    from stack.ansible import AnsibleError, HostRecap, PlaybookResult
    from stack.settings import StackSettings

    dark = PlaybookResult("site.yml", "failed", recap={"s": HostRecap(ok=5), "w": HostRecap(unreachable=1)},
                          unreachable_hosts=["w"])
    fine = PlaybookResult("site.yml", "successful", recap={"s": HostRecap(ok=5), "w": HostRecap(ok=7, changed=2)})
    broken = PlaybookResult("site.yml", "failed", recap={"s": HostRecap(ok=3, failed=1)},
                            first_failure=("s", "Install nginx", "No package matching 'ngnix'"))
    script: list[PlaybookResult] = []
    calls: list[str | None] = []

    def scripted(settings, playbook, extravars, limit, secrets, waits):
        calls.append(limit)
        return script.pop(0)

    monkeypatch.setattr(configure, "run_playbook", scripted)
    monkeypatch.setattr(configure.platform, "auth_string", lambda s: "not-a-secret")
    monkeypatch.setattr(configure, "create_table_artifact", lambda **kw: None)
    task = configure.apply_playbook.with_options(retry_delay_seconds=0)

    def run_it():
        return task(StackSettings(name_prefix="retrytest"), "site.yml", {}, None, frozenset({"s"}))

    script[:] = [dark, dark, fine]
    result, attempt = run_it()
    assert (result, attempt, len(calls)) == (fine, 3, 3)

    script[:], calls[:] = [broken, fine], []
    with pytest.raises(AnsibleError, match="host s, task 'Install nginx': No package matching 'ngnix'"):
        run_it()
    assert len(calls) == 1

    script[:], calls[:] = [dark] * (ansible.UNREACHABLE_RETRIES + 1), []
    with pytest.raises(ansible.HostsUnreachable):
        run_it()
    assert len(calls) == ansible.UNREACHABLE_RETRIES + 1
