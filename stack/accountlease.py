"""One command at a time per stack across operators: a lease in the account.

The Prefect concurrency limit of stack/lock.py serialises the commands of one control
plane (its Run buttons, its nightly teardown). Two operators, each with a clone of the
repository, have two control planes; what they share is the account. So bootstrap,
teardown, backup, restore and every step also hold a lease: an object in the stack's
state bucket (``<prefix>/lease.json``) written with S3's conditional writes, naming its
holder (user@machine, command, process, start time). Only one ``PUT`` with
``If-None-Match: *`` can create it; the holder renews it every RENEW_SECONDS with
``If-Match`` on its own version, and deletes it when done. A holder that dies stops
renewing: after LEASE_SECONDS the lease has expired and the next command takes it over
(a conditional delete, so two takers cannot both win). One that died on the same machine
(same user, host name, boot and pid namespace, its process group gone) is taken over at
once.

Terraform's own S3 lock file still guards each state during an apply; this lease makes a
second operator's command wait, or fail naming the first, before anything starts.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import getpass
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from stack import aws, statebackend
from stack.proc import StackError, get_logger
from stack.settings import StackSettings

LEASE_SECONDS = 120
RENEW_SECONDS = 30
POLL_SECONDS = 3


def lease_key(settings: StackSettings) -> str:
    return f"{settings.name_prefix}/lease.json"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _code(exc: Exception) -> str:
    """botocore's error code ('' for anything else, such as an httpx error, whose
    ``response`` is not a dict)."""
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Code", "") if isinstance(response, dict) else ""


def owner() -> dict:
    """Who runs this command, in a form died_here can check later: user@host, this machine
    (_machine), the process and its process group."""
    return {"holder": _holder(), "machine": _machine(), "pid": os.getpid(), "group": os.getpgid(0)}


def _body(command: str, started: dt.datetime) -> bytes:
    return json.dumps({
        **owner(), "command": command,
        "started": started.isoformat(timespec="seconds"),
        "expires": (_now() + dt.timedelta(seconds=LEASE_SECONDS)).isoformat(timespec="seconds"),
    }).encode()


def describe(lease: dict) -> str:
    return (f"{lease.get('holder', 'someone')} runs {lease.get('command', 'a command')} (pid {lease.get('pid', '?')}) "
            f"since {lease.get('started', '?')}")


def _holder() -> str:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # a container's user with no name (no USER, no passwd entry)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _machine() -> str:
    """This boot of this machine's kernel and this process's pid namespace (Linux; ''
    elsewhere): with the holder's name it tells a process number seen here from one of
    another machine, boot, container or WSL distribution of the same name."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot} {os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def died_here(lease: dict) -> bool:
    """Was the lease (or another record with owner()'s fields) taken by a command of this
    user, seen from here (_machine), whose process group is gone (killed, its Terraform or
    Ansible children with it)? Then nobody renews it: waiting for it to expire would only
    delay the next command. Any doubt (another machine, no way to tell machines apart, a
    process of that group still running) leaves the lease to expire."""
    if (not _machine() or lease.get("holder") != _holder() or lease.get("machine") != _machine()
            or not isinstance(lease.get("group"), int) or lease["group"] == os.getpgid(0)):
        return False
    try:
        os.killpg(lease["group"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's processes: alive
        return False
    return False


@contextlib.contextmanager
def renewing(renew: Callable[[], None], every: float, what: str) -> Iterator[None]:
    """Call ``renew`` every ``every`` seconds in a thread while the block runs (a lease's
    keep-alive). A failed renewal is logged, not raised: the lease then expires as a
    killed holder's would. The thread sees this context's variables (Prefect's settings)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            try:
                renew()
            except Exception as exc:  # noqa: BLE001
                get_logger().warning("could not renew %s (%s); another command may take it once it expires",
                                     what, _code(exc) or exc)

    renewer = threading.Thread(target=contextvars.copy_context().run, args=(loop,), name="lease-renewal", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(timeout=5)


@contextlib.contextmanager
def held(settings: StackSettings, command: str) -> Iterator[None]:
    """Hold the stack's lease while the block runs. Waits up to STACK_LOCK_WAIT_SECONDS
    for another holder, then fails naming it. A stack with no state bucket yet (or an
    emulated cloud that is not running) has nothing in the account to guard: no lease."""
    if settings.target == "local" and not aws.emulator_listening(settings):
        yield  # its account is not running yet (preflight starts it): nothing to guard
        return
    s3 = aws.client(settings, "s3")
    key = lease_key(settings)
    try:
        bucket = statebackend.state_bucket_name(settings)
        s3.head_bucket(Bucket=bucket)
    except Exception:  # noqa: BLE001  (no bucket yet, no emulator, no account: nothing to guard)
        yield
        return
    started = _now()
    deadline = time.monotonic() + settings.lock_wait_seconds
    told = False
    while True:
        try:
            etag = s3.put_object(Bucket=bucket, Key=key, Body=_body(command, started), IfNoneMatch="*",
                                 ContentType="application/json")["ETag"]
            break
        except s3.exceptions.ClientError as exc:
            if _code(exc) not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise
        try:
            current = s3.get_object(Bucket=bucket, Key=key)
        except s3.exceptions.NoSuchKey:
            continue  # released in between
        other = json.loads(current["Body"].read() or b"{}")
        expired = dt.datetime.fromisoformat(other.get("expires", "1970-01-01T00:00:00+00:00")) < _now()
        if expired or died_here(other):
            get_logger().warning("taking over the stack's lease: its holder %s (%s)",
                                 "stopped renewing it" if expired else "is no longer running on this machine",
                                 describe(other))
            with contextlib.suppress(s3.exceptions.ClientError):  # another taker was first: try again
                s3.delete_object(Bucket=bucket, Key=key, IfMatch=current["ETag"])
            continue
        if time.monotonic() >= deadline:
            raise StackError(f"stack {settings.name_prefix} is busy: {describe(other)} (the lease "
                             f"s3://{bucket}/{key}, renewed until {other.get('expires')}); waited "
                             f"{settings.lock_wait_seconds} s. Try again when it has finished")
        if not told:
            get_logger().info("waiting for the stack's lease: %s", describe(other))
            told = True
        time.sleep(POLL_SECONDS)

    version = {"etag": etag}

    def renew() -> None:
        version["etag"] = s3.put_object(Bucket=bucket, Key=key, Body=_body(command, started),
                                        IfMatch=version["etag"], ContentType="application/json")["ETag"]

    try:
        with renewing(renew, RENEW_SECONDS, "the stack's lease"):
            yield
    finally:
        # Ours only; gone already when teardown --all deleted the state bucket.
        with contextlib.suppress(Exception):
            s3.delete_object(Bucket=bucket, Key=key, IfMatch=version["etag"])
