#!/usr/bin/env bash
# bench/gpu_check.py as one call of the device tool (one GPU, no network).
#
# 1. Here, once, from the root of the checkout the session's device tool sends:
#        bash bench/gpu_check.sh prepare
#    copies the tiny default's model and its warm-start (built into ~/.cache/pods-kit first if
#    absent: about 2 minutes on 2 cores) into .gpucache/, which git is told to ignore, so the
#    device does not spend its minutes on the warm-start.
# 2. One device call (the script stops starting bench steps at 480 s; timeout 570 s here):
#        run(command="bash bench/gpu_check.sh", carry=[".gpucache"], timeout_s=600)
#    It writes gpu_check.json, gpu_check.md and gpu_check.log under $OUT (results/gpu/ when
#    run elsewhere); copy them to results/gpu/. Extra arguments go to gpu_check.py
#    (e.g. `bash bench/gpu_check.sh --parts bench` to rerun the timings alone).
# 3. `pods cost` on the device, in its own call (about 3 minutes):
#        run(command="bash bench/gpu_check.sh cost", carry=[".gpucache", ".whl"], timeout_s=600)
#    measures the tiny default's GRPO and PODS steps one at a time on the GPU (hf engine, the
#    warm-start from .gpucache) and writes cost.md, cost.csv and cost.log under $OUT (copy them
#    to results/gpu/); extra arguments go to `pods cost` (e.g. `--sweep n=8,16,32`). The `pods`
#    command imports pandas and matplotlib: carry them as wheels (below) if the device lacks
#    them (`python3 -c "import pandas, matplotlib"` there tells).
#
# Packages: on these paths podslib imports torch, transformers, peft, pyyaml, numpy and tqdm,
# all installed on the device (math-verify, papermill and pandas are not imported). Should one
# be missing there, carry it as a wheel: here
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --implementation cp --platform manylinux_2_17_x86_64 -d .whl NAME==VERSION
# (pure-Python wheels are 'any' and match too; .whl/ is git-ignored), then add ".whl" to carry:
# this script installs what .whl/ holds before it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -x .venv/bin/python ]]; then py=${PYTHON:-.venv/bin/python}; else py=${PYTHON:-python3}; fi

if [[ "${1:-}" == prepare ]]; then
  exclude=$(git rev-parse --git-path info/exclude)
  grep -qxF '/.gpucache/' "$exclude" 2>/dev/null || echo '/.gpucache/' >>"$exclude"
  PYTHONPATH=$PWD "$py" - <<'EOF'
import shutil
from pathlib import Path

from podslib.config import Config
from podslib.training.warmstart import policy_path, tiny_base

cfg = Config()                               # the tiny default, warm-start included
for src in (tiny_base(cfg.tiny, cfg.cache_dir), Path(policy_path(cfg))):
    dst = Path(".gpucache") / src.name
    if not dst.exists():
        shutil.copytree(src, dst)
    print(f"{dst} ready")
EOF
  exit 0
fi

out=${OUT:-results/gpu}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [[ -d .whl ]]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
cache=()
if [[ -d .gpucache ]]; then
  cache=(--cache-dir "$PWD/.gpucache")
else
  echo "gpu_check.sh: no .gpucache (bash bench/gpu_check.sh prepare): the warm-start runs here"
fi

if [[ "${1:-}" == cost ]]; then
  shift
  tiny=(device=cuda engine=hf)
  [[ -d .gpucache ]] && tiny+=("cache_dir=$PWD/.gpucache")
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    timeout 540 "$py" -m podslib cost configs/tiny.yaml "${tiny[@]}" --results-root "$out/cost" \
        "$@"
  } 2>&1 | tee "$out/cost.log"
  cp "$out"/cost/tiny/cost.md "$out"/cost/tiny/cost.csv "$out"/
  exit 0
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  timeout 570 "$py" bench/gpu_check.py --device cuda --out "$out/gpu_check.json" \
      "${cache[@]}" "$@"
} 2>&1 | tee "$out/gpu_check.log"
