#!/usr/bin/env bash
# Make .venv with everything the demo, the tests and CI need, on a machine without a GPU. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH=2.13.0
# PyTorch's own index of CPU builds: a plain `pip install torch` from PyPI is the CUDA build on Linux
# (about 20 nvidia-* packages, several GB).
CPU_INDEX=https://download.pytorch.org/whl/cpu
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip
is_cpu_torch() { .venv/bin/python -c "import torch, sys; sys.exit(torch.version.cuda is not None)" 2>/dev/null; }
if ! is_cpu_torch; then
  # The CPU build from where pip is configured to look (a local wheel folder or mirror), else from the CPU
  # index; an index that cannot be reached fails within seconds (no retries) instead of stalling CI.
  pip install -q "torch==$TORCH+cpu" 2>/dev/null \
    || pip install -q --timeout 10 --retries 0 --index-url "$CPU_INDEX" "torch==$TORCH+cpu" \
    || { echo "dev/setup.sh: could not install the CPU build torch==$TORCH+cpu (neither from pip's configured" \
              "sources nor from $CPU_INDEX)" >&2; exit 1; }
fi
is_cpu_torch || { echo "dev/setup.sh: .venv has a CUDA build of torch; remove .venv and run again" >&2; exit 1; }
# The installed torch is a constraint, so no requirement below can replace it with a CUDA build.
pip install -q -r dev/requirements.txt -c <(.venv/bin/python -c "import torch; print('torch==' + torch.__version__)")
is_cpu_torch || { echo "dev/setup.sh: dev/requirements.txt replaced the CPU torch" >&2; exit 1; }
