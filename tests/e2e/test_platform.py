"""The Prefect platform on the hosts, end to end: every runbook case, basic auth, no
secret in anything the stack wrote, the pools' job templates. (Register and deploy run
twice and leave the same objects: tests/e2e/test_provision.py, in the forced bootstrap.)"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import stat
import subprocess

import pytest

from blocks.definitions import ENGINE_COMMAND
from stack import platform, statebackend, tls
from stack.settings import EMULATOR_ACCESS_KEY, EMULATOR_SECRET_KEY
from tests.conftest import result_json, run_step

pytestmark = pytest.mark.e2e


def test_every_case_completes_with_the_expected_results(stack):
    cases = {c["case"]: c for c in stack["first_bootstrap"]["smoke"]["cases"]}
    for name in ("case1-direct", "case2-local-storage", "case3-s3-process", "case4-s3-docker"):
        assert cases[name]["ok"] is True and cases[name]["state"] == "COMPLETED", cases[name]
        assert cases[name]["note"] == ""   # no problem: two subflows, FIRST and SECOND printed
    misplaced = cases["misplaced-local-storage"]
    assert misplaced["state"] in ("CRASHED", "FAILED")
    assert "local storage" in misplaced["note"] and "not on the host" in misplaced["note"]


def test_platform_api_needs_the_auth_string(stack):
    s = stack["settings"]
    url = platform.api_url(s)
    ctx = tls.ssl_context(s)
    assert platform.get(f"{url}/admin/version", context=ctx) == 401
    assert platform.get(f"{url}/admin/version", platform.auth_string(s), context=ctx) == 200
    assert platform.get(f"{url}/admin/version", "admin:wrong-password", context=ctx) == 401


def _key_body(s, name: str) -> str:
    """The base64 body of one of the stack's private keys (its second PEM line)."""
    return (tls.tls_dir(s) / name).read_text().splitlines()[1]


def _plain_http(url: str) -> tuple[int, str]:
    """Status and Location of a plain-HTTP GET, redirects not followed."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request("GET", u.path)
    resp = conn.getresponse()
    return resp.status, resp.getheader("Location") or ""


def _on_host(host: str, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "exec", host, "/opt/prefect/venv/bin/python", "-c", code],
                          capture_output=True, text=True, timeout=60)


def test_platform_speaks_tls_only_verified_with_the_stacks_ca(stack):
    s = stack["settings"]
    url = platform.api_url(s)
    auth = platform.auth_string(s)
    assert url.startswith("https://")
    assert stack["first_bootstrap"]["configure"]["platform_api_url"] == url   # smoke ran over it
    # With the CA the API answers; a client without it (the system's trust store) fails.
    assert platform.get(f"{url}/ready", auth, context=tls.ssl_context(s)) == 200
    with pytest.raises(ssl.SSLCertVerificationError):
        ssl.create_default_context().wrap_socket(
            socket.create_connection(("127.0.0.1", s.platform_port), timeout=10), server_hostname="127.0.0.1")
    # Plain HTTP on the platform port is sent to https, never answered.
    status, location = _plain_http(url.replace("https://", "http://") + "/admin/version")
    assert status == 301 and location.startswith("https://"), (status, location)
    # Prefect itself listens on the server host's loopback only: a worker host cannot
    # reach it but through the TLS proxy, which it verifies with the CA it was given.
    server, worker = s.host_name(0), s.host_name(1)
    direct = _on_host(worker, f"import socket; socket.create_connection(('{server}', 4210), timeout=5)")
    assert direct.returncode != 0 and "Connection refused" in direct.stderr, direct.stderr
    through_proxy = _on_host(worker, (   # /api/health needs no auth string
        "import ssl, urllib.request; ctx = ssl.create_default_context(cafile='/etc/prefect/ca.pem'); "
        f"print(urllib.request.urlopen('https://{server}:4200/api/health', context=ctx).status)"))
    assert through_proxy.stdout.strip() == "200", through_proxy.stderr
    env = subprocess.run(["docker", "exec", worker, "grep", "-E", "^PREFECT_API_(URL|SSL_CERT_FILE)=",
                          "/etc/prefect/worker.env"], capture_output=True, text=True).stdout.split()
    assert env == [f"PREFECT_API_URL=https://{server}:4200/api", "PREFECT_API_SSL_CERT_FILE=/etc/prefect/ca.pem"]
    # The keys: 0600 on this machine; on the server host the proxy's key is root's alone.
    for name in (tls.CA_KEY, tls.SERVER_KEY):
        assert stat.S_IMODE((tls.tls_dir(s) / name).stat().st_mode) == 0o600
    mode = subprocess.run(["docker", "exec", server, "stat", "-c", "%a %U", "/etc/prefect/tls/server.key"],
                          capture_output=True, text=True).stdout.strip()
    assert mode == "600 root"
    ca_key_on_server = subprocess.run(["docker", "exec", server, "grep", "-rlF", _key_body(s, tls.CA_KEY), "/etc"],
                                      capture_output=True, text=True)
    assert ca_key_on_server.stdout == ""   # the CA key never leaves the operator machine


def test_auth_file_is_private(stack):
    mode = stat.S_IMODE(platform.auth_file(stack["settings"]).stat().st_mode)
    assert mode == 0o600


def _all_flow_run_logs(url: str, auth: str | None, verify: ssl.SSLContext | None = None) -> str:
    from prefect.client.orchestration import PrefectClient

    async def read() -> str:
        async with PrefectClient(api=url, auth_string=auth,
                                 httpx_settings={"verify": verify} if verify else None) as client:
            out, offset = [], 0
            while True:
                page = await client.read_logs(limit=200, offset=offset)
                out += [log.message for log in page]
                if len(page) < 200:
                    return "\n".join(out)
                offset += 200

    return asyncio.run(read())


def _all_artifacts(url: str) -> str:
    from prefect.client.orchestration import PrefectClient

    async def read() -> str:
        async with PrefectClient(api=url) as client:
            arts = await client.read_artifacts(limit=200)
            return "\n".join(json.dumps(a.data, default=str) for a in arts)

    return asyncio.run(read())


def test_no_secret_in_logs_artifacts_or_flow_run_logs(stack):
    s = stack["settings"]
    password = platform.auth_string(s).split(":", 1)[1]
    secrets = {"auth password": password, "AWS access key": EMULATOR_ACCESS_KEY,
               "AWS secret key": EMULATOR_SECRET_KEY, "CA key": _key_body(s, tls.CA_KEY),
               "server key": _key_body(s, tls.SERVER_KEY)}
    corpus = {}
    # Files the stack wrote: logs and ansible-runner's artifacts.
    for path in s.state_path.rglob("*"):
        if path.is_file() and (path.suffix in (".log", ".json", ".txt") or "artifacts" in path.parts
                               or path.name in ("stdout", "stderr")):
            corpus[str(path)] = path.read_text(errors="replace")
    # The control plane's flow-run logs and artifacts (plan, recap, smoke tables).
    corpus["control-plane logs"] = _all_flow_run_logs(s.control_plane_api_url, None)
    corpus["control-plane artifacts"] = _all_artifacts(s.control_plane_api_url)
    assert "terraform" in corpus["control-plane logs"].lower()  # the corpus is real
    # The platform's flow-run logs, and the hosts' service journals.
    corpus["platform logs"] = _all_flow_run_logs(platform.api_url(s), platform.auth_string(s), tls.ssl_context(s))
    assert "finished FIRST" in corpus["platform logs"]
    for host in ("p2test-ec2-0", "p2test-ec2-1"):
        journal = subprocess.run(["docker", "exec", host, "journalctl", "--no-pager", "-u", "prefect-*"],
                                 capture_output=True, text=True)
        corpus[f"{host} journal"] = journal.stdout
    leaks = [(what, where) for where, text in corpus.items() for what, secret in secrets.items() if secret in text]
    assert leaks == []


def platform_objects(s) -> dict:
    """What register and deploy make: blocks, pools (their job templates), queues, deployments."""

    async def read() -> dict:
        async with platform.prefect_client(s, platform.api_url(s)) as client:
            blocks = await client.read_block_documents()
            pools = await client.read_work_pools()
            deployments = await client.read_deployments()
            queues = []
            for p in pools:
                queues += [(str(q.id), p.name, q.name) for q in await client.read_work_queues(work_pool_name=p.name)]
            return {
                "blocks": sorted((str(b.id), b.name) for b in blocks if not b.is_anonymous),
                "pools": sorted((str(p.id), p.name, json.dumps(p.base_job_template, sort_keys=True)) for p in pools),
                "pool_descriptions": {p.name: p.description for p in pools},
                "queues": sorted(queues),
                "deployments": sorted((str(d.id), d.name, d.work_pool_name) for d in deployments),
            }

    return asyncio.run(read())


def test_every_pool_starts_its_runs_with_the_engine_and_says_what_it_is_for(stack):
    objects = platform_objects(stack["settings"])
    assert len(objects["deployments"]) == 4 and len(objects["pools"]) == 3
    # Every pool starts its flow runs with the engine itself, in one interpreter.
    commands = {name: json.loads(template)["variables"]["properties"]["command"]["default"]
                for _, name, template in objects["pools"]}
    assert set(commands.values()) == {ENGINE_COMMAND}, commands
    # The UI says what each pool is for, and why the operator's is Not Ready between smokes.
    assert objects["pool_descriptions"] == platform.POOL_DESCRIPTIONS
    assert "Not Ready" in objects["pool_descriptions"][platform.OPERATOR_POOL]


def test_the_server_host_backs_itself_up_on_its_own_timer_without_the_operator(stack):
    """The nightly backup is a systemd timer on the server host: its service dumps the
    database into the bucket with the host's own credentials (no operator SSH or address)."""
    from stack import aws, backups
    from stack.oncalendar import on_calendar

    s = stack["settings"]
    server = platform.server_host(s)

    def on_server(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", "exec", server, *argv], capture_output=True, text=True)

    assert on_server("systemctl", "is-active", "prefect-backup.timer").stdout.strip() == "active"
    calendar = on_server("systemctl", "show", "-p", "TimersCalendar", "--value", "prefect-backup.timer").stdout
    assert "OnCalendar=" in calendar and s.backup_cron and on_calendar(s.backup_cron, "UTC").split()[1] in calendar
    s3 = aws.client(s, "s3")

    def keys() -> set[str]:
        return {o["Key"] for o in s3.list_objects_v2(Bucket=statebackend.code_bucket_name(s),
                                                     Prefix=backups.BACKUP_PREFIX).get("Contents", [])}

    before = keys()
    # What the timer does when it fires; nothing of the operator's is involved.
    done = on_server("systemctl", "start", "prefect-backup.service")
    assert done.returncode == 0, on_server("journalctl", "-u", "prefect-backup.service", "-n", "20").stdout
    new = keys() - before
    assert len(new) == 1, new
    last = json.loads(on_server("cat", backups.LAST_BACKUP_FILE).stdout)
    assert last["location"] == f"s3://{statebackend.code_bucket_name(s)}/{new.pop()}" and last["size"] > 0
