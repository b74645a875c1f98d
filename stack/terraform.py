"""The one Terraform runner: a working copy of a root module of ``terraform/`` in the
state directory, a generated CLI config (provider mirror) and, on the local target, a
generated ``emulator_override.tf``; every command streams its ``-json`` output into the
logger.

Two root modules, two states, two lifetimes:
  ``data``     the code bucket (flow code, backups) and the database's EBS volume; kept
               by the nightly teardown, destroyed only by ``teardown --all``;
  ``compute``  instances, security group, key pair, instance role, the volume attachment;
               destroyed every night. It takes the data module's outputs as variables.

The committed ``terraform/`` files never mention the emulator: endpoints only come from
the override file written here (the tflocal pattern). The states live in S3 (the
``backend "s3"`` of each ``versions.tf``, configured by a generated backend file; see
stack/statebackend.py), so the working copies are caches.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stack import accountsecrets, aws, statebackend
from stack.proc import CommandError, StackError, get_logger, run
from stack.settings import REPO_ROOT, StackSettings

TERRAFORM_SOURCE = REPO_ROOT / "terraform"
DATA, COMPUTE = "data", "compute"
ROOT_MODULES = (DATA, COMPUTE)  # in apply order; destroy goes the other way
# The compute module's variables that come from elsewhere (the data module's outputs, the
# AMI of the bake step, the host image): flows/provision.compute_inputs makes them.
COMPUTE_INPUTS = ("ami_id", "bucket_arn", "availability_zone", "data_volume_id", "host_image_version",
                  "flow_runner_repository_arn")
OVERRIDE_FILE = "emulator_override.tf"
PLAN_FILE = "stack.tfplan"
INIT_STAMP = ".terraform/stack-init.sha256"
LEGACY_STATE = statebackend.LEGACY_STATE  # where a stack made before remote state kept it
AWS_PROVIDER = "registry.terraform.io/hashicorp/aws"
# Emulated services the stack's resources use.
EMULATED_SERVICES = ("ec2", "ecr", "elbv2", "iam", "s3", "sts", "ssm")

# Messages that mean "try again": the emulator restarting, throttling, network blips.
TRANSIENT_MARKERS = (
    "connection refused", "connection reset", "i/o timeout", "eof", "throttl",
    "requestlimitexceeded", "serviceunavailable", "503", "timeout while waiting",
    "no such host", "tls handshake timeout",
)


# What Terraform says when another process holds the state's lock (or held it and died).
STATE_LOCK_ERROR = "Error acquiring the state lock"


def is_transient(message: str) -> bool:
    low = message.lower()
    return any(m in low for m in TRANSIENT_MARKERS)


class TerraformError(CommandError):
    """A terraform command failed; the message is Terraform's own diagnostics."""


@dataclass
class PlanResult:
    has_changes: bool
    summary: dict[str, int] = field(default_factory=dict)  # add / change / remove
    changes: list[tuple[str, str]] = field(default_factory=list)  # (action, address)
    plan_file: Path | None = None

    def markdown(self) -> str:
        s = self.summary
        head = (f"**Plan:** {s.get('add', 0)} to add, {s.get('change', 0)} to change, "
                f"{s.get('remove', 0)} to destroy.\n\n")
        if not self.changes:
            return head + "No changes. Infrastructure matches the configuration."
        rows = "\n".join(f"| `{addr}` | {action} |" for action, addr in self.changes)
        return head + "| resource | action |\n|---|---|\n" + rows


def detect_plugin_mirror(settings: StackSettings) -> Path | None:
    """A filesystem mirror holding the AWS provider: the setting, else a look in the usual places."""
    if settings.terraform_plugin_mirror:
        mirror = settings.terraform_plugin_mirror
        if not (mirror / AWS_PROVIDER).is_dir():
            raise StackError(
                f"setting STACK_TERRAFORM_PLUGIN_MIRROR={mirror}: no {AWS_PROVIDER} folder in it; "
                "point it at the folder that contains registry.terraform.io/"
            )
        return mirror
    home = Path.home()
    data_home = Path(os.environ.get("XDG_DATA_HOME", home / ".local/share"))
    candidates = [home / ".terraform.d/plugins", data_home / "terraform/plugins",
                  Path("/usr/local/share/terraform/plugins"), Path("/usr/share/terraform/plugins")]
    candidates += [Path(p) for p in sorted(glob.glob("/opt/*"))]
    for c in candidates:
        if (c / AWS_PROVIDER).is_dir():
            return c
    return None


def host_image_version(settings: StackSettings) -> str:
    """What the hosts boot besides the AMI: the host image on local (a new one, or a
    switch between the baked and the stock one, replaces the instances; a new AMI does not: the
    compute module ignores it); nothing on aws."""
    if settings.target != "local":
        return ""
    from stack.localcloud import images

    stock = images.image_tag("host")
    return stock if settings.host_image == "baked" else f"{stock} stock"


SSH_KEY_SECRET = accountsecrets.SSH_PRIVATE_KEY


def ssh_key_file(settings: StackSettings) -> Path:
    """The cache of the stack's SSH private key, for ssh and Ansible (0600)."""
    return settings.state_path / "ssh" / "id_ed25519"


def ssh_public_key(settings: StackSettings, create: bool = False) -> str:
    """The public half of the stack's SSH key pair, whose private key is a secret in the
    account, cached in the state directory. Made only with ``create`` (once per stack,
    by platform.make_stack_secrets); a read of a key not made yet is an error."""
    def make() -> str:
        key = Ed25519PrivateKey.generate()
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                 serialization.NoEncryption()).decode()

    private = accountsecrets.stack_secret(settings, SSH_KEY_SECRET, ssh_key_file(settings), make if create else None)
    key = serialization.load_ssh_private_key(private.encode(), password=None)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{public.decode()} {settings.name_prefix}-operator"


# The variables the emulated cloud changes in the compute module. Its hosts reach no
# AWS download, so the user_data (which they run, through cloud-init) skips the SSM agent.
COMPUTE_OVERRIDE_HCL = """
variable "install_ssm_agent" {
  default = false
}

# Its ElastiCache keeps no clusters: multi-server mode's Redis runs on a host of the stack.
variable "redis_host" {
  default = true
}

# The twin runs the <prefix>-api balancer only (an HAProxy container on the stack's
# network, which the hosts reach directly): no internal balancer beside it.
variable "enable_internal_load_balancer" {
  default = false
}

# moto's ModifyNetworkInterfaceAttribute changes an instance's security groups (ec2-0
# joins the servers' group in multi-server mode) on its interface only, while
# DescribeInstances keeps the old ones: every later plan would change them again. The
# twin's network enforces no security group anyway.
resource "aws_instance" "host" {
  lifecycle {
    ignore_changes = [ami, vpc_security_group_ids]
  }
}

# moto's ModifyInstanceAttribute of the shutdown behaviour empties the instance's security
# groups, so every later plan would put them back. EC2's default (stop, as on aws) holds.
variable "instance_initiated_shutdown_behavior" {
  default = null
}
"""


class Terraform:
    """Runs terraform in the stack's working copy of one root module (``data`` or
    ``compute``). Counts the processes it starts. ``inputs`` are the variables that come
    from another root module's outputs (the compute module's bucket and data volume)."""

    def __init__(self, settings: StackSettings, root: str = COMPUTE, inputs: dict | None = None):
        if root not in ROOT_MODULES:
            raise ValueError(f"unknown Terraform root module {root!r}; one of {ROOT_MODULES}")
        self.settings = settings
        self.root = root
        self.source = TERRAFORM_SOURCE / root
        self.workdir = statebackend.working_copy(settings, root)
        self.cli_config = settings.state_path / "terraform.rc"
        self.inputs = inputs or {}
        self.processes = 0
        self.applied = False  # set by the provision step when an apply ran
        self.created_in_one_apply = False  # set by create(): no resources, so no separate plan

    @property
    def log(self):
        # Looked up per call so lines land in the task run that ran the command.
        return get_logger()

    # --- files --------------------------------------------------------------------
    def prepare(self) -> None:
        """Sync the working copy, write the override, variables and CLI config."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        wanted = {p.name for p in self.source.glob("*.tf")}
        for stale in self.workdir.glob("*.tf"):
            if stale.name not in wanted and stale.name != OVERRIDE_FILE:
                stale.unlink()
        for src in self.source.glob("*.tf"):
            dst = self.workdir / src.name
            if not dst.exists() or dst.read_bytes() != src.read_bytes():
                shutil.copy(src, dst)
        override = self.workdir / OVERRIDE_FILE
        if self.settings.target == "local":
            _write_if_changed(override, self._override_hcl())
        elif override.exists():
            override.unlink()
        _write_if_changed(self.workdir / "terraform.tfvars.json", json.dumps(self.variables(), indent=2) + "\n")
        _write_if_changed(self.workdir / statebackend.BACKEND_FILE, statebackend.backend_config(self.settings, self.root))
        _write_if_changed(self.cli_config, self.cli_config_text())

    def variables(self) -> dict:
        from stack.platform import CODE_FOLDER

        s = self.settings
        common = {"region": s.region, "name_prefix": s.name_prefix}
        if self.root == DATA:
            return {
                **common,
                "availability_zone": s.effective_availability_zone,
                "data_volume_size": s.data_volume_size,
                "bucket_name": statebackend.code_bucket_name(s),
                # The emulator speaks plain HTTP and enforces bucket policies: a TLS-only
                # policy would refuse every request there. Always on for real AWS.
                "bucket_tls_only": s.target != "local",
            }
        return {
            **common,
            "instance_type": s.instance_type,
            "ami_id": s.effective_ami_id,
            "worker_count": s.worker_count,
            "server_count": s.server_count,
            "operator_cidr": s.effective_operator_cidr,
            "allow_public_api": s.allow_public_api,
            "ssh_public_key": ssh_public_key(s),
            "subnet_id": s.subnet_id,
            "flow_code_prefix": CODE_FOLDER,  # what the worker role may read
            **self.inputs,
        }

    def _override_hcl(self) -> str:
        from stack import aws

        endpoint = self.settings.emulator_endpoint
        endpoints = "\n".join(f'    {svc} = "{endpoint}"' for svc in EMULATED_SERVICES)
        return f"""# Generated by stack/terraform.py for the local target: points the provider at the
# emulated cloud. Never committed; removed when the target is aws.
# The emulator's keys come from the environment (StackSettings.aws_env), as a real
# account's do: no file holds a credential.
provider "aws" {{
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_requesting_account_id  = true
  s3_use_path_style           = true
  max_retries                 = 2

  # The twin's own tags (where each host's sshd is published, when a host powered
  # itself off): written by the hosts step, not Terraform's.
  ignore_tags {{
    keys = ["{aws.SSH_HOST_TAG}", "{aws.SSH_PORT_TAG}", "{aws.SELF_STOP_TAG}"]
  }}

  endpoints {{
{endpoints}
  }}
}}
""" + (COMPUTE_OVERRIDE_HCL if self.root == COMPUTE else "")

    def cli_config_text(self) -> str:
        mirror = detect_plugin_mirror(self.settings)
        cache = self.settings.state_path / "terraform-plugin-cache"
        cache.mkdir(parents=True, exist_ok=True)
        text = f'plugin_cache_dir = "{cache}"\n'
        if mirror:
            text += f"""provider_installation {{
  filesystem_mirror {{
    path    = "{mirror}"
    include = ["{AWS_PROVIDER}"]
  }}
  direct {{
    exclude = ["{AWS_PROVIDER}"]
  }}
}}
"""
        return text

    def env(self) -> dict[str, str]:
        env = {
            "TF_CLI_CONFIG_FILE": str(self.cli_config),
            "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0",
            "CHECKPOINT_DISABLE": "1",
            **self.settings.aws_env(),
        }
        if self.root == COMPUTE and self.settings.multi_server and self.settings.target == "aws":
            # ElastiCache's AUTH token: in the environment, not the variables file on disk.
            from stack.platform import redis_auth_token

            env["TF_VAR_redis_auth_token"] = redis_auth_token(self.settings)
        return env

    # --- commands -----------------------------------------------------------------
    def _run(self, *args: str, ok_codes=(0,), json_stream: bool = True) -> tuple[int, list[dict]]:
        argv = ["terraform", *args]
        messages: list[dict] = []
        errors: list[str] = []

        def on_line(line: str) -> None:
            if not json_stream:
                self.log.info("%s", line)
                return
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                if line.strip():
                    self.log.info("%s", line)
                return
            messages.append(msg)
            level = msg.get("@level", "info")
            text = msg.get("@message", "")
            diag = msg.get("diagnostic")
            if diag and diag.get("severity") == "error":
                errors.append(f"{diag.get('summary', '')}: {diag.get('detail', '')}".strip(": "))
            if msg.get("type") in ("version",):
                return
            (self.log.error if level == "error" else self.log.warning if level == "warn" else self.log.info)("%s", text)

        for attempt in range(2):
            self.processes += 1
            messages.clear()
            errors.clear()
            try:
                done = run(argv, cwd=self.workdir, env=self.env(), ok_codes=ok_codes, on_line=on_line)
                return done.returncode, messages
            except CommandError as exc:
                message = "; ".join(errors) or exc.message
                if attempt == 0 and STATE_LOCK_ERROR in message and self._remove_stale_state_lock():
                    continue
                raise TerraformError(argv, exc.returncode, message, transient=is_transient(message)) from None
        raise AssertionError("unreachable")

    def _remove_stale_state_lock(self) -> bool:
        """Remove the state's lock file when it can only be stale: this process holds the
        stack's slot and its lease in the account, so no other command of the stack runs
        Terraform now; the lock was left by one that was killed mid-command. Whether it did."""
        from stack import lock

        if not lock.held_by_this_process():
            return False
        bucket, key = statebackend.state_bucket_name(self.settings), statebackend.state_key(self.settings, self.root)
        s3 = aws.client(self.settings, "s3")
        try:
            held = s3.get_object(Bucket=bucket, Key=key + ".tflock")["Body"].read().decode(errors="replace")
        except Exception:  # noqa: BLE001 - no lock file (any more): nothing to remove, the error stands
            return False
        s3.delete_object(Bucket=bucket, Key=key + ".tflock")
        self.log.warning("removed a stale Terraform state lock of %s, left by an interrupted command (%s); "
                         "running the command again", self.root, " ".join(held.split())[:300])
        return True

    def _init_fingerprint(self) -> str:
        h = hashlib.sha256()
        for name in ("versions.tf", "provider.tf", OVERRIDE_FILE, statebackend.BACKEND_FILE):
            p = self.workdir / name
            h.update(name.encode() + (p.read_bytes() if p.exists() else b""))
        h.update(self.cli_config.read_bytes())
        return h.hexdigest()

    def init(self) -> bool:
        """Run ``terraform init`` unless nothing it depends on changed. True when it ran."""
        stamp = self.workdir / INIT_STAMP
        fingerprint = self._init_fingerprint()
        if stamp.exists() and stamp.read_text() == fingerprint:
            self.log.info("terraform init skipped: providers and backend unchanged")
            return False
        backend = f"-backend-config={statebackend.BACKEND_FILE}"
        legacy = self.workdir / LEGACY_STATE
        if _has_resources(json.loads(legacy.read_text() or "{}") if legacy.exists() else {}):
            # A stack made before remote state: its state moves to the state bucket, once.
            where = f"s3://{statebackend.state_bucket_name(self.settings)}/{statebackend.state_key(self.settings, self.root)}"
            self._run("init", "-input=false", "-no-color", backend, "-migrate-state", "-force-copy", json_stream=False)
            legacy.replace(legacy.with_name(LEGACY_STATE + ".migrated"))
            (self.workdir / (LEGACY_STATE + ".backup")).unlink(missing_ok=True)
            self.log.warning("migrated the %s state from %s to %s (the local file is kept as %s.migrated)",
                             self.root, legacy, where, LEGACY_STATE)
        else:
            # -reconfigure: the backend file changed (another bucket or endpoint), or this
            # working copy was initialised for another backend; the state is in the bucket.
            self._run("init", "-input=false", "-no-color", backend, "-reconfigure", json_stream=False)
        stamp.write_text(fingerprint)
        return True

    def plan(self, destroy: bool = False) -> PlanResult:
        plan_file = self.workdir / PLAN_FILE
        args = ["plan", "-input=false", "-json", "-detailed-exitcode", f"-out={PLAN_FILE}"]
        if destroy:
            args.append("-destroy")
        rc, messages = self._run(*args, ok_codes=(0, 2))
        return _plan_result(messages, has_changes=rc == 2, plan_file=plan_file)

    def create(self) -> PlanResult:
        """Plan and apply in one terraform command, for a root module whose state holds
        no resource. Every change is then a creation: the separate plan that guards an
        update (nothing replaced or destroyed unseen) has nothing to guard, and leaving
        it out saves a terraform process, 5 to 11 s of provider start-up here. What was
        planned comes from the apply's own stream."""
        if self.has_state():
            raise StackError(f"the {self.root} root module has resources; plan, then apply the plan")
        _, messages = self._run("apply", "-input=false", "-json", "-auto-approve")
        self.created_in_one_apply = True
        result = _plan_result(messages, has_changes=False)
        result.has_changes = bool(result.changes) or any(result.summary.values())
        return result

    def apply(self, plan: PlanResult) -> None:
        """Apply exactly the saved plan file."""
        if plan.plan_file is None or not plan.plan_file.exists():
            raise StackError("no saved plan to apply; run the plan step first")
        try:
            self._run("apply", "-input=false", "-json", "-auto-approve", plan.plan_file.name)
        finally:
            plan.plan_file.unlink(missing_ok=True)  # a plan file is good for one apply only

    def destroy(self) -> None:
        self._run("apply", "-destroy", "-input=false", "-json", "-auto-approve")

    def last_inputs(self) -> dict:
        """The other-module inputs of the last prepare (from the working copy's variables
        file), so a destroy can run with what the last apply used."""
        path = self.workdir / "terraform.tfvars.json"
        if not path.exists() or self.root != COMPUTE:
            return {}
        return {k: v for k, v in json.loads(path.read_text()).items() if k in COMPUTE_INPUTS}

    def show_plan(self, plan: PlanResult) -> dict:
        """The saved plan as JSON (``terraform show -json``): what each change would do and why."""
        self.processes += 1
        done = run(["terraform", "show", "-json", plan.plan_file.name], cwd=self.workdir, env=self.env(), quiet=True)
        return json.loads("\n".join(done.lines) or "{}")

    def output(self) -> dict:
        self.processes += 1
        done = run(["terraform", "output", "-json"], cwd=self.workdir, env=self.env(), quiet=True)
        raw = json.loads("\n".join(done.lines) or "{}")
        return {k: v["value"] for k, v in raw.items()}

    def has_state(self) -> bool:
        """Does the state (in the state bucket; before the migration, the local file) list
        a managed resource? Read with boto3: no terraform process."""
        legacy = self.workdir / LEGACY_STATE
        if legacy.exists():
            return _has_resources(json.loads(legacy.read_text() or "{}"))
        return _has_resources(statebackend.read_state(self.settings, self.root) or {})

    def state_outputs(self) -> dict:
        """The root module's outputs as its state holds them (no terraform process)."""
        state = statebackend.read_state(self.settings, self.root) or {}
        return {k: v["value"] for k, v in (state.get("outputs") or {}).items()}


def _has_resources(state: dict) -> bool:
    return any(r.get("mode") == "managed" for r in state.get("resources") or [])


def _plan_result(messages: list[dict], has_changes: bool, plan_file: Path | None = None) -> PlanResult:
    """What a plan (or an apply's planning) reported in Terraform's JSON stream."""
    result = PlanResult(has_changes=has_changes, plan_file=plan_file)
    for m in messages:
        if m.get("type") == "planned_change":
            ch = m["change"]
            result.changes.append((ch["action"], ch["resource"]["addr"]))
        elif m.get("type") == "change_summary" and m["changes"].get("operation", "plan") == "plan":
            result.summary = {k: m["changes"].get(k, 0) for k in ("add", "change", "remove")}
    return result


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
