"""Both UIs in a real browser: headless Chromium from Debian's packages, driven by
Playwright (no downloaded browser). The control-plane UI shows the bootstrap run with
its step sub-flows; the platform UI asks for the auth string, and after logging in shows
the deployments. Screenshots go to <state dir>/screenshots/ (and to docs/images/ when
STACK_UPDATE_DOCS_IMAGES=1, which is how the README's pictures are made)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from stack import platform
from tests.conftest import REPO

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: bin/setup --test installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _save(page, settings, name: str) -> Path:
    out = settings.state_path / "screenshots" / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out), full_page=False)
    if os.environ.get("STACK_UPDATE_DOCS_IMAGES") == "1":
        (REPO / "docs" / "images").mkdir(parents=True, exist_ok=True)
        shutil.copy(out, REPO / "docs" / "images" / out.name)
    return out


def _latest_bootstrap_run(settings) -> tuple[str, set[str]]:
    """The latest full bootstrap run on the control plane, and the steps that ran as its sub-flows."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter,
                                                FlowRunFilterParentFlowRunId)
    from prefect.client.schemas.sorting import FlowRunSort

    async def read() -> tuple[str, set[str]]:
        async with PrefectClient(api=settings.control_plane_api_url) as client:
            runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["bootstrap"])),
                                               sort=FlowRunSort.START_TIME_DESC, limit=10)
            for run in runs:  # the latest full one (not --only): preflight always runs in it
                children = await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])))
                names = {(await client.read_flow(c.flow_id)).name for c in children}
                if "preflight" in names:
                    return str(run.id), names
            raise AssertionError("no bootstrap run with its preflight sub-flow on the control plane")

    # Playwright's sync API runs an event loop in this thread: read from another one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, read()).result()


def test_control_plane_ui_shows_the_bootstrap_run_and_its_steps(stack, browser):
    s = stack["settings"]
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    run_id, ran = _latest_bootstrap_run(s)
    assert ran, "the latest bootstrap ran no step as a sub-flow"
    page.goto(f"{s.control_plane_api_url.removesuffix('/api')}/runs/flow-run/{run_id}")
    page.get_by_text("bootstrap", exact=True).first.wait_for(timeout=60_000)
    # Its log says what each step did (ran, or skipped by its key) ...
    page.get_by_text(re.compile(r"^step preflight: ran in ")).first.wait_for(timeout=30_000)
    _save(page, s, "control-plane-bootstrap-run")
    # ... and the steps that ran are its sub-flows.
    page.get_by_text("Subflow Runs", exact=True).first.click(timeout=30_000)
    for name in ran:
        page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
    assert _save(page, s, "control-plane-bootstrap-subflows").stat().st_size > 10_000


def test_platform_ui_asks_for_the_auth_string_then_shows_the_deployments(stack, browser):
    s = stack["settings"]
    auth = platform.auth_string(s)
    # The browser does not know the stack's CA (a user imports it or accepts the warning
    # once, as the README says); TLS verification itself is tested in test_platform.py.
    page = browser.new_page(viewport={"width": 1400, "height": 900}, ignore_https_errors=True)
    ui = platform.api_url(s).removesuffix("/api")
    page.goto(f"{ui}/deployments")
    password = page.locator("input[type=password]").first
    password.wait_for(timeout=60_000)  # without the auth string the UI shows nothing else
    assert "case3-s3-process" not in page.inner_text("body")
    _save(page, s, "platform-login")
    password.fill(auth)
    password.press("Enter")
    page.get_by_text("case3-s3-process").first.wait_for(timeout=60_000)
    page.goto(f"{ui}/deployments")
    page.get_by_text("case4-s3-docker").first.wait_for(timeout=60_000)
    body = page.inner_text("body")
    assert "case2-local-storage" in body and "case3-s3-process" in body and auth not in body
    assert _save(page, s, "platform-deployments").stat().st_size > 10_000
