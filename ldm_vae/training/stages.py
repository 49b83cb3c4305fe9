"""Multi-stage tools (the demo, the study) run each stage as its own `ldm-vae` process."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time


def run_stage(name: str, arguments: list[str], log: list[str], done: bool = False) -> float | None:
    """Run `ldm-vae ARGUMENTS` in a child process unless `done`; returns its wall time. A failing stage
    stops the demo with the stage's exit code (its own error message is already printed)."""
    command = [sys.executable, "-m", "ldm_vae.train.cli", *arguments]
    printable = "ldm-vae " + shlex.join(arguments)
    log.append(printable)
    if done:
        print(f"\n=== {name}: finished earlier, skipped ({printable})", flush=True)
        return None
    print(f"\n=== {name}: {printable}", flush=True)
    start = time.perf_counter()
    child = subprocess.Popen(command)
    try:
        returncode = child.wait()
    except KeyboardInterrupt:  # the child got the same Ctrl-C: let it write its checkpoint, then stop
        child.wait()
        raise
    if returncode != 0:
        raise SystemExit(returncode)
    return time.perf_counter() - start
