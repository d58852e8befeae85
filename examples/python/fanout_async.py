# Run with: python examples/python/fanout_async.py
# (after installing the module: see crates/python/README.md)
"""asyncio: several ad-hoc commands at once on a few targets, their output
interleaved live as it arrives, without blocking the event loop."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from opsconductor import Conductor, Local, Run


async def show(label: str, run: Run) -> None:
    async for line in run.logs_async():
        print(f"[{label}] {line.target}: {line.text}")


async def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        with Conductor(f"sqlite://{Path(tmp) / 'fanout.db'}", workers=3) as oc:
            for i in range(4):
                oc.add_target(Local(f"node-{i}", tags=["fleet"], vars={"index": i}))

            commands = {
                "uptime": "uptime",
                "slow": "sleep 0.$((RANDOM % 9 + 1)) 2>/dev/null || sleep 0.5; echo done",
                "kernel": "uname -sr",
            }
            runs = {label: oc.exec(cmd, targets="tag:fleet", timeout=30) for label, cmd in commands.items()}

            # Follow every run's output at once, then collect the outcomes.
            await asyncio.gather(*(show(label, run) for label, run in runs.items()))
            statuses = await asyncio.gather(*(run.wait_async() for run in runs.values()))
            for (label, run), status in zip(runs.items(), statuses):
                codes = sorted((r.target, r.exit_code) for r in run.results)
                print(f"{label}: {status} {codes}")
            return 0 if all(s == "succeeded" for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
