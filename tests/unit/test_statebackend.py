"""The Terraform state's backend (stack/statebackend.py): the backend file (bucket, key, lock, no credential),
a state bucket name AWS would refuse, and a state lock never called stale without the stack's slot. Nothing
real: the account id is faked (tests/unit/conftest.py) and S3 must not be asked."""

from __future__ import annotations

import pytest

from stack.proc import StackError
from stack.settings import load_settings


def test_the_backend_file_names_the_state_bucket_and_lock_and_holds_no_credential(monkeypatch, tmp_path):
    from stack import statebackend
    from stack.settings import EMULATOR_SECRET_KEY, StackSettings

    monkeypatch.setitem(statebackend._accounts, ("aws", "eu-west-1", None), "210987654321")
    aws_settings = StackSettings(target="aws", region="eu-west-1", name_prefix="team", ami_id="ami-0123456789abcdef0",
                                 operator_cidr="203.0.113.7/32",
                                 state_dir=tmp_path)
    text = statebackend.backend_config(aws_settings, "compute")
    assert 'bucket = "team-tfstate-210987654321-eu-west-1"' in text
    assert 'key = "team/compute.tfstate"' in text and "use_lockfile = true" in text and "encrypt = true" in text
    assert "access_key" not in text and "secret_key" not in text and "endpoints" not in text
    local = StackSettings(target="local", name_prefix="team", state_dir=tmp_path, emulator_port=4999)
    monkeypatch.setitem(statebackend._accounts, ("local", local.region, local.emulator_endpoint), "123456789012")
    text = statebackend.backend_config(local, "data")
    assert "http://127.0.0.1:4999" in text and EMULATOR_SECRET_KEY not in text  # keys come from the environment


def test_a_derived_state_bucket_name_aws_would_refuse_is_one_line_naming_the_settings(monkeypatch, tmp_path):
    from stack import statebackend
    from stack.settings import StackSettings

    settings = StackSettings(target="local", state_dir=tmp_path, name_prefix="a-prefix-of-twenty-c",
                             region="ap-southeast-1")
    monkeypatch.setattr(statebackend, "account_id", lambda s: "123456789012123456789012")
    with pytest.raises(StackError, match="STACK_STATE_BUCKET"):
        statebackend.state_bucket_name(settings)


def test_a_state_lock_is_never_removed_without_the_stacks_slot(tmp_path, monkeypatch):
    """Only a process holding the stack's slot (and lease) may call a state lock stale."""
    from stack import lock, terraform

    tf = terraform.Terraform(load_settings(state_dir=tmp_path), terraform.COMPUTE)
    monkeypatch.setattr(terraform.aws, "client", lambda *a: pytest.fail("no S3 call without the slot"))
    assert lock.held_by_this_process() is False
    assert tf._remove_stale_state_lock() is False
