"""The configure step: the Ansible playbooks over the dynamic inventory, a per-host recap
table as an artifact, and a clear failure naming the host, task and message."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from flows.hosts import HostsReport
from flows.provision import ProvisionOutputs
from stack import aws, backups, capacity, platform, statebackend, steps, tls, upgrade
from stack.ansible import (UNREACHABLE_DELAY_SECONDS, UNREACHABLE_RETRIES, AnsibleError, HostRecap, HostsUnreachable,
                           PlaybookResult, WaitsOnFailedHost, install_vars, retry_if_unreachable, run_playbook)
from stack.localcloud import flow_runner
from stack.localcloud.registry import registry_host
from stack.lock import exclusive
from stack.proc import StackError
from stack.localcloud import emulator
from stack.oncalendar import host_timers
from stack.settings import StackSettings, load_settings

PLAYBOOK = "site.yml"
# Builds the flow-runner image on a worker host (STACK_FLOW_RUNNER_BUILD=host; aws).
BUILD_PLAYBOOK = "flow_runner_image.yml"
# The operator's ECR token for that build's push, in a 0600 file of the state directory
# for the run's length.
REGISTRY_TOKEN_PREFIX = ".registry-token-"
# The worker role's task that waits for the server's API (ansible/roles/prefect_worker).
WORKER_WAITS_FOR_SERVER = "Wait until the Prefect API answers from this host"
# Multi-server mode: the API hosts' waits for the server host (prefect_server role).
API_HOST_WAITS_FOR_SERVER = ("Wait until the server host's API runs this Prefect (its migration done)",
                             "Wait until the server host's API is ready (its migration done)")
# Which machines the last successful configure converged, and with what configuration.
CONFIGURED_FILE = "configured-hosts.json"


class ConfigureReport(BaseModel):
    recap: dict[str, dict[str, int]]   # host -> ok / changed / failed / unreachable
    changed: int
    attempts: int
    flow_runner_image: str             # the reference the worker hosts pulled: register and deploy use it
    platform_api_url: str
    prefect_version: str = ""          # what the platform runs now (STACK_PREFECT_VERSION)
    upgrade: dict | None = None        # when this run upgraded it: from, to, backup, drained_runs, drain_seconds


# The folder whose maker has the turn in the API hosts' rolling restart (multi-server
# mode; ansible/roles/prefect_server/tasks/restart.yml).
ROLLING_RESTART_TURN = "rolling-restart.lock"


def extravars(settings: StackSettings, ui_api_url: str, data_volume_id: str | None = None,
              image: flow_runner.FlowRunnerImage | None = None, repository_url: str = "") -> dict:
    """Variables of the playbooks. Secrets are not among them: the auth string is read
    on the controller from its 0600 file (group_vars/all.yml), so it never lands in
    ansible-runner's files."""
    return {
        **image_vars(settings, image, repository_url),
        # aws: the role mounts this EBS volume; local: the host container already has
        # the named volume at the same path, so the role has nothing to mount.
        "prefect_server_data_volume_id": data_volume_id if settings.target == "aws" and data_volume_id else "",
        **install_vars(settings),
        "prefect_server_ui_api_url": ui_api_url,
        "prefect_worker_limit": capacity.worker_concurrency(settings),
        **backup_vars(settings),
        **safety_stop_vars(settings),
        **multi_server_vars(settings),
    }


def multi_server_vars(settings: StackSettings) -> dict:
    """Multi-server mode (STACK_SERVER_COUNT 2 or more): where the hosts' clients find the
    API (the load balancer) and the servers find Redis. Empty with one server host, so
    that mode's configuration stays what it was."""
    if not settings.multi_server:
        return {}
    return {"prefect_server_multi": True,
            "stack_api_address": platform.api_address(settings) or "",
            "prefect_server_redis_address": platform.redis_address(settings),
            # An API host starts its server only once the server host runs this Prefect
            # (in an upgrade, the server host migrates the database first).
            "prefect_server_version": settings.prefect_version,
            # The redis host's certificate is the stack CA's; ElastiCache's is public.
            "prefect_server_redis_ca": "/etc/prefect/ca.pem" if settings.target == "local" else ""}


def image_vars(settings: StackSettings, image: flow_runner.FlowRunnerImage | None, repository_url: str) -> dict:
    """The image the worker hosts pull before their workers start, and how their Docker
    reaches the stack's repository: on aws ECR's credential helper with the instance
    role; on local the twin's registry, whose certificate the stack's CA signed. A failed
    pull of Prefect's official image (Docker Hub: rate limits) does not fail configure:
    the Docker worker pulls it at the first run."""
    host = registry_host(repository_url) if repository_url else ""
    return {"prefect_worker_flow_runner_image": image.reference if image else "",
            "prefect_worker_flow_runner_image_required": image is None or image.extra_pip_packages is None,
            "docker_ecr_registry": host if settings.target == "aws" else "",
            "docker_stack_ca_registry": host if settings.target == "local" else ""}


def safety_stop_vars(settings: StackSettings) -> dict:
    """Every host's safety stop (base_system role): its calendar ('' disarms it), its time
    of day and time zone (the program's lateness check)."""
    timers = host_timers(settings)
    return {"base_system_safety_stop_on_calendar": timers["safety_stop"],
            "base_system_safety_stop_at": timers["safety_stop_at"],
            "base_system_safety_stop_timezone": timers["timezone"]}


def backup_vars(settings: StackSettings) -> dict:
    """The server host's nightly backup (its systemd timer, on STACK_BACKUP_CRON in the
    schedules' time zone) and its S3 client's environment: the region, and on local the
    emulated cloud as the hosts reach it. On aws the client signs with the instance role;
    the emulator checks no signature, so on local the twin of that role is a placeholder
    name, not a key of anyone's."""
    env = {"AWS_DEFAULT_REGION": settings.region}
    if settings.target == "local":
        env |= {"AWS_ENDPOINT_URL": emulator.inner_endpoint(), "AWS_ACCESS_KEY_ID": "instance-role-twin",
                "AWS_SECRET_ACCESS_KEY": "instance-role-twin"}
    return {
        "prefect_server_backup_bucket": statebackend.code_bucket_name(settings),
        "prefect_server_backup_name_prefix": settings.name_prefix,
        "prefect_server_backup_on_calendar": host_timers(settings)["backup"],
        "prefect_server_backup_env": env,
    }


def configuration_key(settings: StackSettings, variables: dict) -> str:
    """What every host's configuration depends on: configure's files, the settings but
    the number of worker hosts, the auth string, the CA and the playbook's variables.
    A scale-out leaves it unchanged."""
    return steps.step_key("configure", settings.model_copy(update={"worker_count": 1}), (variables,), values={})


def host_identities(settings: StackSettings, running: list[dict]) -> dict[str, str]:
    """Running host (of ``running``, aws.project_instances) -> what identifies its
    machine: the host container's id on local (a re-created container is a new, blank
    machine even for the same instance), the instance id on aws."""
    if settings.target != "local":
        return {i["name"]: i["id"] for i in running}
    from stack.localcloud import hosts as host_containers
    from stack.localcloud.images import docker_client

    containers = host_containers.project_hosts(docker_client(), settings)
    return {i["name"]: containers[i["name"]].id for i in running if i["name"] in containers}


def hosts_needing_playbook(record: dict, key: str, identities: dict[str, str], server: str) -> list[str] | None:
    """Which running hosts the playbook must run on, when the last configure converged
    the others with the same configuration: the new ones after a scale-out, none after a
    scale-in. None means all of them: no record, another configuration, no known host,
    or a new server host (on aws its new address goes into every worker's settings)."""
    if record.get("key") != key or not identities:
        return None
    done = record.get("hosts", {})
    new = sorted(name for name, ident in identities.items() if done.get(name) != ident)
    if server in new or len(new) == len(identities):
        return None
    return new


def _record_path(settings: StackSettings):
    return settings.state_path / CONFIGURED_FILE


def _read_record(settings: StackSettings) -> dict:
    path = _record_path(settings)
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except ValueError:  # a damaged record only costs a full run
        return {}


def recap_row(r: HostRecap) -> dict[str, int]:
    return {"ok": r.ok, "changed": r.changed, "failed": r.failed, "unreachable": r.unreachable}


@task(name="ansible_playbook", retries=UNREACHABLE_RETRIES, retry_delay_seconds=UNREACHABLE_DELAY_SECONDS,
      retry_condition_fn=retry_if_unreachable, cache_policy=NO_CACHE)
def apply_playbook(settings: StackSettings, playbook: str, variables: dict, limit: str | None,
                   servers: frozenset[str], secrets: tuple[str, ...] = ()) -> tuple[PlaybookResult, int]:
    """Run ``playbook`` on ``limit`` (None: every host); the result and which attempt it
    was. A host that could not be reached, or whose connection was lost, fails the
    attempt with HostsUnreachable, and Prefect runs it again (a host still booting, an
    SSH connection reset); the hosts that did converge change nothing the second time."""
    from prefect.runtime import task_run

    attempt = task_run.run_count or 1
    if attempt > 1:
        get_run_logger().warning("attempt %d of %d of the playbook (a host was unreachable)", attempt,
                                 UNREACHABLE_RETRIES + 1)
    # A server host that failed (its server keeps exiting) stops the worker hosts' wait
    # for its API at once, rather than after the wait's two minutes.
    waits = WaitsOnFailedHost(servers, frozenset({WORKER_WAITS_FOR_SERVER, *API_HOST_WAITS_FOR_SERVER}))
    result = run_playbook(settings, playbook, extravars=variables, limit=limit,
                          secrets=(platform.auth_string(settings), *platform.multi_server_secrets(settings), *secrets),
                          waits=waits)
    create_table_artifact(key=f"{settings.name_prefix}-ansible-recap", description=f"Ansible recap of {playbook}",
                          table=[{"host": h, **recap_row(r)} for h, r in sorted(result.recap.items())])
    if result.first_failure or result.status != "successful":
        host, failed_task, msg = result.first_failure or ("-", playbook, result.status)
        failure = HostsUnreachable if result.hosts_to_retry() else AnsibleError
        raise failure(f"configure failed on host {host}, task '{failed_task}': {msg}")
    return result, attempt


def build_flow_runner_image(settings: StackSettings, image: flow_runner.FlowRunnerImage, repository: str,
                            variables: dict, running: list[dict]) -> None:
    """The stack's flow-runner image built on the first worker host and pushed to the
    stack's repository, unless the repository has its tag (a new image: a new Prefect,
    new pins, a changed Dockerfile). The push logs in with the operator's ECR token,
    handed to Ansible in a 0600 file deleted after the run (never in its variables,
    environment or logs): the instance role may only pull."""
    log = get_run_logger()
    tag = image.reference.rsplit(":", 1)[1]
    if flow_runner.in_repository(settings, repository, tag):
        return
    workers = sorted(i["name"] for i in running if i["role"] == "worker")
    if not workers:
        raise StackError(f"the flow-runner image {image.reference} is not in the stack's repository and no worker "
                         "host runs to build it: python -m flows.bootstrap makes the hosts first")
    if settings.target == "local":
        flow_runner.ensure_docker_hub_stand_in(settings, repository)
    for left in settings.state_path.glob(f"{REGISTRY_TOKEN_PREFIX}*"):  # by a configure that was killed
        left.unlink(missing_ok=True)
    user, password = flow_runner.registry_login(settings)
    log.info("building the flow-runner image %s on %s: the repository lacks it", image.reference, workers[0])
    started = time.monotonic()
    fd, name = tempfile.mkstemp(dir=settings.state_path, prefix=REGISTRY_TOKEN_PREFIX)
    try:
        with os.fdopen(fd, "w") as f:  # mkstemp makes it 0600
            f.write(password)
        build_vars = {**variables, **flow_runner.host_build_vars(settings, image, repository, Path(name), user)}
        apply_playbook(settings, BUILD_PLAYBOOK, build_vars, workers[0], frozenset(), secrets=(password,))
    finally:
        Path(name).unlink(missing_ok=True)
    log.info("built and pushed %s on %s in %.0f s", image.reference, workers[0], time.monotonic() - started)


# Configure's parts besides the playbooks, each a task run of its own in the UI (with its
# logs); the playbooks' task (apply_playbook) is the one that retries.
@task(name="publish_flow_runner_image", cache_policy=NO_CACHE)
def publish_flow_runner_image(settings: StackSettings) -> tuple[str, flow_runner.FlowRunnerImage]:
    """The stack's repository and the flow-runner image the worker hosts pull from it:
    pushed from here (local; bootstrap's prebuild has usually built it by now), or named
    by the tag a worker host builds below (aws)."""
    repository = flow_runner.repository_url(settings)
    if flow_runner.builds_on_host(settings):
        return repository, flow_runner.published_image(settings, repository)
    return repository, flow_runner.publish(settings, flow_runner.flow_runner_image(settings), repository)


@task(name="server_certificate", cache_policy=NO_CACHE)
def server_certificate(settings: StackSettings) -> bool:
    """The server certificate names every address clients use; a replaced server instance
    (new IPs on aws) gets a new one, and the playbook delivers it. Whether it was issued."""
    reissued = tls.ensure_server_certificate(settings, platform.server_tls_names(settings))
    if settings.multi_server and settings.target == "local":
        # The redis host's TLS port (the servers verify it with the stack's CA).
        reissued |= tls.ensure_server_certificate(settings, [platform.redis_address(settings)], stem="redis")
    if reissued:
        get_run_logger().info("issued the platform's server certificate (CA %s)", tls.ca_file(settings))
    return reissued


@task(name="end_runs_of_gone_hosts", cache_policy=NO_CACHE)
def end_runs_of_gone_hosts(settings: StackSettings, api_url: str, workers: list[str]) -> list[str]:
    """Runs left unfinished on a worker host that was removed (a scale-in) or replaced can
    never end: they end Crashed now that the platform knows its hosts."""
    crashed = asyncio.run(platform.crash_runs_of_gone_hosts(settings, api_url, workers))
    if crashed:
        get_run_logger().warning("marked %d runs Crashed: their worker host is gone (%s)", len(crashed),
                                 ", ".join(crashed))
    return crashed


@flow(name="configure")
@exclusive
def configure(settings: StackSettings | None = None, provisioned: ProvisionOutputs | None = None,
              booted: HostsReport | None = None, playbook: str = PLAYBOOK) -> ConfigureReport:
    """Configure every host with Ansible (its playbook task retries unreachable hosts).

    ``provisioned`` and ``booted`` are the earlier steps' outputs (the data volume to
    mount, the hosts just created); run alone, it configures whatever the inventory finds."""
    settings = settings or load_settings()
    log = get_run_logger()
    change = upgrade.check_version_change(settings)  # a downgrade stops here, before any change
    if booted is not None and booted.created:
        log.info("new hosts to configure: %s", ", ".join(booted.created))
    ui_api_url = platform.operator_api_url(settings)
    volume_id = provisioned.data_volume.id if provisioned else None
    platform.make_stack_secrets(settings)  # made once per stack (run alone, configure may be first)
    # The flow-runner image goes to the stack's repository before the playbook, whose
    # worker hosts pull it.
    repository, image = publish_flow_runner_image(settings)
    variables = extravars(settings, ui_api_url, volume_id, image, repository)
    reissued = server_certificate(settings)
    key = configuration_key(settings, variables)
    running = aws.running_hosts(settings)
    identities = host_identities(settings, running)
    record = _read_record(settings)
    # A scale-out runs the playbook on the new hosts only, a scale-in on none: the others
    # would converge with 0 changes, in about 30 s. Run alone, configure converges them all.
    scope = (hosts_needing_playbook(record, key, identities, platform.server_host(settings))
             if booted and not reissued else None)
    if scope:
        log.info("configuring the new hosts only (%s): the others were configured with the same "
                 "settings and files", ", ".join(scope))
    elif scope == []:
        log.info("every host was configured with the same settings and files: no playbook to run")
    if flow_runner.builds_on_host(settings):
        build_flow_runner_image(settings, image, repository, variables, running)
    server_is_new = booted is not None and platform.server_host(settings) in booted.created
    upgraded = _prepare_upgrade(settings, change, ui_api_url, server_is_new) if change.is_upgrade else None
    _record_path(settings).unlink(missing_ok=True)  # written again once this run succeeded
    # A rolling restart's turn that a killed run left (this command holds the stack's lock).
    if (settings.state_path / ROLLING_RESTART_TURN).is_dir():
        (settings.state_path / ROLLING_RESTART_TURN).rmdir()
    try:
        recap: dict[str, dict[str, int]] = {}
        attempts = 0
        if scope != []:
            servers = frozenset(i["name"] for i in running if i["role"] == "server")
            result, attempts = apply_playbook(settings, playbook, variables, ",".join(scope) if scope else None,
                                              servers)
            recap = {host: recap_row(r) for host, r in result.recap.items()}
        if not recap and scope != []:
            raise AnsibleError("the inventory found no hosts: are the instances running and tagged "
                               f"Project={settings.name_prefix}? (python -m flows.status)")
    except StackError as failure:  # AnsibleError included
        if upgraded:
            _roll_back_if_the_server_is_down(settings, change, upgraded["backup"], failure, provisioned, booted)
        raise
    # Remember what is converged now (with a scale-out, the earlier hosts stay converged).
    converged = {h: ident for h, ident in identities.items() if h in recap or (scope is not None and h not in scope)}
    if playbook == PLAYBOOK:  # another playbook converges only part of a host
        _record_path(settings).write_text(json.dumps({"key": key, "hosts": converged}, indent=2, sort_keys=True))
    upgrade.record_version(settings)
    if upgrade.resume_pools_paused_by_upgrade(settings, ui_api_url):
        log.info("resumed the work pools %s (paused for the upgrade)", ", ".join(upgrade.HOST_POOLS))
    end_runs_of_gone_hosts(settings, ui_api_url, [i["name"] for i in running if i["role"] == "worker"])
    changed = sum(v["changed"] for v in recap.values())
    log.info("configured %d hosts, %d changes", len(recap), changed)
    if upgraded:
        log.info("upgraded the platform from Prefect %s to %s (backup %s)", upgraded["from"], upgraded["to"],
                 upgraded["backup"])
    return ConfigureReport(recap=recap, changed=changed, attempts=attempts, flow_runner_image=image.reference,
                           platform_api_url=ui_api_url, prefect_version=settings.prefect_version, upgrade=upgraded)


def _roll_back_if_the_server_is_down(settings: StackSettings, change: upgrade.VersionChange, backup_location: str,
                                     failure: Exception, provisioned: ProvisionOutputs | None,
                                     booted: HostsReport | None) -> None:
    """An upgrade whose new server does not start (its database migration failed, or the
    new Prefect does not run: systemd saw it exit with an error) goes back by itself: the
    backup taken before it restored with the server stopped, the old Prefect installed
    and started by configure on the old version, and configure fails saying so in one
    line. A failure that left the server answering (on either version), or still
    starting (a long migration), is an ordinary one: the next bootstrap carries on from
    configure. A rollback that fails too says both, and how to restore by hand."""
    log = get_run_logger()
    # The server host's own API: in multi-server mode the balancer still answers from an
    # API host on the old Prefect.
    if platform.ready(settings, platform.server_host_api_url(settings)) or not _server_crashed(settings):
        return
    old = settings.model_copy(update={"prefect_version": change.running})
    bucket = statebackend.code_bucket_name(settings)
    chosen = next((b for b in backups.available(settings, bucket) if b.location == backup_location), None)
    why = " ".join(str(failure).split())[:700]  # one line, whatever Ansible said
    by_hand = (f"restore it by hand: STACK_PREFECT_VERSION={change.running} python -m flows.restore --backup "
               f"{backup_location.rsplit('/', 1)[-1]}")
    if chosen is None:  # it was taken by this run: only a deleted object gets here
        raise StackError(f"the upgrade from Prefect {change.running} to {change.wanted} failed ({why}) and its "
                         f"backup {backup_location} is gone; restore another with python -m flows.restore") from None
    log.error("the upgrade to Prefect %s failed and its server does not start (%s); rolling back: restoring %s "
              "and Prefect %s", change.wanted, why, chosen.name, change.running)
    try:
        workers = [i["name"] for i in aws.running_hosts(settings, "worker")]
        backups.restore(old, platform.server_host(old), chosen, worker_hosts=workers, start_server=False,
                        api_hosts=[i["name"] for i in aws.running_hosts(settings, "api")])
        upgrade.record_version(old)
        upgrade.mark_pools_paused(old)  # the backup holds them paused: configure resumes them
        configure(old, provisioned, booted)
    except Exception as exc:  # noqa: BLE001 - the first failure must not be lost behind this one
        rolled = " ".join(str(exc).split())[:300]
        raise StackError(f"the upgrade from Prefect {change.running} to {change.wanted} failed ({why}), and rolling "
                         f"back failed too ({rolled}); {by_hand}") from None
    raise StackError(
        f"the upgrade from Prefect {change.running} to {change.wanted} failed ({why}); rolled back: the platform "
        f"runs Prefect {change.running} again on the backup {chosen.name}, taken after its pools were drained. "
        f"Set STACK_PREFECT_VERSION={change.running} to stay there, or fix the cause and bootstrap again") from None


def _server_crashed(settings: StackSettings) -> bool:
    """The server's unit exited with an error since configure (re)started it: systemd
    restarted it at least once, or gave up. A server still starting (a long migration:
    running, never restarted) has not failed; nor has one that was never installed."""
    from stack.hostexec import run_on_host

    try:
        shown = run_on_host(settings, platform.server_host(settings),
                            ["systemctl", "show", "-p", "NRestarts", "-p", "ActiveState", "-p", "Result",
                             "prefect-server"])
    except StackError:  # the host does not answer: nothing says the server failed
        return False
    props = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    return (props.get("ActiveState") == "failed" or int(props.get("NRestarts") or 0) > 0
            or props.get("Result", "success") not in ("success", ""))


def _prepare_upgrade(settings: StackSettings, change: upgrade.VersionChange, url: str, server_is_new: bool) -> dict:
    """Before the new Prefect goes in: the worker hosts' pools drained (paused, their runs
    in flight ended), then the backup an upgrade returns to, taken while the platform runs
    the old version and named for both. On a server host created by this bootstrap (the
    compute was torn down; the database waits on its volume) no old server runs: the
    latest backup, which the teardown took, is copied under that name instead."""
    log = get_run_logger()
    bucket = statebackend.code_bucket_name(settings)
    report = {"from": change.running, "to": change.wanted, "drained_runs": 0, "drain_seconds": 0.0}
    taken_before = [b for b in backups.available(settings, bucket) if b.name.endswith(f"-{change.backup_label}.dump")]
    if server_is_new:
        latest = backups.available(settings, bucket)
        if not latest:
            raise StackError(f"upgrading Prefect {change.running} -> {change.wanted}: no backup of the platform exists "
                             f"to return to; set STACK_PREFECT_VERSION={change.running}, run python -m flows.bootstrap, "
                             "then upgrade")
        copy = backups.labelled_copy(settings, latest[-1], change.backup_label)
        log.info("%s: no server runs the old version; its latest backup %s, copied as %s, is the one to return to",
                 change.describe(), latest[-1].name, copy.name)
        return report | {"backup": copy.location}
    try:
        # The old server must answer (a busy machine may take a while): the drain and
        # the backup need it.
        platform.wait_ready(settings, url, timeout=120)
    except StackError:
        if not taken_before:
            raise StackError(f"upgrading Prefect {change.running} -> {change.wanted}: the platform does not answer, "
                             "so its pools cannot be drained nor its database backed up first; bring it back on "
                             f"its version (STACK_PREFECT_VERSION={change.running} python -m flows.bootstrap), then "
                             "upgrade") from None
        # An earlier attempt of this upgrade drained, backed up and stopped half-way.
        log.info("%s: the platform does not answer; an earlier attempt took the backup %s", change.describe(),
                 taken_before[-1].name)
        return report | {"backup": taken_before[-1].location}
    log.info("%s: draining the worker hosts' pools, then backing up the platform first", change.describe())
    runs, seconds = upgrade.drain_pools(settings, url)
    report |= {"drained_runs": runs, "drain_seconds": round(seconds, 1)}
    log.info("%d runs were in flight in %s; they ended in %.0f s", runs, ", ".join(upgrade.HOST_POOLS), seconds)
    taken = backups.take(settings, platform.server_host(settings), bucket, label=change.backup_label)
    return report | {"backup": taken.location}

if __name__ == "__main__":
    from stack.cli import main, parse_step_args

    parse_step_args("flows.configure", __doc__)
    main(lambda s: configure(s))
