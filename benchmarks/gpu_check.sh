#!/usr/bin/env bash
# The prepared GPU check: CUDA tests and renderer benchmarks on one lent GPU machine.
#
#   carry: [".whl"]   (the wheels that machine lacks, see below)
#   command: bash benchmarks/gpu_check.sh
#
# The machine has Python 3.12, torch 2.11, timm, einops, jaxtyping, hypothesis, transformers and
# scikit-image, but neither beartype nor gsplat (nor gsplat's ninja and rich), nor what the
# recipes import beyond those (simplejpeg, torchmetrics, TensorBoard's writer): they travel as
# wheels in .whl/, made here with
#   pip download --no-deps gsplat==1.5.3 beartype ninja rich markdown-it-py mdurl pygments -d .whl
#   pip download --no-deps --only-binary=:all: --python-version 3.12 simplejpeg torchmetrics \
#       lightning-utilities tensorboard protobuf absl-py -d .whl
# and `/.whl/` in .git/info/exclude. gsplat compiles its CUDA
# sources on first use (about a minute with 16 jobs). Every step runs even if an earlier one
# failed; the summary table comes last, and logs land in $OUT when it is set.
#
# To add a benchmark, append one `step` line at the end, e.g.
#   step "train step" python3 benchmarks/train_step.py --device cuda
set -uo pipefail
cd "$(dirname "$0")/.."

LOGS="${OUT:-/tmp/gpu_check}"
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
SUMMARY=()

step() {  # step NAME COMMAND...: run, log to $LOGS/<name>.log, record status and seconds
    local name="$1"; shift
    local log="$LOGS/$(echo "$name" | tr -c 'a-zA-Z0-9_.\n-' '_').log"
    local start=$SECONDS
    echo "=== $name: $*"
    "$@" 2>&1 | tee "$log"
    local status=${PIPESTATUS[0]}
    SUMMARY+=("| $name | $([ "$status" = 0 ] && echo ok || echo "FAILED ($status)") | $((SECONDS - start)) s |")
}

step "install wheels" python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl
export PATH="/tmp/site/bin:$PATH"  # ninja, for gsplat's JIT build
# The installed layout without a build step (that machine is offline): splathead/ with the
# top-level adapters/ folder inside it as splathead.adapters, as pyproject.toml maps it
# (`python3 -P` keeps the checkout itself off sys.path, so this layout is the one imported).
rm -rf /tmp/src && mkdir -p /tmp/src && cp -r splathead /tmp/src/ && cp -r adapters /tmp/src/splathead/
export PYTHONPATH="/tmp/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
# splathead_recipes._jpeg, as recipes/setup.py builds it, beside the recipes' package that pytest's
# pythonpath and the benchmarks import from the checkout (it needs libjpeg-turbo's headers there;
# without them this step fails and the loader decodes whole images, as the data benchmark says).
step "JPEG extension" bash -c 'cc -O2 -shared -fPIC -I"$(python3 -c "import sysconfig; \
print(sysconfig.get_paths()[\"include\"])")" recipes/csrc/jpeg_region.c -ljpeg \
-o recipes/splathead_recipes/_jpeg\
$(python3 -c "import sysconfig; print(sysconfig.get_config_var(\"EXT_SUFFIX\"))")'
step "environment" python3 -c "import torch, gsplat, beartype; print('torch', torch.__version__, \
'| gsplat', gsplat.__version__, '|', torch.cuda.get_device_name())"
step "pytest -m cuda" python3 -P -m pytest -m cuda -p no:cacheprovider -q -ra tests
step "render benchmark" python3 benchmarks/render.py --device cuda --configs 256x256x224 \
    --backends torch,gsplat --repeats 5
step "train step" python3 benchmarks/train_step.py --config base --batch 256 --device cuda --profile
step "train step compiled" python3 benchmarks/train_step.py --config base --batch 256 --device cuda \
    --compile
# The input pipeline on 16 cores, --gpu-decode with nvJPEG: 100 JPEGs the size of BSDS500's,
# made from scikit-image's photos (the machine has no dataset).
step "sample JPEGs" python3 -c "
import os, skimage.data
from PIL import Image
os.makedirs('/tmp/jpegs', exist_ok=True)
photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
for index in range(100):
    size = (481, 321) if index % 2 else (321, 481)
    Image.fromarray(photos[index % 4]).resize(size).save(f'/tmp/jpegs/{index}.jpg', quality=90)
"
step "data benchmark" python3 benchmarks/data.py --images /tmp/jpegs --workers 1 4 \
    --samples 2048 --rounds 2 --device cuda

echo
echo "| step | status | time |"
echo "|---|---|---:|"
printf '%s\n' "${SUMMARY[@]}"
grep -h '^| [0-9]' "$LOGS"/render_benchmark.log 2>/dev/null | sed 's/^/render: /'
grep -h '^| \(MAE\|GMAE\)\|^online probes' "$LOGS"/train_step*.log 2>/dev/null | sed 's/^/train: /'
grep -h '^| \(torchvision\|recipe\)\|^speedup' "$LOGS"/data_benchmark.log 2>/dev/null | sed 's/^/data: /'
