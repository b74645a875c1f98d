"""The local control plane: the Prefect server that records every step's runs, logs and
artifacts, and the runner that serves the steps (Run buttons, nightly teardown, backups).
Every other command starts it when needed; this one manages it by hand.

    python -m flows.controlplane start     # start both (a runner with old settings is restarted)
    python -m flows.controlplane stop
    python -m flows.controlplane status    # JSON: server, runner, API URL
"""

from __future__ import annotations

import json

from stack import controlplane

if __name__ == "__main__":
    from stack.cli import main, step_parser

    parser = step_parser("flows.controlplane", __doc__)
    parser.add_argument("action", choices=["start", "stop", "status"])
    args = parser.parse_args()

    def act(settings):
        if args.action == "start":
            controlplane.ensure_running(settings)
            controlplane.ensure_runner(settings)
        elif args.action == "stop":
            controlplane.stop(settings)
        return controlplane.describe(settings)

    print(json.dumps(main(act, control_plane=False), indent=2))
