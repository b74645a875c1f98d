"""The default worker concurrency follows the instance type's memory (stack/capacity.py)."""

from __future__ import annotations

import pytest
from moto import mock_aws

from stack import aws, capacity
from stack.settings import StackSettings

# The real lookup, kept before the fast lane's fake replaces it (tests/unit/conftest.py).
REAL_MEMORY_MIB = capacity._memory_mib


@pytest.mark.parametrize("memory, runs", [(512, 1), (1024, 1), (2048, 4), (4096, 8), (16384, 8)])
def test_runs_per_pool_fit_the_memory_beside_the_hosts_base(memory, runs):
    assert capacity.concurrency_for_memory(memory) == runs
    if runs > 1:  # both pools full fit; one more run each would not
        assert capacity.HOST_BASE_MIB + 2 * capacity.RUN_MIB * runs <= memory


def test_the_default_follows_the_instance_type_and_a_setting_wins(tmp_path):
    small = StackSettings(state_dir=tmp_path)
    assert capacity.worker_concurrency(small) == 4
    assert capacity.worker_concurrency(small.model_copy(update={"instance_type": "t3.medium"})) == 8
    assert capacity.worker_concurrency(small.model_copy(update={"worker_concurrency": 6})) == 6


def test_more_runs_than_fit_are_said_with_what_fits(tmp_path):
    settings = StackSettings(state_dir=tmp_path, worker_concurrency=8)
    warning = capacity.overcommit_warning(settings)
    assert "STACK_WORKER_CONCURRENCY=8" in warning and "t3.small's 2048 MiB" in warning and "4 fit" in warning
    assert capacity.overcommit_warning(settings.model_copy(update={"worker_concurrency": 4})) is None
    assert capacity.overcommit_warning(settings.model_copy(update={"worker_concurrency": None})) is None


def test_the_memory_comes_from_ec2_and_an_unknown_type_names_the_setting(monkeypatch, tmp_path):
    """Against moto's in-process EC2, the real DescribeInstanceTypes (not the fast lane's fake)."""
    monkeypatch.setattr(capacity, "_memory_mib", REAL_MEMORY_MIB)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(k, "testing")
    settings = StackSettings(target="aws", region="eu-west-1", operator_cidr="203.0.113.0/24",
                             ami_id="ami-0123456789abcdef0", state_dir=tmp_path)
    with mock_aws():
        assert capacity.instance_memory_mib(settings) == 2048
        with pytest.raises(aws.SettingRefused, match="STACK_INSTANCE_TYPE: t3.huge is not an instance type of eu-west-1"):
            capacity.instance_memory_mib(settings.model_copy(update={"instance_type": "t3.huge"}))
