"""The committed Terraform files: formatted, valid, and their own `terraform test`
(mocked provider, offline) asserting the security properties."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from stack.terraform import ROOT_MODULES, TERRAFORM_SOURCE, Terraform


def tf(*args: str, cwd, env) -> subprocess.CompletedProcess:
    return subprocess.run(["terraform", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module", params=ROOT_MODULES)
def initialised_copy(request, tmp_path_factory, test_settings):
    """A copy of one root module of terraform/ (no override file) initialised from the provider mirror."""
    work = tmp_path_factory.mktemp(f"tf-{request.param}")
    shutil.copytree(TERRAFORM_SOURCE / request.param, work, dirs_exist_ok=True)
    cli_config = work / "cli.tfrc"
    cli_config.write_text(Terraform(test_settings).cli_config_text())
    env = {**os.environ, "TF_CLI_CONFIG_FILE": str(cli_config), "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}
    proc = tf("init", "-input=false", "-backend=false", "-no-color", cwd=work, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return work, env


def test_terraform_files_are_formatted():
    proc = subprocess.run(["terraform", "fmt", "-check", "-recursive", "-diff", str(TERRAFORM_SOURCE)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"run `terraform fmt -recursive terraform/`:\n{proc.stdout}"


def test_no_emulator_endpoint_in_committed_files():
    for path in TERRAFORM_SOURCE.rglob("*.tf"):
        text = path.read_text()
        assert "127.0.0.1" not in text and "localhost" not in text, path
        assert not path.name.endswith("_override.tf"), path


def test_terraform_validate(initialised_copy):
    work, env = initialised_copy
    proc = tf("validate", "-no-color", cwd=work, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_terraform_test_security_properties(initialised_copy):
    work, env = initialised_copy
    proc = tf("test", "-no-color", cwd=work, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failed" in proc.stdout and " passed" in proc.stdout
