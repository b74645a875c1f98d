"""The one command: every step, in order, as sub-flows of one parent flow, each handed
the typed outputs of the steps before it.

    python -m flows.bootstrap                 # STACK_TARGET=local (default) or aws
    python -m flows.bootstrap --verify        # full smoke even when nothing changed
    python -m flows.bootstrap --force         # ignore the steps' keys: run every step
    python -m flows.bootstrap --from STEP     # run STEP and every later one (earlier: by their keys)
    python -m flows.bootstrap --only STEP     # run only STEP

A step whose key (files it reads, settings, inputs; see stack/steps.py) equals that of
its last successful run, and whose probe finds what it made, is skipped: Prefect's task
cache holds its result. So a second bootstrap takes seconds, and a failed one starts
again at the step that failed. When nothing that flow runs meet has changed (no step
ran, or only a configure that changed no task), a health check (platform ready, every
worker online) stands in for the full smoke.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.filesystems import LocalFileSystem
from pydantic import BaseModel

from flows.bake import BakeReport, bake
from flows.configure import ConfigureReport, configure
from flows.deploy import DeployReport, deploy
from flows.hosts import HostsReport, hosts
from flows.preflight import PreflightReport, preflight
from flows.provision import ProvisionOutputs, provision
from flows.register import RegisterReport, register
from flows.restore import RestoreReport, restore
from flows.smoke import SmokeReport, health_check, smoke_test
from stack import platform, steps, tls
from stack.localcloud import hosts as host_containers
from stack.localcloud.bake import start_prebuild
from stack.localcloud.images import remove_superseded_images
from stack.lock import exclusive
from stack.proc import StackError
from stack.settings import StackSettings, load_settings


class StepOutcome(BaseModel):
    step: str
    outcome: str            # ran, skipped, failed, not run
    seconds: float = 0.0
    summary: str = ""
    finished_at: str | None = None


class BootstrapReport(BaseModel):
    preflight: PreflightReport
    bake: BakeReport
    provision: ProvisionOutputs
    hosts: HostsReport
    configure: ConfigureReport
    restore: RestoreReport
    registration: RegisterReport
    deployments: DeployReport
    smoke: SmokeReport
    platform_api_url: str
    control_plane_url: str
    steps: list[StepOutcome]
    seconds: dict[str, float]


def summarize(step: str, result: BaseModel) -> str:
    """A few words on what a step did, for the table."""
    r = result
    match step:
        case "preflight":
            return f"{r.target} in {r.region}, account {r.account}"
        case "bake":
            if r.method != "ami":
                return "stock AMI" if r.method == "stock" else "container image (the hosts step bakes it)"
            return f"{'baked' if r.built else 'found'} {r.ami_id}"
        case "provision":
            return f"{len(r.instances)} instances, " + ("applied" if r.applied else "no changes") + \
                ("; the emulated cloud had restarted" if r.cloud_was_lost else "")
        case "hosts":
            return f"{len(r.created)} created, {len(r.started)} started, {len(r.removed)} removed, {len(r.unchanged)} unchanged"
        case "configure":
            if not r.recap:
                # e.g. hosts were only removed, or only the stack's own code changed
                return "every host already configured with the same settings and files"
            return f"{r.changed} tasks changed on {len(r.recap)} hosts"
        case "restore":
            return f"restored {r.backup['name']}" if r.restored else r.reason
        case "register":
            return f"{len(r.blocks)} blocks, {len(r.work_pools)} work pools"
        case "deploy":
            return f"{len(r.deployments)} deployments"
        case "smoke":
            passed = sum(1 for c in r.cases if c.get("ok"))
            return f"{passed}/{len(r.cases)} " + ("workers online (health check)" if r.health_only else "cases passed")
    return ""


def steps_file(settings: StackSettings):
    """Each step's last outcome (any bootstrap), for python -m flows.status."""
    return settings.state_path / "steps.json"


def last_run_file(settings: StackSettings):
    """The step table of the last bootstrap."""
    return settings.state_path / "last-bootstrap.json"


class StepRunner:
    """Runs the steps in order, each through a cached task keyed by stack/steps.py."""

    def __init__(self, settings: StackSettings, force: bool, from_step: str | None, only: str | None):
        self.settings, self.force, self.from_step, self.only = settings, force, from_step, only
        self.outcomes: dict[str, StepOutcome] = {}
        # What failed at an earlier bootstrap (a step, or the smoke itself): until a full
        # smoke passes, what came after it is not trusted to a health check.
        self.failed_before = sorted(n for n, o in self._known().items() if o.get("outcome") == "failed")
        # Step results persist in the state directory, through a block on the control plane.
        block = f"{settings.name_prefix}-step-results"
        LocalFileSystem(basepath=str(settings.state_path / "step-results")).save(block, overwrite=True)
        self.storage = f"local-file-system/{block}"
        self.log = get_run_logger()

    def forced(self, name: str) -> bool:
        if self.force or self.only == name or self.last_failed(name):
            return True
        return self.from_step is not None and steps.STEPS.index(name) >= steps.STEPS.index(self.from_step)

    def _known(self) -> dict[str, dict]:
        path = steps_file(self.settings)
        return json.loads(path.read_text()) if path.exists() else {}

    def last_failed(self, name: str) -> bool:
        """A step that failed last time runs again even if its key matches an older success
        (it may have changed things half-way)."""
        return self._known().get(name, {}).get("outcome") == "failed"

    def run(self, name: str, fn: Callable, *inputs, **kwargs):
        """Run step ``name`` as ``fn(settings, *inputs, **kwargs)`` unless its key and probe say skip."""
        if self.only and self.only != name:
            self.outcomes[name] = StepOutcome(step=name, outcome="not run")
            return None
        started = time.monotonic()
        self.log.info("step %s ...", name)
        try:
            if name in steps.ALWAYS_RUN:
                result = fn(self.settings, *inputs, **kwargs)
                # restore only counts as having run when it restored something
                skipped = name == "restore" and not result.restored
            else:
                result, skipped = self._cached(name, fn, inputs, kwargs)
        except Exception as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self._record(name, "failed", started, first_line)
            failed = StackError(f"bootstrap failed at step {name}: {first_line}")
            failed.exit_code = getattr(exc, "exit_code", 1)  # a refusal stays a refusal (2)
            raise failed from exc
        self._record(name, "skipped" if skipped else "ran", started, summarize(name, result))
        return result

    def _cached(self, name: str, fn: Callable, inputs: tuple, kwargs: dict):
        key = steps.step_key(name, self.settings, inputs)
        settings = self.settings

        @task(name=f"{name}-step", cache_key_fn=lambda ctx, params: params["key"], persist_result=True,
              result_storage=self.storage, result_serializer="pickle")
        def step_task(key: str, inputs: tuple):
            return fn(settings, *inputs, **kwargs)

        state = step_task.with_options(refresh_cache=self.forced(name))(key, inputs, return_state=True)
        result = state.result()
        skipped = state.name == "Cached"
        probe = steps.PROBES.get(name)
        if skipped and probe is not None and not probe(settings, result):
            self.log.info("%s: its key is unchanged but what it made is gone; running it", name)
            state = step_task.with_options(refresh_cache=True)(key, inputs, return_state=True)
            result, skipped = state.result(), False
        if skipped:
            self.log.info("%s: skipped, nothing it reads changed since its last success", name)
        return result, skipped

    def _record(self, name: str, outcome: str, started: float, summary: str) -> None:
        self.outcomes[name] = StepOutcome(
            step=name, outcome=outcome, seconds=round(time.monotonic() - started, 2), summary=summary,
            finished_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        self.log.info("step %s: %s in %.1f s%s", name, outcome, self.outcomes[name].seconds,
                      f" ({summary})" if summary else "")
        # Kept for python -m flows.status: the last outcome of each step.
        known = self._known()
        known[name] = self.outcomes[name].model_dump()
        steps_file(self.settings).write_text(json.dumps(known, indent=2))

    def needs_full_smoke(self, configured: ConfigureReport | None) -> bool:
        if self.failed_before:
            self.log.info("an earlier bootstrap failed at %s: running the full smoke", ", ".join(self.failed_before))
        return full_smoke_needed(self.failed_before, self.outcomes, configured)

    def table(self) -> list[StepOutcome]:
        return [self.outcomes.get(s, StepOutcome(step=s, outcome="not run")) for s in steps.STEPS]


def full_smoke_needed(failed_before: list[str], outcomes: dict[str, StepOutcome],
                      configured: ConfigureReport | None) -> bool:
    """Did anything change what flow runs meet, or has it not been proven since it did?
    A step or smoke that failed at an earlier bootstrap (until a full smoke passes), new
    instances or hosts, restored data, new pools or deployments, or a configure that
    changed something on a host. A configure that re-ran and changed nothing leaves a
    health check enough."""
    if failed_before:
        return True
    ran = {s for s, o in outcomes.items() if o.outcome == "ran"}
    # (A bake that ran changes no running host: new instances come with provision.)
    if ran & {"provision", "hosts", "restore", "register", "deploy"}:
        return True
    return "configure" in ran and configured is not None and configured.changed > 0


def markdown_table(rows: list[StepOutcome]) -> str:
    lines = ["| step | outcome | seconds | result |", "|---|---|---|---|"]
    lines += [f"| {r.step} | {r.outcome} | {r.seconds:.1f} | {r.summary} |" for r in rows]
    return "\n".join(lines)


def _remove_superseded_images(log) -> None:
    """Once the platform works: the images this bootstrap replaced (a baked host image
    is about 1.8 GB), unless a container still uses them. Never fails the bootstrap."""
    try:
        remove_superseded_images()  # logs what it removed
    except Exception as exc:  # noqa: BLE001
        log.info("could not remove earlier images (%s); they only take disk space", exc)


@flow(name="bootstrap")
@exclusive
def bootstrap(settings: StackSettings | None = None, force: bool = False, from_step: str | None = None,
              only: str | None = None, verify: bool = False) -> BootstrapReport | None:
    """Stand up the whole platform (its data comes back from the data volume or a backup)."""
    settings = settings or load_settings()
    log = get_run_logger()
    for value, option in ((from_step, "--from"), (only, "--only")):
        if value is not None and value not in steps.STEPS:
            raise StackError(f"{option} {value!r}: no such step; use one of {', '.join(steps.STEPS)}")
    runner = StepRunner(settings, force, from_step, only)
    try:
        # settings -> cloud resources -> hosts -> configured platform -> its data -> runs
        checked = runner.run("preflight", preflight)
        # A stack without hosts (new, or after the nightly teardown) needs the hosts'
        # images: they build in the background while Terraform runs (already started by
        # the command line's start_early_builds; this is for the Run button).
        if settings.target == "local" and start_prebuild(settings):
            log.info("building the hosts' images in the background (baked host, flow runner)")
        if only in (None, "bake", "provision", "configure"):
            # Made (or read from the account) before any step's key is computed: a key
            # reads the secrets' caches and makes nothing; --only smoke needs none of this.
            platform.make_stack_secrets(settings)
        if settings.target == "local":
            # A host that powered itself off (its safety stop) is a stopped instance, as
            # EC2 would show it: provision's probe then fails and provision starts it.
            host_containers.record_self_stopped(settings)
        # The AMI new instances boot (found by its key, or baked on a builder instance).
        baked = runner.run("bake", bake)
        provisioned = runner.run("provision", provision, baked)
        booted = runner.run("hosts", hosts, provisioned)
        configured = runner.run("configure", configure, provisioned, booted)
        url = configured.platform_api_url if configured else platform.operator_api_url(settings)
        # A new or lost data volume leaves an empty database: the latest backup fills it.
        restored = runner.run("restore", restore, only_if_empty=True)
        # The Docker pool and case 4 use the image configure had the worker hosts pull.
        image = configured.flow_runner_image if configured else None
        registered = runner.run("register", register, url, image)
        deployed = runner.run("deploy", deploy, url, image)
        if verify or only == "smoke" or runner.needs_full_smoke(configured):
            smoked = runner.run("smoke", smoke_test, url)
        else:
            workers = [i.name for i in provisioned.instances if i.role == "worker"]
            smoked = runner.run("smoke", health_check, url, workers)
        if settings.target == "local":
            _remove_superseded_images(log)
    finally:
        rows = runner.table()
        last_run_file(settings).write_text(json.dumps([r.model_dump() for r in rows], indent=2))
        create_markdown_artifact(key=f"{settings.name_prefix}-bootstrap", markdown=markdown_table(rows),
                                 description="What each step of the bootstrap did")
    if only:
        return None
    report = BootstrapReport(
        preflight=checked, bake=baked, provision=provisioned, hosts=booted, configure=configured, restore=restored,
        registration=registered, deployments=deployed, smoke=smoked, platform_api_url=url,
        control_plane_url=settings.control_plane_api_url.removesuffix("/api"), steps=rows,
        seconds={r.step: r.seconds for r in rows},
    )
    log.info("platform API %s (auth string in %s)", report.platform_api_url, platform.auth_file(settings))
    return report


def print_summary(settings: StackSettings, rows: list[StepOutcome]) -> None:
    """The step table and both UIs, on stderr (stdout carries the JSON result)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="bootstrap")
    for col in ("step", "outcome", "seconds", "result"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    colour = {"ran": "green", "skipped": "cyan", "failed": "red", "not run": "dim"}
    for r in rows:
        table.add_row(r.step, f"[{colour.get(r.outcome, '')}]{r.outcome}[/]", f"{r.seconds:.1f}", r.summary)
    console = Console(stderr=True)
    console.print(table)
    console.print(f"platform UI      {platform.operator_api_url(settings).removesuffix('/api')} "
                  f"(auth string in {platform.auth_file(settings)}, CA certificate {tls.ca_file(settings)})")
    console.print(f"control plane UI {settings.control_plane_api_url.removesuffix('/api')}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from stack.cli import step_parser

    parser = step_parser("flows.bootstrap", __doc__)
    parser.add_argument("--force", action="store_true", help="ignore the steps' keys: run every step")
    parser.add_argument("--from", dest="from_step", metavar="STEP", help="run STEP and every later step")
    parser.add_argument("--only", metavar="STEP", help="run only STEP")
    parser.add_argument("--verify", action="store_true", help="run the full smoke even when nothing changed")
    args = parser.parse_args(argv)
    for value, option in ((args.from_step, "--from"), (args.only, "--only")):
        if value is not None and value not in steps.STEPS:
            parser.error(f"{option} {value!r}: no such step; use one of {', '.join(steps.STEPS)}")
    if args.from_step and args.only:
        parser.error("--from and --only do not go together; use one")
    return args


if __name__ == "__main__":
    from stack.cli import main

    args = parse_args()

    def run(settings: StackSettings):
        try:
            return bootstrap(settings, force=args.force, from_step=args.from_step, only=args.only,
                             verify=args.verify)
        finally:
            if last_run_file(settings).exists():
                print_summary(settings, [StepOutcome(**r) for r in json.loads(last_run_file(settings).read_text())])

    from stack.localcloud.bake import start_early_builds

    main(run, before_control_plane=start_early_builds)
    sys.exit(0)
