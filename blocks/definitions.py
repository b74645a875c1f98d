"""Blocks, work pools and automations of the platform, as code.

Everything here is pure: it builds the objects from settings. ``flows/register.py``
saves them on the platform server; saving twice leaves the same objects.
"""

from __future__ import annotations

import copy
from datetime import timedelta

from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect_aws import AwsCredentials, S3Bucket
from prefect_docker.worker import DockerWorker
from prefect.workers.process import ProcessWorker

from stack import capacity, platform, statebackend
from stack.settings import StackSettings


def flow_code_credentials(settings: StackSettings) -> AwsCredentials:
    """AWS credentials the hosts' flow runs use to pull code: the emulator on local,
    none on aws (so the instance role is used)."""
    return AwsCredentials(**platform.flow_code_aws(settings))


def flow_code_bucket(settings: StackSettings, credentials: AwsCredentials) -> S3Bucket:
    return S3Bucket(bucket_name=statebackend.code_bucket_name(settings), credentials=credentials)


def _with_defaults(template: dict, defaults: dict) -> dict:
    template = copy.deepcopy(template)
    props = template["variables"]["properties"]
    for key, value in defaults.items():
        props[key]["default"] = value
    return template


# Every flow run of the worker hosts' pools sends a heartbeat event this often, and the
# zombie automation marks a run Crashed when none came for ZOMBIE_AFTER (a host that
# died mid-run leaves no other trace: self-hosted Prefect has no zombie detection).
FLOW_HEARTBEAT_SECONDS = 30
ZOMBIE_AFTER = timedelta(seconds=90)
ZOMBIE_AUTOMATION = "crash-flow-runs-without-heartbeats"


def zombie_automation() -> AutomationCore:
    """Marks a flow run Crashed when its heartbeats stop before it ended (Prefect's
    documented zombie-flow automation)."""
    return AutomationCore(
        name=ZOMBIE_AUTOMATION,
        description=f"A flow run that sent no heartbeat for {ZOMBIE_AFTER.seconds} s and did not end lost its "
                    "host or process: mark it Crashed (managed by the stack, blocks/definitions.py).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=ZOMBIE_AFTER,
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {ZOMBIE_AFTER.seconds} s: its host or process died")],
    )


# Where the prefect_worker role installs the stack's CA certificate on a worker host.
HOST_CA_FILE = "/etc/prefect/ca.pem"


def _heartbeat_env() -> dict[str, str]:
    return {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(FLOW_HEARTBEAT_SECONDS)}


# Every pool starts a flow run with the engine itself, in one interpreter that runs the
# deployment's pull steps and then the flow. Without a command, Prefect 3.8's process
# worker starts a workspace supervisor that starts the engine as a second interpreter,
# and the Docker worker runs `prefect flow-run execute` (the whole CLI): measured here,
# created->running 4.1 -> 2.7 s (process) and 5.3 -> 2.9 s (Docker). `python` is the
# worker's own virtualenv: the worker units and the operator's worker put it first on
# PATH, and it is the flow-runner image's only Python.
ENGINE_COMMAND = "python -m prefect.engine"


def process_pool_template() -> dict:
    return _with_defaults(ProcessWorker.get_default_base_job_template(),
                          {"env": _heartbeat_env(), "command": ENGINE_COMMAND})


def docker_pool_template(settings: StackSettings, image: str, extra_pip_packages: str | None = None) -> dict:
    """The Docker pool's job template: the flow-runner image, which configure has the
    worker hosts pull (a host that lacks it pulls it at its first run); on local on the
    host's network, so flow runs reach the server and the emulator by name. The official
    image installs ``extra_pip_packages`` when it starts."""
    # Flow runs verify the server with the stack's CA, mounted from the worker host (the
    # prefect_worker role installs it there).
    defaults: dict = {"image": image, "image_pull_policy": "IfNotPresent", "auto_remove": True,
                      "command": ENGINE_COMMAND,
                      "env": {**_heartbeat_env(), "PREFECT_API_SSL_CERT_FILE": HOST_CA_FILE},
                      "volumes": [f"{HOST_CA_FILE}:{HOST_CA_FILE}:ro"]}
    if extra_pip_packages:
        defaults["env"]["EXTRA_PIP_PACKAGES"] = extra_pip_packages
    if settings.target == "local":
        defaults |= {"network_mode": "host"}
    return _with_defaults(DockerWorker.get_default_base_job_template(), defaults)


def work_pools(settings: StackSettings, image: str, extra_pip_packages: str | None = None) -> dict[str, tuple[str, dict, int | None]]:
    """name -> (type, base job template, concurrency limit) of every work pool. The
    worker hosts' pools admit as many runs as their workers run at once (each worker
    also has that per-worker limit); the operator's pool has no limit."""
    hosts_limit = capacity.worker_concurrency(settings) * settings.worker_count
    return {
        platform.PROCESS_POOL: ("process", process_pool_template(), hosts_limit),
        platform.DOCKER_POOL: ("docker", docker_pool_template(settings, image, extra_pip_packages), hosts_limit),
        platform.OPERATOR_POOL: ("process", process_pool_template(), None),
    }
