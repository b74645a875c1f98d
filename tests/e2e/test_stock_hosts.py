"""The stock path: hosts that boot plain Debian (what a stock AMI is, STACK_HOST_IMAGE=stock)
get everything from configure over SSH, as the first morning on aws does without a baked
AMI: apt, the Docker engine, PostgreSQL, the Prefect virtualenv. Then every runbook case
passes on them.

It replaces both hosts of the shared stack (the data volume stays), so it runs with the
fault tests; the teardown tests after it start from any hosts."""

from __future__ import annotations

import subprocess

import pytest

from stack import aws
from stack.localcloud.images import image_tag
from tests.conftest import TEST_STACK_ENV, clean_env, result_json, run_step

pytestmark = [pytest.mark.e2e, pytest.mark.teardown_last]
SERVER, WORKER = "p2test-ec2-0", "p2test-ec2-1"


def in_host(name: str, *argv: str) -> str:
    return subprocess.run(["docker", "exec", name, *argv], capture_output=True, text=True).stdout.strip()


def test_stock_hosts_get_everything_from_configure_over_ssh_and_every_case_passes(stack):
    s = stack["settings"]
    before = {i["name"]: i["id"] for i in aws.running_hosts(s)}
    boot = result_json(run_step("flows.bootstrap", env=clean_env(**TEST_STACK_ENV, STACK_HOST_IMAGE="stock"),
                                timeout=1800))
    # A switch of host image replaces the instances, as a new AMI does.
    after = {i["name"]: i["id"] for i in aws.running_hosts(s)}
    assert sorted(after) == [SERVER, WORKER] and not set(after.values()) & set(before.values())
    assert sorted(boot["hosts"]["created"]) == [SERVER, WORKER]
    stock = image_tag("host")
    for name in (SERVER, WORKER):
        assert subprocess.run(["docker", "inspect", "-f", "{{.Config.Image}}", name], capture_output=True,
                              text=True).stdout.strip() == stock
    # Configure installed what the bake would have: every host's Prefect virtualenv, the
    # worker host's Docker engine, the server host's PostgreSQL.
    assert subprocess.run(["docker", "run", "--rm", stock, "test", "-e", "/opt/prefect/venv"]).returncode == 1
    for name in (SERVER, WORKER):
        assert in_host(name, "/opt/prefect/venv/bin/python", "-c", "import prefect; print(prefect.__version__)") == "3.8.8"
    assert in_host(WORKER, "systemctl", "is-active", "docker") == "active"
    assert in_host(SERVER, "systemctl", "is-active", "postgresql") == "active"
    # New hosts: the full smoke ran, every case on the stock hosts.
    cases = {c["case"]: c for c in boot["smoke"]["cases"]}
    for name in ("case1-direct", "case2-local-storage", "case3-s3-process", "case4-s3-docker"):
        assert cases[name]["ok"] is True, cases[name]
