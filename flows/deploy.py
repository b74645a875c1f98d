"""The deploy step: the testflow's deployments (one per runbook case) on the platform.

Stages ``deployments/prefect.yaml`` and ``flows/testflow.py`` in a folder of their own
(only those files are pushed to S3: the runbook's "the whole directory gets uploaded"
lesson) and runs ``prefect deploy --all`` there against the platform server.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel

from stack import platform, statebackend
from stack.localcloud.flow_runner import published_image
from stack.proc import run
from stack.lock import exclusive
from stack.settings import REPO_ROOT, StackSettings, load_settings

TESTFLOW_NAME = "concurrent-flows"
DEPLOYMENT_NAMES = ("case2-local-storage", "case3-s3-process", "case4-s3-docker", "misplaced-local-storage")


class DeployReport(BaseModel):
    deployments: dict[str, str]   # "flow/deployment" -> id
    staged_dir: str
    docker_image: str = ""        # case 4's image (its probe checks the deployment still has it)


def stage(settings: StackSettings) -> Path:
    """The deploy folder: exactly the files a deployment needs."""
    staged = settings.state_path / "deploy"
    staged.mkdir(parents=True, exist_ok=True)
    for src in (REPO_ROOT / "deployments" / "prefect.yaml", REPO_ROOT / "flows" / "testflow.py"):
        shutil.copy(src, staged / src.name)
    (staged / ".prefectignore").write_text("__pycache__/\n*.pyc\n.prefect/\n")
    return staged


async def _read_deployments(settings: StackSettings, url: str) -> dict[str, str]:
    async with platform.prefect_client(settings, url) as client:
        found = {}
        for name in DEPLOYMENT_NAMES:
            dep = await client.read_deployment_by_name(f"{TESTFLOW_NAME}/{name}")
            found[f"{TESTFLOW_NAME}/{name}"] = str(dep.id)
        return found


@flow(name="deploy")
@exclusive
def deploy(settings: StackSettings | None = None, platform_url: str | None = None,
           flow_runner_image: str | None = None) -> DeployReport:
    """Create or update the testflow deployments of every case (on ``platform_url``, the
    Docker case on ``flow_runner_image``: configure's outputs; run alone, the current ones)."""
    settings = settings or load_settings()
    image = flow_runner_image or published_image(settings).reference
    log = get_run_logger()
    url = platform_url or platform.operator_api_url(settings)
    staged = stage(settings)
    env = {
        **platform.client_env(settings, url),
        "STACK_BUCKET": statebackend.code_bucket_name(settings),
        "STACK_DEPLOY_DIR": str(staged),
        "STACK_FLOW_RUNNER_IMAGE": image,
    }
    prefect_cli = str(Path(sys.executable).parent / "prefect")
    run([prefect_cli, "--no-prompt", "deploy", "--all"], cwd=staged, env=env,
        secrets=(platform.auth_string(settings),))
    deployments = asyncio.run(_read_deployments(settings, url))
    log.info("deployments: %s (the Docker case on %s)", ", ".join(deployments), image)
    return DeployReport(deployments=deployments, staged_dir=str(staged), docker_image=image)


if __name__ == "__main__":
    from stack.cli import main, parse_step_args

    parse_step_args("flows.deploy", __doc__)
    main(lambda s: deploy(s))
