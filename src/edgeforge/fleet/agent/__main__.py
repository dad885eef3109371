"""`python -m edgeforge.fleet.agent`: the agent's loop in a process that holds only the agent.

`edgeforge agent` (without --once) re-executes itself as this, so the daemon's resident memory
is the agent's (no CLI machinery, no progress bars). Same options as `edgeforge agent`.
"""

from __future__ import annotations

import argparse
import sys

from edgeforge.errors import EdgeforgeError
from edgeforge.fleet.agent import Agent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgeforge agent")
    parser.add_argument("--state", required=True)
    parser.add_argument("--server")
    parser.add_argument("--device-class")
    parser.add_argument("--device-id")
    parser.add_argument("--root")
    parser.add_argument("--token")
    parser.add_argument("--memory-limit")
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--probe-count", type=int, default=10)
    parser.add_argument("--canary-timeout", type=float, default=120.0)
    parser.add_argument("--once", action="store_true")
    parser.add_argument("--accept-jobs", action="store_true")
    args = parser.parse_args(argv)
    try:
        agent = Agent(
            args.state,
            server=args.server,
            device_class=args.device_class,
            device_id=args.device_id,
            token=args.token,
            root=args.root,
            memory_limit=args.memory_limit,
            interval=args.interval,
            probe_count=args.probe_count,
            canary_timeout=args.canary_timeout,
            accept_jobs=args.accept_jobs,
        )
        agent.run(once=args.once)
    except EdgeforgeError as exc:
        print(f"edgeforge: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
