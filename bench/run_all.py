"""Run every benchmark in turn (``make bench``); each prints its own JSON and table.

DeepCTR's side of the training benchmark runs when ``DEEPCTR_PYTHON`` names the python
of a scratch virtualenv with ``deepctr==0.9.4`` (see bench/README.md).
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    deepctr = os.environ.get("DEEPCTR_PYTHON")
    commands = [
        [sys.executable, os.path.join(HERE, "preprocess_throughput.py")],
        [sys.executable, os.path.join(HERE, "train_throughput.py")] + (["--deepctr-python", deepctr] if deepctr else []),
        [sys.executable, os.path.join(HERE, "serving_latency.py")],
    ]
    for cmd in commands:
        print(f"\n### {os.path.basename(cmd[1])}", flush=True)
        rc = subprocess.call(cmd)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
