#!/usr/bin/env bash
# The prepared GPU check (bench/gpu_check.py; bench/README.md, "gpu_check"): offline, nothing fetched.
# Installs the wheels carried in .gpudata/whl (if any) into a folder of its own, then runs the check:
#   bash bench/gpu_check.sh [--quick] [--device cpu] [--data-dir DIR] [--models-dir DIR] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/gpu_check_site}
# only where they are missing (the GPU machine's image): here they are installed, for another Python
if ! "$PY" -c "import pydantic, datasets, seqeval, rouge_score" 2>/dev/null && compgen -G ".gpudata/whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpudata/whl/*.whl
  export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PY" bench/gpu_check.py run "$@"
