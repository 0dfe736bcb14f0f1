"""Run one benchmark measurement in a fresh process and read back the row it prints.

A fresh process per measurement keeps peak memory and timings each variant's own.
The child prints its result as one line, ``ROW <json>``.
"""

from __future__ import annotations

import json
import subprocess


def run_row(command: list[str]) -> dict | None:
    """The child's ``ROW`` as a dict, or ``None`` (with the reason printed) if it failed."""
    done = subprocess.run(command, capture_output=True, text=True)
    rows = [line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")]
    if done.returncode or not rows:
        print(f"  failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-3:]}", flush=True)
        return None
    return json.loads(rows[0])
