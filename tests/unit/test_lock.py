"""bin/lock: constraints.txt regenerated from pyproject.toml (stack/pins.write_constraints),
resolved from the real package index, checked on the hosts' Python before it replaces
anything."""

from __future__ import annotations

import pytest
from packaging.version import Version

from stack import pins
from stack.proc import StackError


def test_the_lock_pins_every_dependency_within_the_caps_for_both_pythons(tmp_path):
    target = tmp_path / "constraints.txt"
    pins.write_constraints(target)
    written = pins._pins(target)
    # pyproject's exact pin and the caps that keep the server working hold.
    assert written["prefect"] == pins.pinned_prefect()
    assert Version(written["fastapi"]) < Version("0.151") and Version(written["sqlalchemy"]) < Version("2.1")
    # What bin/setup, the hosts and the images read from it is there.
    for name in (*pins.PLATFORM_PACKAGES, "uv", "ansible-core", "moto", "pytest", "playwright"):
        assert name in written, name
    assert not (tmp_path / "constraints.txt.new").exists()


def test_a_lock_the_hosts_python_cannot_install_replaces_nothing(tmp_path, monkeypatch):
    target = tmp_path / "constraints.txt"
    target.write_text("kept==1.0\n")
    # A platform package that no release on the hosts' Python satisfies with the new pins.
    monkeypatch.setattr(pins, "PLATFORM_CAPS", (*pins.PLATFORM_CAPS, "prefect<3"))
    with pytest.raises(StackError, match="hosts' Python 3.11.*unchanged"):
        pins.write_constraints(target)
    assert target.read_text() == "kept==1.0\n"
    assert not (tmp_path / "constraints.txt.new").exists()
