#!/usr/bin/env bash
# The GPU checks of the pretraining fast path, as one command for a machine with one CUDA GPU
# and a Python that already has torch, torchvision, timm, numpy, pandas, pillow, pyyaml, tqdm
# and pytest (the lent H200's image has them; the wheels of what it lacks travel in .whl/):
#
#   bash benchmarks/gpu_check.sh --prepare   # here, once: downloads those wheels into .whl/
#   bash benchmarks/gpu_check.sh             # there: GPU tests, then both benchmarks
#
# Every step has its own time limit so the whole run ends within 10 minutes; logs go to $OUT
# (or gpu-check/ when OUT is unset). The figures to report: benchmark 1 prints loader-only,
# model-only (MFU against the measured bf16 roof) and end-to-end pairs/s and the DropMAE/TwinMAE
# step ratio at ViT-B, batch 64, 224 px, compiled; benchmark 2 the ASAD drop-mask time.
set -uo pipefail
cd "$(dirname "$0")/.."

# The packages the GPU image lacks, for its Python 3.12 (pip cannot reach the index there).
WHEELS=(decord==0.6.0 "av>=12" scikit-video==1.1.11)

if [ "${1:-}" = "--prepare" ]; then
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux2010_x86_64 -d .whl "${WHEELS[@]}" || exit
    du -sh .whl
    exit 0
fi

out=${OUT:-gpu-check}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:$PWD/tests${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1

step() {  # step NAME SECONDS COMMAND...: run with a limit, keep the log, go on after a failure
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]}"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c \
    'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
} 2>&1 | tee "$out/machine.log"
# The GPU paths: ASAD on CUDA, compiled against eager on CUDA, bf16 against fp32, device decoding.
step tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_asad.py tests/test_fast_path.py
step pretrain_throughput 330 python3 benchmarks/pretrain_throughput.py --device cuda --workers 16 --compile
step asad_mask 60 python3 benchmarks/asad.py --device cuda --batch 64 --skip-step
