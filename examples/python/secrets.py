# Run with: python examples/python/secrets.py
# (after installing the module: see crates/python/README.md)
"""Secrets are write-only: set one, list metadata (never values), use it in a
job as an environment variable, and see it masked in the output."""

from __future__ import annotations

import base64
import os
import sys
import tempfile
from pathlib import Path

from opsconductor import Conductor, Conflict, exec_


def main() -> int:
    # A real deployment keeps its master key safe (OPSC_MASTER_KEY, a key file).
    master_key = base64.b64encode(os.urandom(32)).decode()
    with tempfile.TemporaryDirectory() as tmp:
        with Conductor(f"sqlite://{Path(tmp) / 'secrets.db'}", master_key=master_key) as oc:
            info = oc.set_secret("db-password", "correct-horse-battery-staple", kind="password",
                                 description="The app's database password")
            print(f"stored {info.name} (kind {info.kind}, version {info.version})")

            oc.define_job(
                {
                    "name": "migrate",
                    "secrets": ["db-password"],  # reaches commands as $DB_PASSWORD
                    "steps": [exec_('echo "connecting with password=$DB_PASSWORD"')],
                }
            )
            run = oc.run("migrate", wait=True)
            for line in run.logs():
                print(f"output: {line.text}")  # the value is masked: ***

            for s in oc.secrets():
                print(f"{s.name}: {s.kind}, used by jobs {s.used_by_jobs}, updated by {s.updated_by}")

            try:
                oc.delete_secret("db-password")
            except Conflict as e:
                print(f"not deleted: {e}")
            oc.delete_secret("db-password", force=True)
            print("secrets left:", [s.name for s in oc.secrets()])
            return 0 if run.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
