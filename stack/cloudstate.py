"""Do the Terraform states still describe the cloud? On the local target the emulated
cloud (moto) forgets everything when its container restarts (a Docker engine restart, a
reboot). Provision records which emulator session it applied to; when that session is
gone, the states list resources that no longer exist, so they are moved aside and the
next apply creates everything again (the platform's data comes back from the named
volume that stands in for the data volume, or from a backup)."""

from __future__ import annotations

from stack.localcloud import emulator
from stack.proc import get_logger
from stack.settings import StackSettings
from stack.terraform import ROOT_MODULES, Terraform


def _marker(settings: StackSettings):
    return settings.state_path / "terraform" / "emulator-session"


def record(settings: StackSettings) -> None:
    """Remember the emulator session the states now describe (local only)."""
    if settings.target != "local":
        return
    current = emulator.session(settings)
    if current:
        _marker(settings).parent.mkdir(parents=True, exist_ok=True)
        _marker(settings).write_text(current)


def emulator_lost_state(settings: StackSettings) -> bool:
    """True when a state lists resources but the emulator restarted since it was written."""
    if settings.target != "local":
        return False
    if not any(Terraform(settings, root).has_state() for root in ROOT_MODULES):
        return False
    marker = _marker(settings)
    recorded = marker.read_text().strip() if marker.exists() else None
    return recorded != emulator.session(settings)


def forget_if_lost(settings: StackSettings) -> bool:
    """Move the states aside when the emulated cloud lost what they describe; say so in one line."""
    if not emulator_lost_state(settings):
        return False
    get_logger().warning(
        "the emulated cloud restarted since the last provision and lost its resources; "
        "re-provisioning (the platform's data is on the %s volume, and in backups)", settings.data_volume_name)
    for root in ROOT_MODULES:
        Terraform(settings, root).forget_state("emulator-lost")
    _marker(settings).unlink(missing_ok=True)
    return True
