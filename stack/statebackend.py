"""Where the Terraform states live: an S3 bucket in the stack's own account (on local, in
the emulated cloud), one object per root module, locked with Terraform's S3-native lock
file (``use_lockfile``, Terraform 1.10+). The operator's ``.stack/`` holds caches only:
the working copies, the generated backend file, the provider cache.

The state bucket is made here, before the first ``terraform init``, with boto3 (Terraform
cannot create the bucket that holds its own state): versioned (every state ever written
can be recovered), encrypted, public access blocked, and on aws TLS-only. Its name holds
the account id and region, so two teams, or one team in two regions, never share one.

A stack made before remote state kept its states in ``.stack/terraform/<root>/``: the
first ``terraform init`` migrates each one (``-migrate-state``), once, and says so.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from stack import aws
from stack.proc import StackError, get_logger
from stack.settings import StackSettings

BACKEND_FILE = "stack.s3.tfbackend"
LEGACY_STATE = "terraform.tfstate"  # in the working copy, where a stack made before remote state kept it
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


# Asked of STS once per process and target: the account does not change under a command.
_accounts: dict[tuple, str] = {}


def account_id(settings: StackSettings) -> str:
    """The account the stack lives in."""
    where = (settings.target, settings.region, settings.emulator_endpoint)
    if where not in _accounts:
        try:
            _accounts[where] = aws.client(settings, "sts").get_caller_identity()["Account"]
        except Exception as exc:  # botocore's errors: no credentials, no endpoint
            raise StackError(f"could not read the AWS account id ({exc}); check the AWS credentials "
                             f"(target {settings.target}, region {settings.region})") from None
    return _accounts[where]


def state_bucket_name(settings: StackSettings) -> str:
    """``<prefix>-tfstate-<account id>-<region>``, unless STACK_STATE_BUCKET names one."""
    name = settings.state_bucket or f"{settings.name_prefix}-tfstate-{account_id(settings)}-{settings.region}"
    if not BUCKET_NAME.match(name) or ".." in name:
        raise StackError(f"the Terraform state bucket name {name!r} is not a valid S3 bucket name (3 to 63 "
                         "lowercase letters, digits, dots and hyphens); set STACK_STATE_BUCKET or a shorter "
                         "STACK_NAME_PREFIX")
    return name


# One answer per process and stack: the data state does not rename its bucket under a command.
_code_buckets: dict[tuple, str] = {}


def code_bucket_name(settings: StackSettings) -> str:
    """The code bucket (flow code and ``backups/``): STACK_BUCKET_NAME when set; else the
    name the data module's state records, so a stack keeps the name it was made with
    (stacks made before account ids were in names have ``<prefix>-flow-code-<hash>``);
    else ``<prefix>-flow-code-<account id>-<region>``: bucket names are global, and the
    account id keeps two teams with the same prefix apart."""
    if settings.bucket_name:
        return settings.bucket_name
    where = (settings.target, settings.region, settings.emulator_endpoint, settings.name_prefix,
             str(settings.state_path))
    if where not in _code_buckets:
        name = _recorded_code_bucket(settings) or (
            f"{settings.name_prefix}-flow-code-{account_id(settings)}-{settings.region}")
        if not BUCKET_NAME.match(name) or ".." in name:
            raise StackError(f"the code bucket name {name!r} is not a valid S3 bucket name (3 to 63 lowercase "
                             "letters, digits, dots and hyphens); set STACK_BUCKET_NAME or a shorter "
                             "STACK_NAME_PREFIX")
        _code_buckets[where] = name
    return _code_buckets[where]


def code_bucket_name_or_none(settings: StackSettings) -> str | None:
    """The code bucket's name, or None when the cloud cannot be asked for it (the emulated
    cloud is down, the credentials expired): for messages and read-only commands that
    must still work then (teardown's question, the list of local backups)."""
    try:
        return code_bucket_name(settings)
    except Exception:  # noqa: BLE001 - no account or no state to read: not known now
        return settings.bucket_name


def forget_code_bucket_name(settings: StackSettings) -> None:
    """After ``teardown --all`` destroyed the data module: a new stack of this prefix gets
    a name of its own (an older stack's recorded name is not kept for it)."""
    for where in [w for w in _code_buckets if w[3] == settings.name_prefix and w[4] == str(settings.state_path)]:
        del _code_buckets[where]


def working_copy(settings: StackSettings, root: str) -> Path:
    """The folder in the state directory where ``root``'s Terraform runs (a cache)."""
    return settings.state_path / "terraform" / root


def _recorded_code_bucket(settings: StackSettings) -> str | None:
    """The bucket name in the data module's state: the one in the state bucket, or the
    local file of a stack made before remote state (migrated at its next init)."""
    state = read_state(settings, "data")
    if state is None:
        legacy = working_copy(settings, "data") / LEGACY_STATE
        state = json.loads(legacy.read_text() or "{}") if legacy.exists() else {}
    return (state.get("outputs", {}).get("bucket_name") or {}).get("value")


def state_key(settings: StackSettings, root: str) -> str:
    return f"{settings.name_prefix}/{root}.tfstate"


def ensure_state_bucket(settings: StackSettings) -> str:
    """Create the state bucket if it does not exist yet, with its protections; its name."""
    name = state_bucket_name(settings)
    s3 = aws.client(settings, "s3")
    try:
        s3.head_bucket(Bucket=name)
        return name
    except s3.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise StackError(f"the Terraform state bucket {name} exists but cannot be read ({code}): it may "
                             "belong to another account; set STACK_STATE_BUCKET to a bucket of your own") from None
    code_bucket_name(settings)  # a code bucket name S3 would refuse is refused before anything is made
    get_logger().info("creating the Terraform state bucket %s (versioned, encrypted, private)", name)
    create = {"Bucket": name}
    if settings.region != "us-east-1":
        create["CreateBucketConfiguration"] = {"LocationConstraint": settings.region}
    s3.create_bucket(**create)
    s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}, "BucketKeyEnabled": True}]})
    if settings.target != "local":
        # The emulator speaks plain HTTP and enforces bucket policies (as for the code bucket).
        s3.put_bucket_policy(Bucket=name, Policy=json.dumps(tls_only_policy(name)))
    return name


def tls_only_policy(bucket: str) -> dict:
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}


def backend_config(settings: StackSettings, root: str) -> str:
    """The S3 backend's settings for ``root`` (a ``-backend-config`` file). No credential:
    they come from the environment and the usual chain."""
    lines = {
        "bucket": state_bucket_name(settings),
        "key": state_key(settings, root),
        "region": settings.region,
        "encrypt": True,
        "use_lockfile": True,
    }
    text = "\n".join(f"{k} = {json.dumps(v)}" for k, v in lines.items()) + "\n"
    if settings.target == "local":
        # The emulator's keys come from the environment (StackSettings.aws_env), as on aws.
        text += (f'endpoints = {{ s3 = "{settings.emulator_endpoint}", sts = "{settings.emulator_endpoint}" }}\n'
                 "use_path_style = true\nskip_credentials_validation = true\nskip_requesting_account_id = true\n"
                 "skip_metadata_api_check = true\nskip_region_validation = true\n")
    return text


def read_state(settings: StackSettings, root: str) -> dict | None:
    """The current state of ``root`` as Terraform wrote it, or None when there is none
    (no bucket yet, no object yet, or the emulated cloud forgot both)."""
    s3 = aws.client(settings, "s3")
    try:
        body = s3.get_object(Bucket=state_bucket_name(settings), Key=state_key(settings, root))["Body"].read()
    except s3.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code", "") in ("NoSuchKey", "NoSuchBucket", "404"):
            return None
        raise
    return json.loads(body or b"{}")


def empty_bucket(settings: StackSettings, bucket: str) -> int:
    """Delete every object version and delete marker of ``bucket`` (a versioned bucket is
    deleted only when empty); how many were deleted. Only ``teardown --all`` calls it,
    after its question."""
    s3 = aws.client(settings, "s3")
    deleted = 0
    try:
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            batch = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                     for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
            for i in range(0, len(batch), 1000):
                s3.delete_objects(Bucket=bucket, Delete={"Objects": batch[i:i + 1000], "Quiet": True})
            deleted += len(batch)
    except s3.exceptions.NoSuchBucket:
        return 0
    return deleted


def delete_state_bucket(settings: StackSettings) -> bool:
    """Delete the state bucket with every state version in it (``teardown --all``, once
    both root modules are destroyed). True when there was one."""
    name = state_bucket_name(settings)
    s3 = aws.client(settings, "s3")
    empty_bucket(settings, name)
    try:
        s3.delete_bucket(Bucket=name)
    except s3.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
            return False
        raise
    return True


IDENTITY_FILE = "stack.json"


def identity(settings: StackSettings) -> dict:
    """Which stack a state directory's caches belong to."""
    return {"target": settings.target, "region": settings.region, "name_prefix": settings.name_prefix}


def claim_state_dir(settings: StackSettings) -> None:
    """Record which stack this state directory caches (the first provision writes it), so
    that a command for another target, region or prefix is refused before it mixes the
    caches of two stacks (stack/checks.py)."""
    path = settings.state_path / IDENTITY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(identity(settings), indent=2) + "\n")
