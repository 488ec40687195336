#!/usr/bin/env bash
# benchmarks/gpu_check.py on a GPU machine without network: the wheels in .whl/ (if any; which ones, and
# the pip download command, are in gpu_check.py's docstring) are installed into /tmp/site with pip
# --no-index, put first on PYTHONPATH with this checkout, and the check runs with the arguments given.
#
#   bash benchmarks/gpu_check.sh --out gpu.jsonl            # 7B, bf16, cuda: meant to end within ~8 minutes
#   bash benchmarks/gpu_check.sh --only app,space --out gpu-rerun.jsonl
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
site="${GPU_CHECK_SITE:-/tmp/site}"

shopt -s nullglob
wheels=("$repo"/.whl/*.whl)
if ((${#wheels[@]})); then
  # --no-deps: every wheel that must travel is named in the docstring; the machine's own packages stay
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "${wheels[@]}"
  export PYTHONPATH="$site:$repo${PYTHONPATH:+:$PYTHONPATH}"
  echo "gpu_check.sh: installed ${#wheels[@]} wheel(s) from .whl/ into $site" >&2
else
  export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
  echo "gpu_check.sh: no .whl/ wheels: running on the machine's own packages" >&2
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$python" "$repo/benchmarks/gpu_check.py" "$@"
