"""Does the emulated cloud still hold what the last provision made? On the local target
the emulated cloud (moto) forgets everything when its container restarts (a Docker engine
restart, a reboot), the state bucket and its Terraform states included. Provision records
which emulator session it applied to; when that session is gone, the next apply creates
everything again from an empty state (the platform's data comes back from the named volume
that stands in for the data volume, or from a backup). Nothing moves a state aside: the
states live in the state bucket (stack/statebackend.py)."""

from __future__ import annotations

from stack.localcloud import emulator
from stack.proc import get_logger
from stack.settings import StackSettings
from stack.terraform import LEGACY_STATE, ROOT_MODULES, Terraform


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
    """True when a provision applied to an emulator session that is gone (it restarted)."""
    if settings.target != "local":
        return False
    marker = _marker(settings)
    return marker.exists() and marker.read_text().strip() != emulator.session(settings)


def forget_if_lost(settings: StackSettings) -> bool:
    """When the emulated cloud lost what the last provision made, say so in one line."""
    if not emulator_lost_state(settings):
        return False
    get_logger().warning(
        "the emulated cloud restarted since the last provision and lost its resources and the Terraform states; "
        "re-provisioning (the platform's data is on the %s volume, and in backups)", settings.data_volume_name)
    for root in ROOT_MODULES:
        # A state file of a stack made before remote state describes the lost cloud too:
        # it must not be migrated into the new one.
        legacy = Terraform(settings, root).workdir / LEGACY_STATE
        if legacy.exists():
            legacy.replace(legacy.with_name(LEGACY_STATE + ".emulator-lost"))
    _marker(settings).unlink(missing_ok=True)
    return True
