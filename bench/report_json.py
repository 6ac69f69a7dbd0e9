"""Where a benchmark's JSON document goes: printed, and written to ``--out`` (``make bench``
writes ``docs/benchmarks/<script>.json``, the raw results behind ``docs/benchmarks.md``)."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from typing import Optional


def machine() -> dict:
    """When and on what a run was measured (the load average says how busy the machine was)."""
    cpu = next((line.split(":", 1)[1].strip() for line in _lines("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return {"measured_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": cpu, "cpus": os.cpu_count(), "load_average_1_5_15": list(os.getloadavg())}


def run_worker(cmd, cwd: str, env: Optional[dict] = None) -> dict:
    """Run a benchmark worker process and return the JSON of its ``RESULT {json}`` line (one
    process per measurement, so peak memory and tracing are per run); fails with its output."""
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"benchmark worker failed: {' '.join(cmd)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def emit(doc: dict, out: Optional[str]) -> None:
    """Print ``doc`` as JSON and, when ``out`` is given, write it there too."""
    text = json.dumps(doc, indent=2)
    print(text, flush=True)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as fh:
            fh.write(text + "\n")


def _lines(path: str) -> list:
    try:
        with open(path) as fh:
            return fh.readlines()
    except OSError:
        return []
