"""Blocks and work pools of the platform, as code.

Everything here is pure: it builds the objects from settings. ``flows/register.py``
saves them on the platform server; saving twice leaves the same objects.
"""

from __future__ import annotations

import copy

from prefect_aws import AwsCredentials, S3Bucket
from prefect_docker.worker import DockerWorker
from prefect.workers.process import ProcessWorker

from stack import platform
from stack.settings import StackSettings


def flow_code_credentials(settings: StackSettings) -> AwsCredentials:
    """AWS credentials the hosts' flow runs use to pull code: the emulator on local,
    none on aws (so the instance role is used)."""
    return AwsCredentials(**platform.flow_code_aws(settings))


def flow_code_bucket(settings: StackSettings, credentials: AwsCredentials) -> S3Bucket:
    return S3Bucket(bucket_name=settings.effective_bucket_name, credentials=credentials)


def _with_defaults(template: dict, defaults: dict) -> dict:
    template = copy.deepcopy(template)
    props = template["variables"]["properties"]
    for key, value in defaults.items():
        props[key]["default"] = value
    return template


def process_pool_template() -> dict:
    return ProcessWorker.get_default_base_job_template()


def docker_pool_template(settings: StackSettings, image: str, extra_pip_packages: str | None = None) -> dict:
    """The Docker pool's job template: the flow-runner image; on local never pulled (no
    registry) and on the host's network, so flow runs reach the server and the emulator
    by name. The official image installs ``extra_pip_packages`` when it starts."""
    defaults: dict = {"image": image, "auto_remove": True}
    if extra_pip_packages:
        defaults["env"] = {"EXTRA_PIP_PACKAGES": extra_pip_packages}
    if settings.target == "local":
        defaults |= {"image_pull_policy": "Never", "network_mode": "host"}
    return _with_defaults(DockerWorker.get_default_base_job_template(), defaults)


def work_pools(settings: StackSettings, image: str, extra_pip_packages: str | None = None) -> dict[str, tuple[str, dict, int | None]]:
    """name -> (type, base job template, concurrency limit) of every work pool. The
    worker hosts' pools admit as many runs as their workers run at once (each worker
    also has that per-worker limit); the operator's pool has no limit."""
    hosts_limit = settings.worker_concurrency * settings.worker_count
    return {
        platform.PROCESS_POOL: ("process", process_pool_template(), hosts_limit),
        platform.DOCKER_POOL: ("docker", docker_pool_template(settings, image, extra_pip_packages), hosts_limit),
        platform.OPERATOR_POOL: ("process", process_pool_template(), None),
    }
