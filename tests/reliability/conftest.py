"""Helpers for the reliability suite: every fault is met the way a user meets it, through
the ``ctrflow`` command line (in a subprocess where the exit code or a kill matters)."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "configs")


def ctrflow(*args, cwd=None, timeout=600, check=None):
    """Run ``ctrflow ARGS`` in a fresh Python process; returns the CompletedProcess.

    ``check`` = an expected exit code (asserted, with stderr shown when it differs)."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check is not None:
        assert proc.returncode == check, (f"exit {proc.returncode}, expected {check}\n"
                                          f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture
def cli():
    return ctrflow
