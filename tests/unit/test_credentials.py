"""AWS credentials (stack/credentials.py, stack/controlplane.py, stack/aws.py): tools get them from the operator's
process (the real botocore in a child Python, no keys on disk), the control plane's runner drops the shell's
static keys, expired ones fail in one line, an old keys file goes. STS is faked; nothing remote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stack.proc import StackError


def test_a_tools_aws_sdk_gets_the_credentials_from_the_operators_process_and_no_file_holds_them(tmp_path):
    """The environment Ansible gets names a profile whose credential_process asks the
    operator's process; botocore (the real one) resolves the keys through it."""
    from stack import credentials
    from stack.settings import EMULATOR_ACCESS_KEY, EMULATOR_SECRET_KEY, StackSettings

    settings = StackSettings(target="local", state_dir=tmp_path)
    probe = ("import boto3; c = boto3.Session().get_credentials().get_frozen_credentials(); "
             "print(c.access_key, c.secret_key)")
    with credentials.served(settings) as env:
        assert not any(EMULATOR_SECRET_KEY in v for v in env.values())
        folder = Path(env["AWS_CONFIG_FILE"]).parent
        assert EMULATOR_SECRET_KEY not in "".join(p.read_text() for p in folder.iterdir() if p.is_file())
        clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        done = subprocess.run([sys.executable, "-c", probe], env=clean | env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [EMULATOR_ACCESS_KEY, EMULATOR_SECRET_KEY]
    assert not folder.exists(), "nothing is left behind"


def test_the_control_planes_runner_does_not_copy_the_shells_expiring_aws_keys(tmp_path):
    from stack import controlplane
    from stack.settings import StackSettings

    settings = StackSettings(target="local", state_dir=tmp_path)
    env = controlplane.runner_env(settings, {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s",
                                             "AWS_SESSION_TOKEN": "t", "AWS_PROFILE": "team", "PATH": "/bin"})
    assert not set(controlplane.STATIC_AWS_KEYS) & set(env)
    assert env["AWS_PROFILE"] == "team" and env["PATH"] == "/bin"  # the chain is read when a run starts
    assert env["STACK_TARGET"] == "local" and env["PREFECT_API_URL"] == settings.control_plane_api_url


@pytest.mark.parametrize(("code", "expect"), [("ExpiredToken", r"have expired \(ExpiredToken\)"),
                                              ("InvalidClientTokenId", r"have expired \(InvalidClientTokenId\)")])
def test_a_scheduled_run_with_expired_credentials_fails_with_one_line_saying_what_to_do(monkeypatch, tmp_path,
                                                                                       code, expect):
    import botocore.exceptions

    from stack import aws
    from stack.settings import StackSettings

    class Sts:
        def get_caller_identity(self):
            raise botocore.exceptions.ClientError({"Error": {"Code": code, "Message": "expired"}}, "GetCallerIdentity")

    monkeypatch.setattr(aws, "client", lambda settings, service: Sts())
    settings = StackSettings(target="aws", ami_id="ami-0123456789abcdef0", operator_cidr="203.0.113.7/32",
                             state_dir=tmp_path)
    with pytest.raises(StackError, match=expect) as err:
        aws.check_credentials(settings, "the teardown did not start")
    assert "aws sso login" in str(err.value) and "\n" not in str(err.value)
    aws.check_credentials(settings.model_copy(update={"target": "local"}), "nothing to check on local")


def test_the_keys_file_an_older_version_wrote_is_removed(tmp_path):
    from stack import credentials
    from stack.settings import StackSettings

    settings = StackSettings(target="local", state_dir=tmp_path)
    legacy = tmp_path / "aws" / "credentials"
    legacy.parent.mkdir()
    legacy.write_text("[stack]\naws_access_key_id = AKIAOLD\naws_secret_access_key = old\n")
    with credentials.served(settings):
        assert not legacy.exists()


def test_the_control_plane_runner_restarts_for_new_settings_or_another_checkout(tmp_path, monkeypatch):
    """Each flow run of the runner loads its flow from the runner's working directory: a
    command run from another clone (or with other settings) restarts it there, so the
    Run buttons and the nightly teardown never run another checkout's code."""
    from stack import controlplane
    from stack.settings import StackSettings

    settings = StackSettings(name_prefix="cptest", state_dir=tmp_path)
    here = controlplane.settings_fingerprint(settings)
    assert controlplane.settings_fingerprint(StackSettings(name_prefix="cptest", state_dir=tmp_path)) == here
    assert controlplane.settings_fingerprint(settings.model_copy(update={"worker_count": 2})) != here
    monkeypatch.setattr(controlplane, "REPO_ROOT", tmp_path / "another-clone")
    assert controlplane.settings_fingerprint(settings) != here
