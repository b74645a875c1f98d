"""When a bootstrap step runs again (stack/steps.py step_key): the keys follow the images and Terraform files
the steps build from, not docs or tests; after a failure the full smoke runs. Works on copies of images/ and
terraform/ in tmp_path; no Docker, no cloud."""

from __future__ import annotations

from tests.conftest import REPO


def _images_dir_with_a_changed_flow_runner(tmp_path, monkeypatch):
    """A copy of the images' folder whose flow-runner Dockerfile has one more line."""
    import shutil

    from stack.localcloud import images

    copy = tmp_path / "images"
    shutil.copytree(images.IMAGES_DIR, copy)
    dockerfile = copy / "flow-runner" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "# one more line\n")
    monkeypatch.setattr(images, "IMAGES_DIR", copy)


def test_the_keys_of_configure_register_and_deploy_follow_what_the_flow_runner_image_is_built_from(
        tmp_path, monkeypatch):
    from stack import steps
    from stack.localcloud.flow_runner import flow_runner_identity
    from stack.settings import StackSettings

    settings = StackSettings(target="local", state_dir=tmp_path / "state", name_prefix="keytest")
    # configure's key would otherwise create the stack's CA and auth string: keep those fixed.
    monkeypatch.setattr(steps.tls, "ensure_ca", lambda s: None)
    monkeypatch.setattr(steps.tls, "ca_fingerprint", lambda s: "ca")
    monkeypatch.setattr(steps.platform, "auth_string", lambda s: "auth")
    before = flow_runner_identity(settings)
    keys_before = {step: steps.step_key(step, settings, ("https://platform", before["reference"]))
                   for step in ("configure", "register", "deploy")}
    provision_before = steps.step_key("provision", settings)

    _images_dir_with_a_changed_flow_runner(tmp_path, monkeypatch)
    after = flow_runner_identity(settings)
    assert after["reference"] != before["reference"], "a changed Dockerfile is a new content-hash tag"
    # configure computes the image's identity itself; register and deploy get the
    # reference that configure reports as an input.
    assert steps.step_key("configure", settings, ("https://platform", before["reference"])) != keys_before["configure"]
    for step in ("register", "deploy"):
        assert steps.step_key(step, settings, ("https://platform", after["reference"])) != keys_before[step]
    assert steps.step_key("provision", settings) == provision_before, "the host image did not change"


def test_a_fixed_flow_runner_image_name_still_follows_the_images_content(tmp_path, monkeypatch):
    from stack.localcloud.flow_runner import flow_runner_identity
    from stack.settings import StackSettings

    settings = StackSettings(target="local", state_dir=tmp_path, flow_runner_image="team/runner:latest")
    before = flow_runner_identity(settings)
    _images_dir_with_a_changed_flow_runner(tmp_path, monkeypatch)
    after = flow_runner_identity(settings)
    assert before["reference"] == after["reference"] == "team/runner:latest"
    assert before != after


def test_provisions_key_follows_the_host_image_terraform_is_given(tmp_path, monkeypatch):
    from stack import steps
    from stack.localcloud import images
    from stack.settings import StackSettings

    settings = StackSettings(target="local", state_dir=tmp_path / "state", name_prefix="keytest")
    before = steps.step_key("provision", settings)
    copy = tmp_path / "images"
    import shutil

    shutil.copytree(images.IMAGES_DIR, copy)
    (copy / "host" / "Dockerfile").write_text((copy / "host" / "Dockerfile").read_text() + "# changed\n")
    monkeypatch.setattr(images, "IMAGES_DIR", copy)
    assert steps.step_key("provision", settings) != before


def test_after_a_failed_bootstrap_the_full_smoke_runs_until_it_passes_not_a_health_check():
    from flows.bootstrap import StepOutcome, full_smoke_needed

    nothing_ran = {s: StepOutcome(step=s, outcome="skipped") for s in ("provision", "hosts", "register", "deploy")}
    assert full_smoke_needed([], nothing_ran, None) is False
    # The case: case 4 failed at the last smoke, and nothing has changed since.
    assert full_smoke_needed(["smoke"], nothing_ran, None) is True
    # A step that failed, and then ran again without changing anything.
    assert full_smoke_needed(["configure"], nothing_ran, None) is True
    assert full_smoke_needed([], nothing_ran | {"deploy": StepOutcome(step="deploy", outcome="ran")}, None) is True


def test_provisions_key_follows_the_terraform_files_not_their_docs_or_tests(tmp_path, monkeypatch):
    import shutil

    from stack import steps
    from stack.settings import StackSettings

    copy = tmp_path / "repo"
    shutil.copytree(REPO / "terraform", copy / "terraform")
    for rel in ("flows/provision.py", "stack/terraform.py"):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, copy / rel)
    monkeypatch.setattr(steps, "REPO_ROOT", copy)
    settings = StackSettings(target="local", state_dir=tmp_path / "state", name_prefix="keytest")
    before = steps.step_key("provision", settings)
    (copy / "terraform" / "data" / "README.md").write_text("an edited README\n")
    (copy / "terraform" / "data" / "tests" / "new.tftest.hcl").write_text("# a new test\n")
    assert steps.step_key("provision", settings) == before
    with (copy / "terraform" / "data" / "variables.tf").open("a") as f:
        f.write("# a comment\n")
    assert steps.step_key("provision", settings) != before


def test_a_new_prefect_version_or_concurrency_keeps_provisions_key_and_changes_configures(tmp_path):
    """Terraform is given neither: an upgrade plans nothing, so provision is skipped; the
    hosts' virtualenvs and workers get them through configure."""
    from stack import steps
    from stack.settings import StackSettings

    base = dict(target="local", state_dir=tmp_path / "state", name_prefix="keytest")
    settings = StackSettings(**base)
    for change in ({"prefect_version": "3.8.8"}, {"worker_concurrency": 2}):
        changed = StackSettings(**base, **change)
        assert steps.step_key("provision", changed) == steps.step_key("provision", settings), change
        assert (steps.step_key("configure", changed, values={})
                != steps.step_key("configure", settings, values={})), change
    assert steps.step_key("provision", StackSettings(**base, worker_count=2)) != steps.step_key("provision", settings)
