"""The platform: the Prefect server on the server host, as its clients see it.

The API auth string ("user:password") is generated once per stack into
``<state>/platform-auth`` (mode 0600) and handed to every client; it is never printed,
and the process runner redacts it from every line it logs.

Clients reach the server over HTTPS only: a reverse proxy on the server host terminates
TLS on port 4200 with a certificate of the stack's own CA (``stack/tls.py``), and the
Prefect server itself listens on the host's loopback. Every client verifies with that CA.
"""

from __future__ import annotations

import hashlib
import secrets
import ssl
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

from stack import accountsecrets, tls
from stack.localcloud.emulator import inner_endpoint
from stack.proc import StackError
from stack.settings import EMULATOR_ACCESS_KEY, EMULATOR_SECRET_KEY, StackSettings

AUTH_USER = "admin"
SERVER_PORT = 4200   # the TLS port of the reverse proxy; Prefect itself is on loopback
# Work pools and queues of the platform (the runbook's queues are `default` and `dev`).
PROCESS_POOL = "process"          # process worker on the worker host(s)
DOCKER_POOL = "docker"            # Docker worker on the worker host(s)
OPERATOR_POOL = "operator-process"  # process worker on the operator machine (case 2)
QUEUES = ("default", "dev")
# What each pool is for, shown in the UI's Work Pools page.
POOL_DESCRIPTIONS = {
    PROCESS_POOL: "Process workers on the worker hosts (<host>-process): flow code pulled from the code bucket.",
    DOCKER_POOL: "Docker workers on the worker hosts (<host>-docker): each run in a container of the flow-runner "
                 "image.",
    # Why not Ready most of the time: a worker that lived on a laptop would be Not Ready
    # whenever the laptop sleeps anyway, and it would poll the server day and night.
    OPERATOR_POOL: "A process worker on the operator's machine, for code in a folder there (case 2). The smoke "
                   "starts one for its run, so between smokes this pool shows Not Ready: that is expected. "
                   "To run such deployments yourself, start one with the platform's client settings "
                   "(README, 'Using the platform'): prefect worker start --pool operator-process",
}
# The folder of the code bucket that deployments/prefect.yaml pushes the testflow to.
CODE_FOLDER = "testflow"
# Block names.
FLOW_CODE_CREDENTIALS = "flow-code"   # aws-credentials block the hosts' pull steps use
FLOW_CODE_BUCKET = "flow-code"        # s3-bucket block of the code bucket


def auth_file(settings: StackSettings) -> Path:
    return settings.state_path / "platform-auth"


AUTH_SECRET = accountsecrets.AUTH_STRING


def auth_string(settings: StackSettings, create: bool = False) -> str:
    """The stack's API auth string: a secret in the account (Secrets Manager), cached in
    a 0600 file; never printed. Made only with ``create`` (make_stack_secrets)."""
    def make() -> str:
        return f"{AUTH_USER}:{secrets.token_urlsafe(24)}"

    return accountsecrets.stack_secret(settings, AUTH_SECRET, auth_file(settings), make if create else None).strip()


def database_password_file(settings: StackSettings) -> Path:
    return settings.state_path / "database-password"


def redis_auth_file(settings: StackSettings) -> Path:
    return settings.state_path / "redis-auth-token"


def database_password(settings: StackSettings, create: bool = False) -> str:
    """Multi-server mode: the password the API hosts give PostgreSQL on the server host
    (a secret in the account, cached 0600, never printed)."""
    make = (lambda: secrets.token_urlsafe(24)) if create else None
    return accountsecrets.stack_secret(settings, accountsecrets.DATABASE_PASSWORD, database_password_file(settings),
                                       make).strip()


def redis_auth_token(settings: StackSettings, create: bool = False) -> str:
    """Multi-server mode: Redis's AUTH token (ElastiCache's, or the redis host's
    requirepass): letters and digits only, as ElastiCache requires."""
    make = (lambda: secrets.token_hex(24)) if create else None
    return accountsecrets.stack_secret(settings, accountsecrets.REDIS_AUTH_TOKEN, redis_auth_file(settings),
                                       make).strip()


def make_stack_secrets(settings: StackSettings) -> None:
    """The stack's own secrets, made once in the account (or read from it, and cached):
    the API auth string, the CA, the SSH key pair. Bootstrap makes them before it computes
    any step's key (the keys read them; reading makes nothing), and so do provision and
    configure, which also run alone."""
    from stack.terraform import ssh_public_key

    auth_string(settings, create=True)
    tls.ensure_ca(settings, create=True)
    ssh_public_key(settings, create=True)
    if settings.multi_server:
        database_password(settings, create=True)
        redis_auth_token(settings, create=True)


def auth_string_digest(settings: StackSettings) -> bytes:
    """A hash of the auth string from its cache file, without reading the account or
    making anything (the configure step's key): empty when it is not made yet."""
    path = auth_file(settings)
    return hashlib.sha256(path.read_text().strip().encode()).digest() if path.exists() else b""


def server_host(settings: StackSettings) -> str:
    return settings.host_name(0)


def api_url(settings: StackSettings, server_public_ip: str | None = None) -> str:
    """The API as the operator sees it: the server host's, or in multi-server mode the
    load balancer's (``server_public_ip`` is then the balancer's DNS name on aws)."""
    if settings.target == "local":
        port = settings.load_balancer_port if settings.multi_server else settings.platform_port
        return f"https://127.0.0.1:{port}/api"
    if not server_public_ip:
        raise StackError("the server host has no public IP yet; run provision first")
    return f"https://{server_public_ip}:{SERVER_PORT}/api"


def load_balancer_dns(settings: StackSettings) -> str | None:
    """Multi-server mode on aws: the public API load balancer's DNS name, the operator's
    (None before provision)."""
    from stack import aws

    elb = aws.client(settings, "elbv2")
    try:
        found = elb.describe_load_balancers(Names=[settings.load_balancer_name])["LoadBalancers"]
    except elb.exceptions.LoadBalancerNotFoundException:
        return None
    return found[0]["DNSName"] if found else None


def multi_server_secrets(settings: StackSettings) -> tuple[str, ...]:
    """What a log must never show in multi-server mode (a journal line of a server that
    fails to start can quote its Redis URL): the database password, Redis's token and
    that token as it appears in a URL."""
    if not settings.multi_server:
        return ()
    from urllib.parse import quote

    token = redis_auth_token(settings)
    return (database_password(settings), token, quote(token, safe=""))


def redis_address(settings: StackSettings) -> str:
    """Multi-server mode: the Redis the servers share (the redis host on local,
    ElastiCache's primary endpoint on aws: an output of the compute module)."""
    if settings.target == "local":
        return f"{settings.name_prefix}-redis"
    from stack.terraform import COMPUTE, Terraform

    address = Terraform(settings, COMPUTE).state_outputs().get("redis_address")
    if not address:
        raise StackError("the multi-server mode's Redis is not provisioned yet; run python -m flows.bootstrap")
    return address


def internal_load_balancer_dns(settings: StackSettings) -> str | None:
    """Multi-server mode on aws: the internal API load balancer's DNS name, the hosts'
    (an output of the compute module; None before provision)."""
    from stack.terraform import COMPUTE, Terraform

    found = Terraform(settings, COMPUTE).state_outputs().get("internal_load_balancer")
    return found.get("dns_name") if found else None


def api_address(settings: StackSettings) -> str | None:
    """How the hosts (workers, flow runs) reach the API, on port 4200: in multi-server
    mode a load balancer (its container's name on local; on aws the internal one's DNS
    name, since the public one's resolves to public IPs, where the hosts' security group
    does not admit them); else None, and Ansible uses the server host (group_vars/all.yml)."""
    if not settings.multi_server:
        return None
    return settings.load_balancer_name if settings.target == "local" else internal_load_balancer_dns(settings)


def running_server(settings: StackSettings) -> dict | None:
    """The running server instance (id, name, public IP ...) as EC2 reports it, if any."""
    from stack import aws

    servers = aws.running_hosts(settings, "server")
    return servers[0] if servers else None


def server_public_ip(settings: StackSettings) -> str | None:
    """The server instance's public IP on aws (None on local, where it is not needed)."""
    if settings.target == "local":
        return None
    server = running_server(settings)
    return server.get("public_ip") if server else None


def server_tls_names(settings: StackSettings) -> list[str]:
    """The names the server certificate must carry now (on aws: with the running server's IPs)."""
    names = tls.server_names(settings, running_server(settings) if settings.target == "aws" else None)
    if settings.multi_server:
        # Every API host serves the same certificate; clients name a balancer: the hosts'
        # (api_address), and on aws the operator's public one too.
        public = load_balancer_dns(settings) if settings.target == "aws" else None
        names += [n for n in (api_address(settings), public) if n]
    return list(dict.fromkeys(names))


def operator_api_url(settings: StackSettings) -> str:
    """The operator's API URL, looking up the server's public IP on aws."""
    if settings.target == "local":
        return api_url(settings)
    if settings.multi_server:
        return api_url(settings, load_balancer_dns(settings))
    return api_url(settings, server_public_ip(settings))


def server_host_api_url(settings: StackSettings) -> str:
    """The server host's own API (ec2-0), not the balancer's in multi-server mode."""
    return operator_api_url(settings.model_copy(update={"server_count": 1}))


def flow_code_aws(settings: StackSettings) -> dict:
    """AWS settings of the flow-code credentials block: the emulator as the hosts see it
    on local; nothing on aws, so the instance role is used."""
    if settings.target == "local":
        return {"aws_access_key_id": EMULATOR_ACCESS_KEY, "aws_secret_access_key": EMULATOR_SECRET_KEY,
                "region_name": settings.region, "aws_client_parameters": {"endpoint_url": inner_endpoint()}}
    return {"region_name": settings.region}


def client_env(settings: StackSettings, url: str) -> dict[str, str]:
    """Environment of a Prefect client process on the operator machine."""
    return {
        "PREFECT_API_URL": url,
        "PREFECT_API_AUTH_STRING": auth_string(settings),
        "PREFECT_API_KEY": "",  # an API key would take precedence over the auth string
        "PREFECT_API_SSL_CERT_FILE": str(tls.ca_file(settings)),
        "PREFECT_HOME": str(settings.state_path / "platform-client"),
        **settings.aws_env(),
    }


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None   # a redirect is an answer of its own here, never followed


def _fetch(url: str, auth: str | None, timeout: float, context: ssl.SSLContext | None) -> tuple[int, bytes]:
    """HTTP status and body of a GET ((0, b"") when nothing answers or TLS verification
    fails). ``context`` verifies an https URL (``tls.ssl_context``)."""
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + b64encode(auth.encode()).decode())
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirect)
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, b""


def get(url: str, auth: str | None = None, timeout: float = 5, context: ssl.SSLContext | None = None) -> int:
    """HTTP status of a GET (0 when nothing answers or TLS verification fails)."""
    return _fetch(url, auth, timeout, context)[0]


def server_version(settings: StackSettings, url: str) -> str | None:
    """The Prefect version the platform's server runs (its ``/admin/version``); None when
    it does not answer."""
    import json

    status, body = _fetch(f"{url}/admin/version", auth_string(settings), 5, tls.ssl_context(settings))
    try:
        return str(json.loads(body)) if status == 200 else None
    except ValueError:
        return None


# The Prefect version of a host's virtualenv, read without importing Prefect (2 s here).
HOST_PREFECT_VERSION = ["/opt/prefect/venv/bin/python", "-c",
                        "from importlib.metadata import version; print(version('prefect'))"]


def host_versions(settings: StackSettings, hosts: list[dict]) -> tuple[dict[str, str | None], dict[str, str]]:
    """Each host's Prefect (its virtualenv's, which its services run), over SSH, side by
    side: ({host: version or None}, {host: why it has none}). A host gets a second try
    (a loaded two-core machine can miss one SSH connect). ``hosts``: aws.running_hosts'
    dicts, looked up before the threads start (boto3 makes no client safely from two threads)."""
    from concurrent.futures import ThreadPoolExecutor

    from stack.hostexec import run_on_host
    from stack.terraform import ssh_public_key

    ssh_public_key(settings)  # the SSH key's cache file, once, before the threads

    def one(host: dict) -> tuple[str | None, str | None]:
        why = None
        for attempt in range(2):
            if attempt:
                time.sleep(2)
            try:
                out = run_on_host(settings, host["name"], HOST_PREFECT_VERSION, timeout=30, instance=host).strip()
                return (out, None) if out else (None, "its virtualenv printed no version")
            except Exception as exc:  # noqa: BLE001 - unreachable, not configured yet: unknown, and why
                why = str(exc) or type(exc).__name__
        return None, why

    with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
        answers = dict(zip([h["name"] for h in hosts], pool.map(one, hosts)))
    return ({name: version for name, (version, _) in answers.items()},
            {name: why for name, (_, why) in answers.items() if why})


def ready(settings: StackSettings, url: str) -> bool:
    """The platform API answers /ready over verified TLS with the auth string."""
    return get(f"{url}/ready", auth_string(settings), context=tls.ssl_context(settings)) == 200


def wait_ready(settings: StackSettings, url: str, timeout: float = 120) -> None:
    auth = auth_string(settings)
    context = tls.ssl_context(settings)
    deadline = time.monotonic() + timeout
    status = 0
    while time.monotonic() < deadline:
        status = get(f"{url}/ready", auth, context=context)
        if status == 200:
            return
        time.sleep(1)
    if status == 0:
        status = f"0: no answer, or its certificate did not verify with {tls.ca_file(settings)}"
    raise StackError(f"the platform API at {url} is not ready (last status {status}); "
                     "see `journalctl -u prefect-server` on the server host")


def prefect_client(settings: StackSettings, url: str):
    """An async PrefectClient for the platform (not the control plane)."""
    from prefect.client.orchestration import PrefectClient

    return PrefectClient(api=url, auth_string=auth_string(settings),
                         httpx_settings={"verify": tls.ssl_context(settings)})


async def crash_runs_of_gone_hosts(settings: StackSettings, url: str, worker_hosts: list[str]) -> list[str]:
    """Mark Crashed every unfinished run a worker of a host that no longer exists had
    taken (its ``prefect.worker.name`` label names it): such a run can never end, and
    would otherwise stay Running or Pending for ever. The names of the runs."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    pools = (PROCESS_POOL, DOCKER_POOL)
    live = {f"{host}-{pool}" for host in worker_hosts for pool in pools}
    unfinished = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
        any_=[StateType.PENDING, StateType.RUNNING, StateType.CANCELLING])))
    crashed = []
    async with prefect_client(settings, url) as client:
        runs, page = [], None
        while page is None or len(page) == 200:  # the API's largest page
            page = await client.read_flow_runs(flow_run_filter=unfinished, limit=200, offset=len(runs))
            runs += page
        gone = {}
        for run in runs:
            labels = run.labels or {}
            worker = labels.get("prefect.worker.name")
            if labels.get("prefect.work-pool.name") in pools and worker and worker not in live:
                gone[run.id] = f"host {worker.rsplit('-', 1)[0]} of worker {worker} no longer exists " \
                               "(removed or replaced); the run cannot finish"
        # Their subflows ran in the same process on the same host.
        children = [r for r in runs if r.parent_task_run_id and r.id not in gone]
        for child in children:
            parent_task = await client.read_task_run(child.parent_task_run_id)
            if parent_task.flow_run_id in gone:
                gone[child.id] = "its parent flow run's host no longer exists; the run cannot finish"
        for run in runs:
            if run.id in gone:
                await client.set_flow_run_state(run.id, Crashed(message=gone[run.id]), force=True)
                crashed.append(run.name)
    return crashed
