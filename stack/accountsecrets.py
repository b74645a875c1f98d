"""The stack's own secrets live in the account, in AWS Secrets Manager (on local, the
emulated cloud's): the platform's auth string, the SSH private key of the hosts, the key
and certificate of the platform's CA. Each one is named ``<prefix>/<name>``, created
once, and read when needed; the file under the state directory is a 0600 cache that a
tool reads (Ansible's SSH key, the operator's CA bundle) and that can be deleted at any
time. So a second clone with the same settings, or this one after its ``.stack/`` was
deleted, uses the same secrets, and no credential is tied to one disk.

Order of truth, for each secret:
  1. the secret in the account (its cache file is rewritten when it differs);
  2. a cache file without a secret (a stack made before this change, or an emulated
     cloud that restarted and forgot its secrets): the file's value goes up, once;
  3. neither: a new value is made, stored in the account, then cached.
When the account cannot be reached (the emulated cloud is down) the cache file stands
in, so status and teardown still work; a value is never made up without storing it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from stack import aws
from stack.proc import StackError, get_logger
from stack.settings import StackSettings

# The stack's secrets, by name (under <prefix>/ in Secrets Manager).
AUTH_STRING = "platform-auth"
SSH_PRIVATE_KEY = "ssh-private-key"
CA_KEY = "ca-key"
CA_CERT = "ca-cert"
# Multi-server mode's (STACK_SERVER_COUNT 2 or more): the API hosts' PostgreSQL password
# and Redis's AUTH token, made only when that mode is first used.
DATABASE_PASSWORD = "database-password"
REDIS_AUTH_TOKEN = "redis-auth-token"
ALL = (AUTH_STRING, SSH_PRIVATE_KEY, CA_KEY, CA_CERT, DATABASE_PASSWORD, REDIS_AUTH_TOKEN)


def made_for(settings: StackSettings) -> tuple[str, ...]:
    """The secrets a stack of these settings has made (platform.make_stack_secrets)."""
    return ALL if settings.multi_server else tuple(n for n in ALL if n not in (DATABASE_PASSWORD, REDIS_AUTH_TOKEN))

# The values this process read, by stack, target and name: one call per secret per process.
_read: dict[tuple, str] = {}


def secret_id(settings: StackSettings, name: str) -> str:
    return f"{settings.name_prefix}/{name}"


def write_private(path: Path, value: str) -> None:
    """A 0600 file from its first byte (never world-readable, even for an instant)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists() and path.read_text() == value:
        os.chmod(path, 0o600)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    tmp.replace(path)


def stack_secret(settings: StackSettings, name: str, cache: Path, make: Callable[[], str] | None = None) -> str:
    """The value of the stack's secret ``name``, created with ``make()`` on first use and
    cached in ``cache`` (0600). See the module docstring for the order of truth. Without
    ``make`` (a read): a secret that neither the account nor the cache holds is an error
    that says which command makes it."""
    where = (settings.name_prefix, settings.target, settings.region, settings.emulator_endpoint, name)
    if where in _read:
        if not cache.exists():
            write_private(cache, _read[where])
        return _read[where]
    sm = aws.client(settings, "secretsmanager")
    sid = secret_id(settings, name)
    try:
        value = sm.get_secret_value(SecretId=sid)["SecretString"]
    except sm.exceptions.ResourceNotFoundException:
        value = None
    except Exception as exc:  # botocore: the account (or the emulated cloud) cannot be reached
        if cache.exists():
            get_logger().debug("Secrets Manager not reachable (%s); using the cached %s", exc, cache)
            return cache.read_text()
        raise StackError(f"could not read the stack's secret {sid} from Secrets Manager ({exc}); "
                         "check the AWS credentials (aws target) or start the emulated cloud "
                         "(python -m flows.bootstrap)") from None
    if value is None:
        if not cache.exists() and make is None:
            raise StackError(f"the stack's {name} does not exist yet (no secret {sid}); python -m flows.bootstrap "
                             "makes it")
        value = cache.read_text() if cache.exists() else make()
        try:
            sm.create_secret(Name=sid, SecretString=value, Description=f"{name} of the Prefect platform stack "
                             f"{settings.name_prefix} (made by the stack; do not edit)",
                             Tags=[{"Key": "Project", "Value": settings.name_prefix}])
            get_logger().info("stored the stack's %s in Secrets Manager as %s", name, sid)
        except sm.exceptions.ResourceExistsException:
            # Another operator's command stored it first: theirs is the one.
            value = sm.get_secret_value(SecretId=sid)["SecretString"]
        except Exception as exc:  # botocore: e.g. AccessDenied (the operator's IAM policy)
            raise StackError(f"could not store the stack's secret {sid} in Secrets Manager ({exc}); the "
                             "operator's IAM policy must allow it (docs/aws.md)") from None
    write_private(cache, value)
    _read[where] = value
    return value


def delete_all(settings: StackSettings, names: tuple[str, ...] = ALL) -> list[str]:
    """Delete the stack's secrets (``teardown --all``, after its question); the ids deleted.
    What exists is read from ListSecrets: a deleted secret may still answer a second
    DeleteSecret for a while, which is not a deletion."""
    sm = aws.client(settings, "secretsmanager")
    wanted = {secret_id(settings, name) for name in names}
    found = [x["Name"] for page in sm.get_paginator("list_secrets").paginate(
        Filters=[{"Key": "name", "Values": [f"{settings.name_prefix}/"]}]) for x in page["SecretList"]
        if x["Name"] in wanted and not x.get("DeletedDate")]
    for sid in found:
        with contextlib.suppress(sm.exceptions.ResourceNotFoundException):
            sm.delete_secret(SecretId=sid, ForceDeleteWithoutRecovery=True)
    for name in names:
        _read.pop((settings.name_prefix, settings.target, settings.region, settings.emulator_endpoint, name), None)
    return sorted(found, key=lambda sid: [secret_id(settings, n) for n in names].index(sid))
