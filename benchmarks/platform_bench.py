"""The platform's figures (a benchmark, not a test): one command, one table, the same
figures as JSON in ``<state dir>/benchmark.json``.

    .venv/bin/python -m benchmarks [--runs 10] [--throughput-runs 50] [--sections ...] [--keep]

By default it builds its own stack (prefix p2bench, state .stack-bench, ports
4866/4800/4801) from nothing, so it never touches yours; images are built beforehand
(not timed). ``--on-current-stack`` measures the stack of the environment's settings
instead, without bootstrapping or tearing anything down (the test suite runs one case
that way so that the benchmark cannot rot). Sections:

  bootstrap   bootstrap from nothing, then again with nothing changed, per step
  latency     per worker case, over --runs runs: created->pending, pending->running and
              created->running (median, p90, worst) beside the case's floor: a fresh
              interpreter on the worker host (a fresh container of the flow-runner image
              for Docker; the operator machine for case 2) importing Prefect's flow engine
              and reading the flow's code from the bucket, sampled before the first run
              and after each (the median of those)
  defaults    every worker case again with Prefect's default worker polling (10 s):
              what a user who installs Prefect by hand gets
  throughput  --throughput-runs runs of the testflow's my_flow submitted at once to the
              process pool, with one worker host and then two: runs per minute and what
              bounded it (pool limit, CPU, server)
  memory      peak memory of each host container and of the control plane (sampled
              every few seconds throughout)
  multiserver (not in the default list; the benchmark's own stack only) API requests per
              second through the platform's URL and case 3's created->running, with one
              server host, then with two API hosts behind the load balancer
              (STACK_SERVER_COUNT=2), then back to one; the memory section then holds the
              API host's, the redis host's and the load balancer's

Targets: created->running at most 1.5 x its floor for every case; two worker hosts at
least 1.8 x the throughput of one where the workers bound it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel

from stack import statebackend
from stack.steps import STEPS
from stack.settings import REPO_ROOT, StackSettings

BENCH_ENV = {
    "STACK_NAME_PREFIX": "p2bench",
    "STACK_STATE_DIR": str(REPO_ROOT / ".stack-bench"),
    "STACK_EMULATOR_PORT": "4866",
    "STACK_CONTROL_PLANE_PORT": "4800",
    "STACK_PLATFORM_PORT": "4801",
    "STACK_LOAD_BALANCER_PORT": "4802",
    "STACK_NIGHTLY_TEARDOWN_CRON": "",
    "STACK_BACKUP_CRON": "",
    "STACK_CONFIG_FILE": "/nonexistent/stack.toml",
}
SECTIONS = ("bootstrap", "latency", "defaults", "throughput", "memory", "multiserver")
DEFAULT_SECTIONS = SECTIONS[:-1]
# Multi-server mode: clients hammering the API at once, for how long, and the target of
# case 3's created->running median with two API hosts against one.
API_CLIENTS = 8
API_SECONDS = 20.0
MULTI_LATENCY_TARGET = 1.10
MULTI_CASE = "case3-s3-process"
# Sections that build the benchmark's stack again from nothing, each after the ones above
# (benchmarks/stack_bench.py, benchmarks/durability_bench.py): not in the default run.
OWN_STACK_SECTIONS = ("steps", "durability")
WORKER_CASES = ("case2-local-storage", "case3-s3-process", "case4-s3-docker")
STEP_ORDER = STEPS  # stack/steps.py holds the one list
FLOOR_TARGET = 1.5
PREFECT_DEFAULT_QUERY_SECONDS = 10   # PREFECT_WORKER_QUERY_SECONDS when nobody sets it
SCALE_TARGET = 1.8
CONFIGURE_TARGET_S = 45
SCALE_OUT = "one more worker host"   # the bootstrap row of the throughput section's scale-out
MULTI_OUT = "two API hosts"          # the multiserver section's bootstrap rows
MULTI_IN = "back to one server host"
THROUGHPUT_DEPLOYMENT = "bench-my-flow"
# What a flow run's process does before Prefect reports it Running, and no more: a fresh
# interpreter imports the flow engine and reads the flow's code from the bucket.
FLOOR_CODE = """
import json, sys, boto3
import prefect.flow_engine
a = json.loads(sys.argv[1])
s3 = boto3.client("s3", **a["client"])
s3.get_object(Bucket=a["bucket"], Key=a["key"])["Body"].read()
"""
# Times the command given in its argv, from before the interpreter starts to its exit.
TIMER_CODE = ("import subprocess, sys, time; t = time.monotonic(); "
              "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
              "print(round(time.monotonic() - t, 3))")


class Spread(BaseModel):
    median: float
    p90: float
    worst: float

    @classmethod
    def of(cls, values: list[float]) -> "Spread":
        ordered = sorted(values)
        p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
        return cls(median=round(statistics.median(ordered), 2), p90=round(p90, 2), worst=round(ordered[-1], 2))


class CaseLatency(BaseModel):
    case: str
    worker_settings: str                 # "stack" (0.5 s polling) or "prefect-default" (10 s)
    runs: int
    completed: int
    created_to_pending: Spread
    pending_to_running: Spread
    created_to_running: Spread
    floor_s: float | None = None         # median of the floor samples, one before and after each run
    ratio_to_floor: float | None = None  # created->running median / floor
    meets_target: bool | None = None


class Throughput(BaseModel):
    worker_hosts: int
    runs: int
    completed: int
    seconds: float
    runs_per_minute: float
    pool_limit: int | None
    peak_running: int
    worker_cpu_percent: float            # mean over the run, summed over the worker hosts (100 = one core)
    server_cpu_percent: float
    machine_cpu_percent: float           # all cores of this machine (100 = all busy)
    bound_by: str


class ApiFigures(BaseModel):
    """One server mode's figures (the multiserver section)."""
    api_hosts: int
    url: str
    requests: int
    errors: int
    requests_per_second: float
    server_cpu_percent: dict[str, float]   # each API host container (100 = one core)
    machine_cpu_percent: float
    created_to_running: Spread | None = None
    bound_by: str = ""


class BenchmarkReport(BaseModel):
    started_at: str
    finished_at: str | None = None
    stack: str
    machine: dict[str, int | str]
    runs: int
    bootstrap: dict[str, dict[str, float]] = {}      # label -> step -> seconds (+ "wall")
    bootstrap_outcomes: dict[str, dict[str, str]] = {}
    latency: list[CaseLatency] = []
    throughput: list[Throughput] = []
    peak_memory_mib: dict[str, float] = {}           # host container or control-plane process -> MiB
    multi_server: list[ApiFigures] = []
    targets: dict[str, bool | None] = {}


# -- running the stack's commands -------------------------------------------------------

def stack_env(own_stack: bool, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    if own_stack:
        env = {k: v for k, v in env.items() if not k.startswith("STACK_")} | BENCH_ENV
    return env | extra


def step(env: dict[str, str], module: str, *args: str) -> tuple[dict, float]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"python -m {module} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return (json.loads(proc.stdout) if proc.stdout.strip() else {}), seconds


def host_exec(host: str, *argv: str) -> str:
    done = subprocess.run(["docker", "exec", host, *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} on {host}: {done.stderr.strip()[-500:]}")
    return done.stdout


def worker_hosts(settings: StackSettings) -> list[str]:
    from stack import aws

    return [i["name"] for i in aws.running_hosts(settings, "worker")]


# -- floors ------------------------------------------------------------------------------

def floor_args(settings: StackSettings, inside: bool) -> str:
    from stack import platform

    client = {"region_name": settings.region}
    if settings.target == "local":
        aws = platform.flow_code_aws(settings)
        client |= {"aws_access_key_id": aws["aws_access_key_id"], "aws_secret_access_key": aws["aws_secret_access_key"],
                   "endpoint_url": aws["aws_client_parameters"]["endpoint_url"] if inside else settings.emulator_endpoint}
    return json.dumps({"client": client, "bucket": statebackend.code_bucket_name(settings),
                       "key": f"{platform.CODE_FOLDER}/testflow.py"})


def floor_sample(settings: StackSettings, case: str, host: str, image: str) -> float:
    """Seconds of one cold start of what the case's flow run process does first."""
    if case == "case2-local-storage":  # the operator's worker runs it on this machine
        env = {**os.environ, "AWS_ENDPOINT_URL": settings.emulator_endpoint or ""}
        out = subprocess.run([sys.executable, "-c", TIMER_CODE, sys.executable, "-c", FLOOR_CODE,
                              floor_args(settings, inside=False)], capture_output=True, text=True, env=env,
                             check=True).stdout
    elif case == "case3-s3-process":
        out = host_exec(host, "python3", "-c", TIMER_CODE, "/opt/prefect/venv/bin/python", "-c", FLOOR_CODE,
                        floor_args(settings, inside=True))
    else:
        out = host_exec(host, "python3", "-c", TIMER_CODE, "docker", "run", "--rm", "--network", "host", image,
                        "python", "-c", FLOOR_CODE, floor_args(settings, inside=True))
    return float(out.strip().splitlines()[-1])


# -- latency -----------------------------------------------------------------------------

def case_latency(settings: StackSettings, url: str, case: str, runs: int, worker_settings: str,
                 floor: Callable[[], float] | None = None) -> CaseLatency:
    """``runs`` runs of the case, one after the other. With ``floor``, a sample of the
    case's floor is taken after each run and before the first, so that runs and floor
    see the same machine: floors taken in one batch before the runs moved by 0.2 to
    0.4 s from one benchmark to the next, enough to swing a ratio across 1.5."""
    from flows.deploy import stage
    from stack import smoke

    floor_samples = [floor()] if floor else []

    def one() -> smoke.CaseResult:
        result = smoke.run_case(settings, url, case, smoke.CASE_DEPLOYMENTS[case])
        if floor:
            floor_samples.append(floor())
        return result

    if case == "case2-local-storage":
        query_seconds = PREFECT_DEFAULT_QUERY_SECONDS if worker_settings == "prefect-default" else 0.5
        with smoke.operator_worker(settings, url, stage(settings), query_seconds=query_seconds):
            results = [one() for _ in range(runs)]
    else:
        results = [one() for _ in range(runs)]
    floor_s = round(statistics.median(floor_samples), 2) if floor_samples else None
    c2p = [r.created_to_pending or 0.0 for r in results]
    c2r = [r.created_to_running or 0.0 for r in results]
    c2r_spread = Spread.of(c2r)
    ratio = round(c2r_spread.median / floor_s, 2) if floor_s else None
    return CaseLatency(
        case=case, worker_settings=worker_settings, runs=runs, completed=sum(r.state == "COMPLETED" for r in results),
        created_to_pending=Spread.of(c2p), pending_to_running=Spread.of([b - a for a, b in zip(c2p, c2r)]),
        created_to_running=c2r_spread, floor_s=floor_s, ratio_to_floor=ratio,
        meets_target=(ratio <= FLOOR_TARGET) if ratio is not None and worker_settings == "stack" else None)


class prefect_default_polling:
    """Restart the worker hosts' workers with Prefect's default polling (10 s) for the
    duration, through a systemd drop-in under /run (gone at the next boot whatever happens)."""

    UNITS = ("prefect-worker-process", "prefect-worker-docker")

    def __init__(self, settings: StackSettings, url: str, hosts: list[str]):
        self.settings, self.url, self.hosts = settings, url, hosts

    def _restart(self, host: str, dropin: bool) -> None:
        script = ["set -e"]
        for unit in self.UNITS:
            d = f"/run/systemd/system/{unit}.service.d"
            script.append(f"mkdir -p {d} && printf '[Service]\\nEnvironmentFile=/run/prefect-bench-defaults.env\\n' "
                          f"> {d}/bench.conf" if dropin else f"rm -rf {d}")
        script += [f"printf 'PREFECT_WORKER_QUERY_SECONDS={PREFECT_DEFAULT_QUERY_SECONDS}\\n' "
                   "> /run/prefect-bench-defaults.env" if dropin
                   else "rm -f /run/prefect-bench-defaults.env",
                   "systemctl daemon-reload", "systemctl restart " + " ".join(self.UNITS)]
        host_exec(host, "sh", "-c", "; ".join(script))

    def _wait_online(self) -> None:
        from stack import smoke

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if all(asyncio.run(smoke.workers_online(self.settings, self.url, self.hosts)).values()):
                return
            time.sleep(1)
        raise RuntimeError("the restarted workers did not come online in 120 s")

    def __enter__(self):
        for h in self.hosts:
            self._restart(h, dropin=True)
        self._wait_online()

    def __exit__(self, *exc):
        for h in self.hosts:
            self._restart(h, dropin=False)
        self._wait_online()


# -- throughput --------------------------------------------------------------------------

async def ensure_throughput_deployment(settings: StackSettings, url: str) -> str:
    """A deployment of the testflow's my_flow on the process pool, with case 3's code
    (same bucket, same pull steps)."""
    from stack import platform, smoke

    async with platform.prefect_client(settings, url) as client:
        case3 = await client.read_deployment_by_name(smoke.CASE_DEPLOYMENTS["case3-s3-process"])
        flow_id = await client.create_flow_from_name("testflow")
        await client.create_deployment(
            flow_id=flow_id, name=THROUGHPUT_DEPLOYMENT, entrypoint="testflow.py:my_flow",
            work_pool_name=case3.work_pool_name, work_queue_name=case3.work_queue_name,
            pull_steps=case3.pull_steps, parameters={"param": "bench"},
            parameter_openapi_schema={"type": "object", "properties": {"param": {}}, "required": ["param"]})
    return f"testflow/{THROUGHPUT_DEPLOYMENT}"


class CpuSampler:
    """Mean CPU of containers (docker's cumulative usage) and of the machine over a window."""

    def __init__(self, containers: list[str]):
        self.containers = containers

    @staticmethod
    def _machine() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    def _usage(self) -> dict[str, int]:
        out = {}
        for name in self.containers:
            cid = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", name], capture_output=True, text=True).stdout.strip()
            for path in (f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage",
                         f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat"):
                if Path(path).exists():
                    text = Path(path).read_text()
                    out[name] = int(text) if path.endswith("usage") else int(text.split()[1]) * 1000
                    break
        return out

    def __enter__(self):
        self.t0, self.u0, self.m0 = time.monotonic(), self._usage(), self._machine()
        return self

    def __exit__(self, *exc):
        elapsed = time.monotonic() - self.t0
        u1, m1 = self._usage(), self._machine()
        self.percent = {n: round((u1[n] - self.u0[n]) / 1e9 / elapsed * 100, 1) for n in u1 if n in self.u0}
        total, idle = m1[0] - self.m0[0], m1[1] - self.m0[1]
        self.machine_percent = round(100 * (1 - idle / total), 1) if total else 0.0


def throughput(settings: StackSettings, url: str, deployment: str, count: int) -> Throughput:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    from stack import platform
    from stack.localcloud.hosts import project_hosts
    from stack.localcloud.images import docker_client

    workers = worker_hosts(settings)
    server = platform.server_host(settings)
    containers = sorted(project_hosts(docker_client(), settings))
    running = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])))

    async def go() -> tuple[float, int, int, int | None]:
        async with platform.prefect_client(settings, url) as client:
            dep = await client.read_deployment_by_name(deployment)
            pool = await client.read_work_pool(dep.work_pool_name)
            started = time.monotonic()
            ids = list(await asyncio.gather(*[client.create_flow_run_from_deployment(dep.id) for _ in range(count)]))
            ids = [fr.id for fr in ids]
            peak, pending = 0, set(ids)
            while pending:
                peak = max(peak, len(await client.read_flow_runs(flow_run_filter=running, limit=200)))
                for fr in await client.read_flow_runs(flow_run_filter=FlowRunFilter(id={"any_": list(pending)})):
                    if fr.state and fr.state.is_final():
                        pending.discard(fr.id)
                        if fr.state.type == StateType.COMPLETED:
                            completed.append(fr.id)
                if time.monotonic() - started > 900:
                    raise RuntimeError(f"{len(pending)} of {count} runs not final after 900 s")
                await asyncio.sleep(0.5)
            return time.monotonic() - started, peak, len(ids), pool.concurrency_limit

    completed: list = []
    with CpuSampler(containers) as cpu:
        seconds, peak, submitted, limit = asyncio.run(go())
    worker_cpu = round(sum(cpu.percent.get(w, 0.0) for w in workers), 1)
    server_cpu = cpu.percent.get(server, 0.0)
    if limit and peak >= limit:
        bound = f"pool limit ({limit} runs at once)"
    elif cpu.machine_percent >= 90:
        bound = f"this machine's {os.cpu_count()} cores, which all hosts share ({cpu.machine_percent:.0f}% busy)"
    elif worker_cpu >= 90 * len(workers):
        bound = "worker host CPU"
    elif server_cpu >= 90:
        bound = "server CPU"
    else:
        bound = "flow-run start-up and polling (nothing saturated)"
    return Throughput(worker_hosts=len(workers), runs=submitted, completed=len(completed), seconds=round(seconds, 1),
                      runs_per_minute=round(len(completed) / seconds * 60, 1), pool_limit=limit, peak_running=peak,
                      worker_cpu_percent=worker_cpu, server_cpu_percent=server_cpu,
                      machine_cpu_percent=cpu.machine_percent, bound_by=bound)


# -- multi-server mode ---------------------------------------------------------------------

def api_figures(settings: StackSettings, url: str, runs: int) -> ApiFigures:
    """API_CLIENTS clients reading flow runs (``POST /flow_runs/filter``, what the UI and
    the CLI do most) through ``url`` for API_SECONDS, then case 3's latency."""
    import httpx

    from stack import aws, platform, tls

    api_hosts = sorted(i["name"] for i in aws.running_hosts(settings) if i["role"] in ("server", "api"))
    user, password = platform.auth_string(settings).split(":", 1)
    counts = {"ok": 0, "errors": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + API_SECONDS

    def client() -> None:
        with httpx.Client(verify=str(tls.ca_file(settings)), auth=(user, password), timeout=30) as http:
            while time.monotonic() < deadline:
                try:
                    ok = http.post(f"{url}/flow_runs/filter", json={"limit": 10}).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    counts["ok" if ok else "errors"] += 1

    with CpuSampler(api_hosts) as cpu:
        threads = [threading.Thread(target=client) for _ in range(API_CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    busiest = max(cpu.percent.values(), default=0.0)
    bound = ("this machine's CPU (every host shares it)" if cpu.machine_percent >= 85
             else "the API host's CPU (one Python process per host)" if busiest >= 85 else "neither CPU: latency")
    figures = ApiFigures(api_hosts=len(api_hosts), url=url, requests=counts["ok"], errors=counts["errors"],
                         requests_per_second=round(counts["ok"] / API_SECONDS, 1), server_cpu_percent=cpu.percent,
                         machine_cpu_percent=cpu.machine_percent, bound_by=bound)
    figures.created_to_running = case_latency(settings, url, MULTI_CASE, runs, "stack").created_to_running
    return figures


def multi_server_section(report: "BenchmarkReport", settings: StackSettings, url: str, own: bool, runs: int) -> None:
    """One server host, then two API hosts behind the load balancer, then back to one."""
    from stack import platform

    report.multi_server.append(api_figures(settings, url, runs))
    result, wall = step(stack_env(own, STACK_SERVER_COUNT="2"), "flows.bootstrap")
    record_bootstrap(report, MULTI_OUT, result, wall)
    multi = settings.model_copy(update={"server_count": 2})
    report.multi_server.append(api_figures(multi, platform.operator_api_url(multi), runs))
    result, wall = step(stack_env(own), "flows.bootstrap")
    record_bootstrap(report, MULTI_IN, result, wall)


# -- memory ------------------------------------------------------------------------------

class MemorySampler(threading.Thread):
    """Peak memory (docker stats, page cache excluded) of the stack's host containers and
    peak RSS (VmHWM) of the control plane's server and runner, until stopped."""

    def __init__(self, settings: StackSettings):
        super().__init__(daemon=True)
        self.settings, self.peak, self.done = settings, {}, threading.Event()

    def sample(self) -> None:
        for name, cid in self._hosts().items():
            mib = _container_mib(cid)
            if mib is not None:
                self.peak[name] = max(self.peak.get(name, 0.0), mib)
        home = self.settings.state_path / "controlplane"
        for proc in ("server", "runner"):
            try:
                status = Path(f"/proc/{int((home / f'{proc}.pid').read_text())}/status").read_text()
                kib = int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM:")).split()[1])
                self.peak[f"control plane {proc}"] = max(self.peak.get(f"control plane {proc}", 0.0), round(kib / 1024, 1))
            except (OSError, ValueError, StopIteration):
                pass

    def _hosts(self) -> dict[str, str]:
        out = subprocess.run(["docker", "ps", "--no-trunc", "--filter", f"label=stack.project={self.settings.name_prefix}",
                              "--format", "{{.Names}} {{.ID}}"], capture_output=True, text=True).stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def run(self) -> None:
        while not self.done.wait(3):
            self.sample()


def _container_mib(cid: str) -> float | None:
    """A container's memory in use without reclaimable page cache, as ``docker stats``
    computes it, read from its cgroup (v1 or v2): docker stats itself shows 0 here."""
    for usage_file, stat_file, inactive in (
            (f"/sys/fs/cgroup/memory/docker/{cid}/memory.usage_in_bytes",
             f"/sys/fs/cgroup/memory/docker/{cid}/memory.stat", "total_inactive_file"),
            (f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/memory.current",
             f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/memory.stat", "inactive_file")):
        try:
            usage = int(Path(usage_file).read_text())
            stat = dict(line.split() for line in Path(stat_file).read_text().splitlines())
        except (OSError, ValueError):
            continue
        return round((usage - int(stat.get(inactive, 0))) / 2**20, 1)
    return None


# -- report ------------------------------------------------------------------------------

def table(report: BenchmarkReport) -> str:
    out = [f"benchmark of stack {report.stack}, {report.machine['cores']} cores, {report.runs} runs per case"]
    if report.bootstrap:
        out += ["", "bootstrap, per step (s)      " + "".join(f"{s:>11}" for s in STEP_ORDER) + "       wall"]
        for label, steps in report.bootstrap.items():
            outcomes = report.bootstrap_outcomes.get(label, {})
            cells = "".join(f"{steps.get(s, 0):>7.1f} {outcomes.get(s, '')[:3]:>3}" for s in STEP_ORDER)
            out.append(f"  {label:<26}{cells}  {steps['wall']:9.1f}")
    if report.latency:
        out += ["", "latency (s)                               created->pending    pending->running    created->running"
                    "      floor  ratio  target",
                "  case                  workers           med   p90  worst    med   p90  worst    med   p90  worst"]
        for c in report.latency:
            cells = "".join(f" {s.median:6.2f}{s.p90:6.2f}{s.worst:6.2f} "
                            for s in (c.created_to_pending, c.pending_to_running, c.created_to_running))
            target = "" if c.meets_target is None else ("met" if c.meets_target else "MISSED")
            floor_s = f"{c.floor_s:6.2f}" if c.floor_s else f"{'-':>6}"   # no floor for the default rows
            ratio = f"{c.ratio_to_floor:6.2f}" if c.ratio_to_floor else f"{'-':>6}"
            out.append(f"  {c.case:<21} {c.worker_settings:<15}{cells} {floor_s} {ratio}  {target}  "
                       f"({c.completed}/{c.runs} completed)")
    if report.throughput:
        out += ["", "throughput         runs  done  seconds  runs/min  pool limit  peak running  worker CPU %  "
                    "server CPU %  machine CPU %  bound by"]
        for t in report.throughput:
            out.append(f"  {t.worker_hosts} worker host(s) {t.runs:5d} {t.completed:5d} {t.seconds:8.1f} "
                       f"{t.runs_per_minute:9.1f} {t.pool_limit or 0:11d} {t.peak_running:13d} "
                       f"{t.worker_cpu_percent:12.0f} {t.server_cpu_percent:13.0f} {t.machine_cpu_percent:14.0f}  {t.bound_by}")
    if report.multi_server:
        out += ["", "API through the platform URL   hosts  req/s  errors  machine CPU %  created->running med  bound by"]
        for f in report.multi_server:
            c2r = f"{f.created_to_running.median:6.2f}" if f.created_to_running else "   n/a"
            out.append(f"  {'load balancer' if f.api_hosts > 1 else 'server host':<29}{f.api_hosts:>6}"
                       f"{f.requests_per_second:>7.1f}{f.errors:>8}{f.machine_cpu_percent:>15.1f}{c2r:>22}  {f.bound_by}")
    if report.peak_memory_mib:
        out += ["", "peak memory (MiB)"] + [f"  {k:<32} {v:8.1f}" for k, v in sorted(report.peak_memory_mib.items())]
    if report.targets:
        out += ["", "targets"] + [f"  {k:<60} {'n/a' if v is None else ('met' if v else 'MISSED')}"
                                  for k, v in report.targets.items()]
    return "\n".join(out)


DOCS = REPO_ROOT / "docs" / "performance.md"
DOCS_BEGIN = "<!-- benchmark: begin (written by python -m benchmarks --write-docs; edits here are replaced) -->"
DOCS_END = "<!-- benchmark: end -->"


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def markdown(report: BenchmarkReport) -> str:
    """The report as docs/performance.md shows it: the latest run only, with its date and machine."""
    m = report.machine
    out = [f"Measured {report.started_at[:10]} by `python -m benchmarks` on {m.get('cores')} cores "
           f"({m.get('cpu', 'unknown CPU')}, {int(m.get('memory_mib', 0)) / 1024:.0f} GiB), {report.runs} runs per "
           "case; seconds unless said."]
    if report.bootstrap:
        out += ["", "| bootstrap | " + " | ".join(STEP_ORDER) + " | wall |", "|---" * (len(STEP_ORDER) + 2) + "|"]
        out += [f"| {label} | " + " | ".join(f"{steps.get(s, 0):.1f}" for s in STEP_ORDER) + f" | {steps['wall']:.1f} |"
                for label, steps in report.bootstrap.items()]
    if report.latency:
        out += ["", "| case | workers | created->pending | pending->running | created->running (median, p90, worst) "
                    "| floor | ratio to floor | target |", "|---" * 8 + "|"]
        for c in report.latency:
            target = "" if c.meets_target is None else ("met" if c.meets_target else "missed")
            out.append(f"| {c.case} | {c.worker_settings} | {c.created_to_pending.median:.2f} | "
                       f"{c.pending_to_running.median:.2f} | {c.created_to_running.median:.2f}, "
                       f"{c.created_to_running.p90:.2f}, {c.created_to_running.worst:.2f} | "
                       f"{f'{c.floor_s:.2f}' if c.floor_s else '-'} | "
                       f"{f'{c.ratio_to_floor:.2f}' if c.ratio_to_floor else '-'} | {target} |")
    if report.throughput:
        out += ["", "| throughput | runs completed | seconds | runs a minute | peak running | worker CPU % | "
                    "server CPU % | machine CPU % | bound by |", "|---" * 9 + "|"]
        out += [f"| {t.worker_hosts} worker host(s) | {t.completed}/{t.runs} | {t.seconds:.1f} | "
                f"{t.runs_per_minute:.1f} | {t.peak_running} | {t.worker_cpu_percent:.0f} | {t.server_cpu_percent:.0f} | "
                f"{t.machine_cpu_percent:.0f} | {t.bound_by} |" for t in report.throughput]
    if report.multi_server:
        out += ["", "| API through the platform URL | API hosts | requests a second | errors | machine CPU % | "
                    "created->running median | bound by |", "|---" * 7 + "|"]
        out += [f"| {'the load balancer' if f.api_hosts > 1 else 'the server host'} | {f.api_hosts} | "
                f"{f.requests_per_second:.1f} | {f.errors} | {f.machine_cpu_percent:.0f} | "
                f"{f'{f.created_to_running.median:.2f}' if f.created_to_running else '-'} | {f.bound_by} |"
                for f in report.multi_server]
    if report.peak_memory_mib:
        out += ["", "| peak memory | MiB |", "|---|---|"]
        out += [f"| {k} | {v:.1f} |" for k, v in sorted(report.peak_memory_mib.items())]
    if report.targets:
        out += ["", "| target | |", "|---|---|"]
        out += [f"| {k} | {'n/a' if v is None else ('met' if v else 'missed')} |" for k, v in report.targets.items()]
    return "\n".join(out)


def write_docs(report: BenchmarkReport, path: Path = DOCS) -> None:
    """Replace the benchmark's block of docs/performance.md with this report."""
    text = path.read_text()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        raise SystemExit(f"{path} has no benchmark block ({DOCS_BEGIN} ... {DOCS_END}): nothing written")
    head, rest = text.split(DOCS_BEGIN, 1)
    tail = rest.split(DOCS_END, 1)[1]
    path.write_text(f"{head}{DOCS_BEGIN}\n{markdown(report)}\n{DOCS_END}{tail}")


def record_bootstrap(report: BenchmarkReport, label: str, result: dict, wall: float) -> None:
    report.bootstrap[label] = {s["step"]: s["seconds"] for s in result["steps"]} | {"wall": round(wall, 1)}
    report.bootstrap_outcomes[label] = {s["step"]: s["outcome"] for s in result["steps"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="runs per case for latency (default 10)")
    parser.add_argument("--throughput-runs", type=int, default=50, help="runs submitted at once (default 50)")
    parser.add_argument("--sections", default=",".join(DEFAULT_SECTIONS),
                        help=f"comma-separated, of {', '.join(SECTIONS + OWN_STACK_SECTIONS)} (default: "
                             f"{', '.join(DEFAULT_SECTIONS)})")
    parser.add_argument("--cases", default=",".join(WORKER_CASES), help="comma-separated worker cases for latency")
    parser.add_argument("--on-current-stack", action="store_true",
                        help="measure the stack of the environment's settings; bootstrap nothing, tear nothing down")
    parser.add_argument("--keep", action="store_true", help="leave the benchmark's own stack up")
    parser.add_argument("--write-docs", action="store_true",
                        help="also write the figures into docs/performance.md (its benchmark block)")
    parser.add_argument("--docs-from", metavar="JSON", type=Path,
                        help="write docs/performance.md's benchmark block from a report written before; run nothing")
    args = parser.parse_args(argv)
    if args.docs_from:
        write_docs(BenchmarkReport.model_validate_json(args.docs_from.read_text()))
        print(f"wrote the figures of {args.docs_from} into {DOCS}")
        return
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = ([s for s in sections if s not in SECTIONS + OWN_STACK_SECTIONS]
               + [c for c in cases if c not in WORKER_CASES])
    if unknown or args.runs < 1:
        parser.error(f"unknown section or case: {', '.join(unknown)}" if unknown else "--runs must be at least 1")
    later = [s for s in sections if s in OWN_STACK_SECTIONS]
    if later and args.on_current_stack:
        parser.error(f"{', '.join(later)} build the benchmark's own stack from nothing: not with --on-current-stack")
    sections = [s for s in sections if s in SECTIONS]
    if sections and not args.on_current_stack and "bootstrap" not in sections:
        parser.error("the benchmark's own stack starts from nothing: keep the bootstrap section, or use --on-current-stack")
    if args.on_current_stack and "multiserver" in sections:
        parser.error("multiserver changes the stack's server hosts: only on the benchmark's own stack")
    if args.on_current_stack and "bootstrap" in sections:
        parser.error("--on-current-stack measures a running stack: leave out the bootstrap section")
    if sections:
        _platform_sections(args, sections, cases)
    keep = ["--keep"] if args.keep else []
    if "steps" in later:
        from benchmarks import stack_bench

        stack_bench.main(["--runs", str(args.runs), *keep])
    if "durability" in later:
        from benchmarks import durability_bench

        durability_bench.main(keep)


def _platform_sections(args: argparse.Namespace, sections: list[str], cases: list[str]) -> None:
    own = not args.on_current_stack

    env = stack_env(own)
    os.environ.update({k: v for k, v in env.items() if k.startswith("STACK_")})
    from stack import controlplane, platform
    from stack.localcloud.flow_runner import published_image
    from stack.settings import load_settings

    settings = load_settings()
    report = BenchmarkReport(started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             stack=settings.name_prefix, runs=args.runs,
                             machine={"cores": os.cpu_count() or 0, "cpu": _cpu_model(),
                                      "memory_mib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20})
    out_file = settings.state_path / "benchmark.json"
    memory = MemorySampler(settings)
    memory.start()
    try:
        if "bootstrap" in sections:
            step(env, "flows.teardown", "--all", "--yes")
            for label in ("from nothing", "nothing changed"):
                result, wall = step(env, "flows.bootstrap")
                record_bootstrap(report, label, result, wall)
        with controlplane.client_settings(settings):
            url = platform.operator_api_url(settings)
            hosts = worker_hosts(settings)
            image = published_image(settings).reference
            if "latency" in sections:
                for case in cases:
                    report.latency.append(case_latency(
                        settings, url, case, args.runs, "stack",
                        floor=functools.partial(floor_sample, settings, case, hosts[0], image)))
                    print(f"latency {case}: done", file=sys.stderr, flush=True)
            if "defaults" in sections:
                with prefect_default_polling(settings, url, hosts):
                    for case in cases:
                        report.latency.append(case_latency(settings, url, case, args.runs, "prefect-default", None))
            if "throughput" in sections:
                deployment = asyncio.run(ensure_throughput_deployment(settings, url))
                report.throughput.append(throughput(settings, url, deployment, args.throughput_runs))
                if own:
                    # The scale-out is a bootstrap row too: configure runs on the new host only.
                    result, wall = step(stack_env(own, STACK_WORKER_COUNT="2"), "flows.bootstrap")
                    record_bootstrap(report, SCALE_OUT, result, wall)
                    report.throughput.append(throughput(settings, url, deployment, args.throughput_runs))
            if "multiserver" in sections:
                multi_server_section(report, settings, url, own, args.runs)
    finally:
        memory.done.set()
        memory.join()
        memory.sample()
        if "memory" in sections:
            report.peak_memory_mib = memory.peak
        for label in ("from nothing", SCALE_OUT):
            if label in report.bootstrap:
                seconds = report.bootstrap[label].get("configure", 0)
                report.targets[f"configure of new hosts <= {CONFIGURE_TARGET_S} s ({label}: {seconds:.1f} s)"] = (
                    seconds <= CONFIGURE_TARGET_S)
        ratios = [c.meets_target for c in report.latency if c.meets_target is not None]
        report.targets[f"created->running <= {FLOOR_TARGET} x floor, every case"] = all(ratios) if ratios else None
        if len(report.throughput) == 2:
            one, two = report.throughput
            scale = two.runs_per_minute / one.runs_per_minute if one.runs_per_minute else 0
            workers_bound = "pool limit" in one.bound_by or "worker" in one.bound_by
            report.targets[f"two worker hosts >= {SCALE_TARGET} x one (x{scale:.2f}; one host bound by: "
                           f"{one.bound_by})"] = (scale >= SCALE_TARGET) if workers_bound else None
        if len(report.multi_server) == 2 and all(f.created_to_running for f in report.multi_server):
            one, two = report.multi_server
            ratio = two.created_to_running.median / one.created_to_running.median
            report.targets[f"created->running with two API hosts <= {MULTI_LATENCY_TARGET} x one "
                           f"(x{ratio:.2f})"] = ratio <= MULTI_LATENCY_TARGET
        report.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(report.model_dump_json(indent=2))
        if own and not args.keep:
            step(env, "flows.teardown", "--all", "--yes", "--emulator")
            step(env, "flows.controlplane", "stop")
    print(table(report))
    print(f"\nJSON: {out_file}")
    if args.write_docs:
        write_docs(report)
        print(f"written into {DOCS}")
