"""How long `zest --help` takes, and what `import zest_hf` prints and loads: this checkout against another revision,
side by side in one run (runs interleaved, median of --repeats, each in a fresh interpreter).

    python benchmarks/cli_start.py --before 447fb00      # zest_hf 0.2's last commit
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "pandas", "scipy", "matplotlib", "bitsandbytes")
PROBE_IMPORT = "import sys, zest_hf; print(sorted(m for m in %r if m in sys.modules))" % (HEAVY,)


def _run(src: Path, args: list[str]) -> tuple[float, str, str]:
    env = {"PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    return time.perf_counter() - t0, out.stdout.strip(), out.stderr.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="git revision to compare with (e.g. 447fb00)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(old), args.before], check=True)
        try:
            trees = {f"before ({args.before})": old / "src", "after (this checkout)": ROOT / "src"}
            times = {k: {"--help": [], "select --help": []} for k in trees}
            for _ in range(args.repeats):
                for label, src in trees.items():
                    times[label]["--help"].append(_run(src, ["-m", "zest_hf", "--help"])[0])
                    times[label]["select --help"].append(_run(src, ["-m", "zest_hf", "select", "--help"])[0])
            print("| tree | `zest --help` s | `zest select --help` s | `import zest_hf` loads | `import zest_hf` prints |")
            print("| --- | ---: | ---: | --- | --- |")
            for label, src in trees.items():
                _, loaded, printed = _run(src, ["-c", PROBE_IMPORT])
                printed = printed.replace("\n", " / ")[:80] or "nothing"
                print(f"| {label} | {statistics.median(times[label]['--help']):.2f} | "
                      f"{statistics.median(times[label]['select --help']):.2f} | {loaded} | {printed} |")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
