"""How hosts boot and how the stack reaches them, without a cloud: the NoCloud seed a
host container gets, the ssh command line, the instance fields the address comes from.
The end-to-end tests (tests/e2e/test_hosts_and_configure.py) boot real hosts with it."""

from __future__ import annotations

import io
import tarfile

import pytest
import yaml

from stack import aws, hostexec
from stack.localcloud.hosts import NOCLOUD_SEED_DIR, LaunchData, nocloud_seed
from stack.proc import StackError
from stack.settings import StackSettings
from stack.terraform import ssh_public_key


def test_the_seed_holds_what_ec2_gives_an_instance_and_nothing_else():
    instance = {"id": "i-0abc", "name": "p2-ec2-1", "role": "worker"}
    seed = nocloud_seed(instance, LaunchData("#!/bin/bash\necho hi\n", ["ssh-ed25519 AAAAkey p2-operator"]))
    with tarfile.open(fileobj=io.BytesIO(seed)) as tar:
        names = sorted(tar.getnames())
        files = {m.name.rsplit("/", 1)[1]: tar.extractfile(m).read().decode() for m in tar.getmembers()}
        modes = {m.mode for m in tar.getmembers()}
    assert names == [f"{NOCLOUD_SEED_DIR}/meta-data", f"{NOCLOUD_SEED_DIR}/user-data"]
    assert yaml.safe_load(files["meta-data"]) == {
        "instance-id": "i-0abc", "local-hostname": "p2-ec2-1", "public-keys": ["ssh-ed25519 AAAAkey p2-operator"]}
    assert files["user-data"] == "#!/bin/bash\necho hi\n"
    assert modes == {0o600}


class FakeEC2:
    def __init__(self, tags):
        self.tags = tags

    def get_paginator(self, operation):
        tags = self.tags

        class Pages:
            def paginate(self, Filters):  # noqa: N803
                return [{"Reservations": [{"Instances": [{
                    "InstanceId": "i-1", "State": {"Name": "running"}, "PublicIpAddress": "198.51.100.7",
                    "PrivateIpAddress": "10.0.0.5", "KeyName": "p2-operator",
                    "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]}]}]

        return Pages()


def fake_ec2(monkeypatch, tags):
    others = aws.client  # Secrets Manager: the fast lane's fake (tests/unit/conftest.py)
    monkeypatch.setattr(aws, "client", lambda s, service: FakeEC2(tags) if service == "ec2" else others(s, service))


@pytest.mark.parametrize("tags, address, port", [
    ({"Name": "p2-ec2-0", "Role": "server"}, "198.51.100.7", 22),  # aws: the public IP
    ({"Name": "p2-ec2-0", "Role": "server", aws.SSH_HOST_TAG: "127.0.0.1", aws.SSH_PORT_TAG: "40022"},
     "127.0.0.1", 40022),  # the emulated cloud: what the hosts step tagged
])
def test_ssh_goes_to_the_tagged_loopback_port_or_the_public_ip(monkeypatch, tmp_path, tags, address, port):
    settings = StackSettings(state_dir=tmp_path, name_prefix="p2")
    ssh_public_key(settings, create=True)  # the stack's key pair (provision makes it)
    fake_ec2(monkeypatch, tags)
    argv = hostexec.host_argv(settings, "p2-ec2-0", ["systemctl", "start", "prefect-backup.service"])
    assert argv[0] == "ssh" and argv[-2:] == [f"admin@{address}", "sudo systemctl start prefect-backup.service"]
    assert argv[argv.index("-p") + 1] == str(port)
    options = " ".join(argv)
    for option in ("IdentitiesOnly=yes", "BatchMode=yes", "HostKeyAlias=i-1",
                   f"UserKnownHostsFile={tmp_path / 'ssh' / 'known_hosts'}"):
        assert option in options
    assert argv[argv.index("-i") + 1] == str(tmp_path / "ssh" / "id_ed25519")


def test_a_host_that_is_not_running_is_named_in_the_error(monkeypatch, tmp_path):
    settings = StackSettings(state_dir=tmp_path, name_prefix="p2")
    fake_ec2(monkeypatch, {"Name": "p2-ec2-0", "Role": "server"})
    with pytest.raises(StackError, match="host p2-ec2-9 is not running"):
        hostexec.host_argv(settings, "p2-ec2-9", ["true"])
