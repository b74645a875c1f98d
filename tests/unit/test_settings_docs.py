"""bin/settings-docs: docs/settings.md lists every setting, written from stack/settings.py,
and the committed file matches what the script writes."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys

from stack.settings import StackSettings
from tests.conftest import REPO


def _script():
    path = REPO / "bin" / "settings-docs"
    loader = importlib.machinery.SourceFileLoader("settings_docs", str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("settings_docs", loader))
    loader.exec_module(module)
    return module


def test_the_committed_settings_doc_is_what_the_script_writes_with_every_setting():
    docs = _script()
    committed = (REPO / "docs" / "settings.md").read_text()
    assert committed == docs.render(), "docs/settings.md is out of date: run .venv/bin/python bin/settings-docs"
    for name in StackSettings.model_fields:
        assert f"| `STACK_{name.upper()}` |" in committed, name
    proc = subprocess.run([sys.executable, str(REPO / "bin" / "settings-docs"), "--check"], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr


def test_a_stale_settings_doc_fails_the_check_naming_the_command(tmp_path, monkeypatch):
    docs = _script()
    stale = tmp_path / "settings.md"
    stale.write_text("# edited by hand\n")
    monkeypatch.setattr(docs, "OUTPUT", stale)
    monkeypatch.setattr(docs, "REPO_ROOT", tmp_path)
    assert docs.main(["--check"]) == 1
