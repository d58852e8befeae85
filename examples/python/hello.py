# Run with: python examples/python/hello.py
# (after installing the module: see crates/python/README.md)
"""Defines a job from a dict with the step builders, runs it on this host,
prints its output live, prefixed by target and stream, then the per-step
results — the Python API end to end, on a throwaway database."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from opsconductor import Conductor, ValidationError, copy, exec_, script


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "hello.db"
        with Conductor(f"sqlite://{db}", workers=2) as oc:
            oc.define_job(
                {
                    "name": "hello",
                    "description": "Greets someone, three ways.",
                    "params": {
                        "type": "object",
                        "properties": {"who": {"type": "string", "minLength": 1}},
                        "required": ["who"],
                    },
                    "steps": [
                        exec_('echo "hello, "{{ params.who }}', name="greet"),
                        script(
                            'echo "on $(uname -n) as $(id -un), run $OPSC_RUN_ID"\n'
                            'echo "a warning" >&2\n',
                            name="details",
                        ),
                        copy(f"{tmp}/greeting.txt", content="hello, {{ params.who }}\n", name="write"),
                    ],
                }
            )

            # Parameters are checked against the schema before anything runs.
            try:
                oc.run("hello", {"who": ""})
            except ValidationError as e:
                print(f"refused: {e.field}: {e.message}")

            run = oc.run("hello", {"who": "world; rm -rf / (just a string)"})
            for line in run.logs():  # live; ends when the run has ended
                print(f"{line.target or '-':>6} {line.stream:<6} | {line.text}")

            status = run.wait()
            for r in run.results:
                print(f"step {r.step} ({r.step_name}) on {r.target}: {r.status} (exit {r.exit_code})")
            print(f"run {run.id} {status}")
            print("wrote:", (Path(tmp) / "greeting.txt").read_text().strip())
            return 0 if status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
