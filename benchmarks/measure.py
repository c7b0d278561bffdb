"""Shared by the benchmarks: time and peak memory of an operation, each measurement in its own fresh process.

A fresh process per measurement keeps one measurement's allocations from hiding in another's peak. Peak memory is the
resident-set high-water mark during the operation (weights included; the kernel's mark is reset after loading, so
loading's own peak does not count) and, on CUDA, ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


def rss_kb(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (high-water mark) of this process, in kB (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak() -> bool:
    """Reset the kernel's high-water mark to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def timed(run: Callable[[], None]) -> float:
    """Seconds ``run`` takes, waiting for queued CUDA work before and after so that the clock covers it all."""
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    run()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def time_and_peak(run: Callable[[], None], repeats: int) -> dict:
    """Run ``run`` once as a warm-up (lazy inits, optimizer state), then ``repeats`` times; median time and peaks."""
    import torch

    cuda = torch.cuda.is_available()
    base = rss_kb("VmRSS")
    reset_ok = reset_peak()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = [timed(run) for _ in range(repeats + 1)][1:]  # the first is the warm-up
    return {
        "time_s": statistics.median(times),
        "times_s": times,
        "base_rss_mb": base / 1024,
        "peak_rss_mb": rss_kb("VmHWM") / 1024,
        "peak_reset": reset_ok,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "threads": torch.get_num_threads(),
    }


def run_worker(cmd: list[str]) -> dict:
    """Run a worker subprocess that prints one ``RESULT <json>`` line; return the parsed JSON or raise with stderr."""
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    out = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env=env)
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if out.returncode != 0 or not line:
        raise RuntimeError(f"worker {' '.join(cmd[1:])} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[-1][len("RESULT "):])
