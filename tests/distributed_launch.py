"""Starting small torchrun jobs from the tests: 2 processes on the CPU (gloo), one thread each,
a free rendezvous port (--standalone), a hard timeout, and nothing left running after it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def torchrun(
    args: list[str], nproc: int = 2, timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc-per-node N args...``; raises
    AssertionError with the job's output when it fails or runs past ``timeout``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    # Its own session, so that on a timeout the launcher and every worker are killed together.
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"torchrun {' '.join(args)} ran past {timeout} s:\n{out[-6000:]}") from None
    if proc.returncode != 0:
        raise AssertionError(f"torchrun {' '.join(args)} failed ({proc.returncode}):\n{out[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")
