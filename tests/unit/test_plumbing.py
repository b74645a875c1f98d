"""Fast checks of the runners' pure parts."""

from __future__ import annotations

import importlib.metadata

import pytest

from stack.ansible import HOST_PREFECT_PACKAGES
from stack.pins import pinned_version, pinned_versions
from stack.proc import CommandError, redact, run
from stack.terraform import PlanResult, is_transient


def test_transient_terraform_errors_are_told_apart_from_configuration_errors():
    assert is_transient("dial tcp 127.0.0.1:4566: connect: connection refused")
    assert is_transient("ThrottlingException: Rate exceeded")
    assert not is_transient('Unsupported argument: An argument named "foo" is not expected here.')


def test_plan_markdown_lists_each_change():
    plan = PlanResult(True, {"add": 2, "change": 0, "remove": 1},
                      [("create", "aws_s3_bucket.code"), ("delete", "aws_instance.host[\"x\"]")])
    md = plan.markdown()
    assert "2 to add, 0 to change, 1 to destroy" in md
    assert "| `aws_s3_bucket.code` | create |" in md


def test_runner_redacts_secrets_and_names_the_failed_command():
    lines = []
    run(["sh", "-c", "echo token=s3cr3t"], secrets=["s3cr3t"], on_line=lines.append)
    assert lines == ["token=****"]
    with pytest.raises(CommandError, match=r"`sh -c` failed \(exit 3\): boom"):
        run(["sh", "-c", "echo boom; exit 3"], quiet=True)


def test_host_packages_are_pinned_from_constraints():
    pins = pinned_versions(HOST_PREFECT_PACKAGES)
    assert "prefect==3.8.8" in pins
    assert all("==" in p for p in pins)
    assert pinned_version("uv") == importlib.metadata.version("uv")  # bin/setup installed the pin


class _FailedState:
    def __init__(self, exc: Exception):
        self.exc = exc

    def result(self):
        raise self.exc


def test_terraform_tasks_retry_transient_errors_only():
    from flows.provision import retry_if_transient
    from stack.terraform import TerraformError

    transient = TerraformError(["terraform", "plan"], 1, "connection refused", transient=True)
    config = TerraformError(["terraform", "plan"], 1, "Unsupported argument", transient=False)
    assert retry_if_transient(None, None, _FailedState(transient)) is True
    assert retry_if_transient(None, None, _FailedState(config)) is False
    assert retry_if_transient(None, None, _FailedState(ValueError("bug"))) is False


def test_an_image_tag_hashes_only_what_goes_into_that_image(tmp_path, monkeypatch):
    from stack.localcloud import images

    base = "stack-base:bookworm-test"
    pins = tmp_path / "constraints.txt"
    pins.write_text("prefect==3.8.8\n")
    monkeypatch.setitem(images.CONTEXT_EXTRAS, "constraints.txt", lambda: pins)
    before = {name: images.image_tag(name, base) for name in ("host", "moto", "flow-runner")}
    pins.write_text("prefect==3.8.8\nrequests==9.9.9\n")
    after = {name: images.image_tag(name, base) for name in ("host", "moto", "flow-runner")}
    assert after["host"] == before["host"] and after["moto"] == before["moto"]
    assert after["flow-runner"] != before["flow-runner"]  # it installs from the pins


def test_terraform_destroy_reuses_the_inputs_of_the_last_apply(tmp_path):
    from stack.settings import StackSettings
    from stack.terraform import COMPUTE, Terraform

    settings = StackSettings(state_dir=tmp_path)
    tf = Terraform(settings, COMPUTE, inputs={"data_volume_id": "vol-0123456789abcdef0"})
    tf.prepare()
    assert Terraform(settings, COMPUTE).last_inputs() == {"data_volume_id": "vol-0123456789abcdef0"}


def test_a_bootstrap_removes_earlier_images_no_container_uses(monkeypatch):
    """Against the real Docker engine: each change to the roles bakes a 1.8 GB host image,
    so once a bootstrap succeeded the earlier ones go, except one that a container still
    runs."""
    import io
    import tarfile
    import uuid

    from stack.localcloud import images

    client = images.docker_client()
    repo = f"stack-prunetest-{uuid.uuid4().hex[:8]}"

    def make(tag: str) -> str:  # a tiny image of its own (one file whose content is the tag)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("tag.txt")
            info.size = len(tag)
            tar.addfile(info, io.BytesIO(tag.encode()))
        client.api.import_image_from_data(buf.getvalue(), repository=repo, tag=tag)
        return f"{repo}:{tag}"

    old, used, new = make("old"), make("used"), make("new")
    container = client.containers.create(used, command=["/none"])
    monkeypatch.setattr(images, "_current_tags", {})  # only this test's repository
    images.note_current(new)
    try:
        assert images.remove_superseded_images() == [old]
        assert not images.image_exists(client, old)
        assert images.image_exists(client, used) and images.image_exists(client, new)
    finally:
        container.remove(force=True)
        for ref in (old, used, new):
            if images.image_exists(client, ref):
                client.images.remove(ref, force=True)


def test_the_baked_image_tag_is_the_same_for_every_checkout(monkeypatch):
    """The bake hashes what goes into it, not where the project lives: a clone elsewhere
    (CI, a worktree) reuses the same 1.8 GB image instead of baking its own."""
    from stack.localcloud import bake

    here = bake.baked_image_tag("stack-host:x")
    real = bake.install_vars()
    moved = {**real, "base_system_constraints_file": "/elsewhere/prefect-aws-stack/constraints.txt"}
    monkeypatch.setattr(bake, "install_vars", lambda: moved)
    assert bake.baked_image_tag("stack-host:x") == here
    monkeypatch.setattr(bake, "install_vars", lambda: {**moved, "base_system_uv_package": "uv==0.0.1"})
    assert bake.baked_image_tag("stack-host:x") != here


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
    assert result(None, s=ok).hosts_to_retry() == []
