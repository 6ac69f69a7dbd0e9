"""Run every benchmark in turn (``make bench``); each prints its own JSON and table and writes
the JSON to ``docs/benchmarks/<script>.json`` (the raw results behind ``docs/benchmarks.md``).

DeepCTR's side of the training benchmark runs when ``DEEPCTR_PYTHON`` names the python
of a scratch virtualenv with ``deepctr==0.9.4`` (see bench/README.md).
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(os.path.dirname(HERE), "docs", "benchmarks")


def _bench(script: str, *args: str) -> list:
    name = os.path.splitext(script)[0]
    return [sys.executable, os.path.join(HERE, script), *args, "--out", os.path.join(RESULTS, f"{name}.json")]


def main() -> int:
    deepctr = os.environ.get("DEEPCTR_PYTHON")
    commands = [
        _bench("preprocess_throughput.py"),
        _bench("beam_transforms.py"),
        _bench("train_throughput.py", *(["--deepctr-python", deepctr] if deepctr else [])),
        _bench("serving_latency.py"),
    ]
    for cmd in commands:
        print(f"\n### {os.path.basename(cmd[1])}", flush=True)
        rc = subprocess.call(cmd)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
