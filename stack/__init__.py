"""The stack's library: settings, the emulated cloud, Terraform, Ansible, the platform.

``cache_byte_code()``, called first by the entry packages (``flows``, ``benchmarks``,
the tests' conftest; importing ``stack`` itself changes nothing), lets Python cache
compiled modules even where ``PYTHONDONTWRITEBYTECODE`` is set (the machines this project is developed on set it): a bootstrap starts about ten
Python processes (the control plane, Ansible, the Prefect CLI, workers, flow runs), and
without the cache each one compiles Prefect again from source, about 2 s of CPU apiece
(``import prefect`` took 4.2 s instead of 2.0 s). The caches go where Python keeps them
by default: ``__pycache__`` folders in ``.venv`` and in the repository (git ignores them).
Every process the stack starts inherits the setting.
"""

import os
import sys


def cache_byte_code() -> None:
    """Lift PYTHONDONTWRITEBYTECODE for this process and every process it starts."""
    if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
        sys.dont_write_bytecode = False
