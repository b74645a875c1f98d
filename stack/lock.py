"""One command at a time per stack: bootstrap, teardown, backup, restore and every single
step hold a Prefect global concurrency limit (``stack-<prefix>``, one slot) on the
control plane for their whole run, so a nightly teardown can never run beside a
bootstrap, and a lease in the account (stack/accountlease.py), so another operator's
clone cannot either. A second command waits up to STACK_LOCK_WAIT_SECONDS, then fails
naming the run that holds the stack. Steps inside a bootstrap run under the bootstrap's
slot and lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import TypeVar
from uuid import UUID

from stack import accountlease
from stack.proc import StackError, get_logger
from stack.settings import StackSettings, load_settings

F = TypeVar("F", bound=Callable)
LEASE_SECONDS = 60
_held: contextvars.ContextVar[bool] = contextvars.ContextVar("stack_lock_held", default=False)
# The same, for the whole process: a step's threads (the two root modules side by side)
# do not inherit the context variable.
_held_by_process = False


def held_by_this_process() -> bool:
    """Whether this process holds the stack's slot (and its lease in the account): then no
    other command of this stack runs, and a Terraform state lock left behind is stale."""
    return _held.get() or _held_by_process


def limit_name(settings: StackSettings) -> str:
    return f"stack-{settings.name_prefix}"


def _holder_file(settings: StackSettings):
    return settings.state_path / "lock-holder.json"


def _this_run() -> dict:
    from prefect.runtime import flow_run

    if flow_run.get_id():
        return {"flow": flow_run.flow_name, "run": flow_run.name, "id": flow_run.get_id()}
    return {"flow": os.path.basename(sys.argv[0]) or "python", "run": f"pid {os.getpid()}", "id": "no flow run"}


async def _ensure_limit(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    async with get_client() as client:
        try:
            await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


def _read_holder(settings: StackSettings) -> dict:
    try:
        return json.loads(_holder_file(settings).read_text())
    except (OSError, ValueError):
        return {}


def _free_slot_of_a_dead_holder(client, settings: StackSettings) -> None:
    """A command killed on this machine (its process group gone, accountlease.died_here)
    cannot release its slot: release it for it, by the lease id it recorded, rather than
    wait until the lease runs out (the server ignores a lease already released or
    expired). Anything else (another machine's control plane, a holder still running)
    waits."""
    left = _read_holder(settings)
    if not left.get("lease_id") or not accountlease.died_here(left):
        return
    client.release_concurrency_slots_with_lease(UUID(left["lease_id"]))
    get_logger().warning("freed the stack's slot: its holder %s run %s (pid %s) is no longer running on this machine",
                         left.get("flow", "?"), left.get("run", "?"), left.get("pid", "?"))
    # Unless another waiter has freed it too and taken the slot since, writing its own.
    if _read_holder(settings).get("lease_id") == left["lease_id"]:
        _holder_file(settings).unlink(missing_ok=True)


def _acquire_slot(settings: StackSettings, name: str) -> UUID:
    """Take the limit's one slot with a LEASE_SECONDS lease, waiting up to
    STACK_LOCK_WAIT_SECONDS (then TimeoutError). Prefect's own ``concurrency()`` keeps the
    lease id to itself, and the id is what lets the next command free the slot of one that
    was killed; so this uses the client's public lease calls, as ``concurrency()`` does."""
    import httpx
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + settings.lock_wait_seconds
    with get_client(sync_client=True) as client:
        while True:
            _free_slot_of_a_dead_holder(client, settings)
            try:
                taken = client.increment_concurrency_slots_with_lease(
                    names=[name], slots=1, mode="concurrency", lease_duration=LEASE_SECONDS).json()
                if not taken.get("limits"):
                    raise StackError(f"the control plane has no concurrency limit {name}")
                return UUID(taken["lease_id"])
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 423:  # 423 Locked: another command holds it
                    raise
                retry_after = float(exc.response.headers.get("Retry-After") or 1)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(name)
            time.sleep(min(max(retry_after, 0.5), 3, left))


@contextlib.contextmanager
def _renewed(lease_id: UUID) -> Iterator[None]:
    """Renew the slot's lease while the block runs, release it after. A command that is
    killed stops renewing: its slot frees itself within LEASE_SECONDS, or at once when the
    next command on this machine finds its holder gone."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        try:
            with accountlease.renewing(lambda: client.renew_concurrency_lease(lease_id, lease_duration=LEASE_SECONDS),
                                       LEASE_SECONDS / 4, "the stack's slot"):
                yield
        finally:
            with contextlib.suppress(Exception):
                client.release_concurrency_slots_with_lease(lease_id)


@contextlib.contextmanager
def stack_lock(settings: StackSettings) -> Iterator[None]:
    """Hold the stack's slot for the duration (re-entrant within one run)."""
    global _held_by_process
    if _held.get():
        yield
        return
    name = limit_name(settings)
    asyncio.run(_ensure_limit(name))
    try:
        lease_id = _acquire_slot(settings, name)
    except TimeoutError:
        who = _read_holder(settings)
        raise StackError(
            f"stack {settings.name_prefix} is busy: {who.get('flow', 'another command')} run "
            f"{who.get('run', '?')} ({who.get('id', '?')}) holds it; waited {settings.lock_wait_seconds} s. "
            "Try again when it has finished (see the control plane UI)") from None
    with _renewed(lease_id):
        token = _held.set(True)
        holder = _holder_file(settings)
        holder.parent.mkdir(parents=True, exist_ok=True)
        this_run = _this_run()
        holder.write_text(json.dumps({**this_run, **accountlease.owner(), "lease_id": str(lease_id)}))
        try:
            # ... and the lease in the account, which another operator's clone shares.
            with accountlease.held(settings, f"{this_run['flow']} ({this_run['run']})"):
                _held_by_process = True
                yield
        finally:
            _held_by_process = False
            _held.reset(token)
            holder.unlink(missing_ok=True)


def exclusive(fn: F) -> F:
    """Run a step's flow function while holding the stack's slot (put it under ``@flow``)."""

    @functools.wraps(fn)
    def wrapper(settings: StackSettings | None = None, *args, **kwargs):
        settings = settings or load_settings()
        get_logger().debug("taking the stack's slot %s", limit_name(settings))
        with stack_lock(settings):
            return fn(settings, *args, **kwargs)

    # Prefect validates parameters against the signature; give it the real types (the
    # step module's string annotations would otherwise be resolved in this module).
    wrapper.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
