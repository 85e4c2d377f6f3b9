#!/usr/bin/env bash
# The GPU checks of the pretraining fast path, as one command for a machine with one CUDA GPU
# and a Python that already has torch, torchvision, timm, numpy, pandas, pillow, pyyaml, tqdm
# and pytest (the lent H200's image has them; the wheels of what it lacks travel in .whl/):
#
#   bash benchmarks/gpu_check.sh --prepare   # here, once: downloads those wheels into .whl/
#   bash benchmarks/gpu_check.sh             # there: GPU tests, then both benchmarks (< 8 minutes)
#   bash benchmarks/gpu_check.sh --extended  # there, if time is left: eager + compiled steps at batch 256
#
# Every step has its own time limit so the whole run ends within 8 minutes; logs go to $OUT
# (or gpu-check/ when OUT is unset). What to read, side by side from one run:
# - tests: the fused Triton ASAD on CUDA (tests/test_asad_triton.py), the CUDA paths of ASAD and
#   of the fast path, the device-decode hazard test;
# - asad_mask: the Triton draw against the authors' approach (target >= 10x) and one decoder
#   layer's breakdown (torch ASAD vs Triton ASAD vs TwinMAE's SDPA);
# - pretrain_throughput: model-only TwinMAE, DropMAE with the Triton ASAD and with the torch
#   ASAD at ViT-B, batch 64, 224 px, compiled (ms, pairs/s, MFU against the measured bf16 roof,
#   peak memory; targets: step ratio <= 1.10, memory ratio <= 1.10), then end to end (DropMAE,
#   Triton ASAD) for the plain, packed and device paths.
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
if [ "${1:-}" = "--extended" ]; then
    step asad_steps 420 python3 benchmarks/asad.py --device cuda --skip-mask --skip-layer --step-batch 256 \
        --step-repeats 5 --compile
    exit 0
fi
# The GPU paths: the Triton ASAD (first: its kernels compile here), ASAD on CUDA, compiled
# against eager on CUDA, bf16 against fp32, device decoding (the stream hazard included).
step tests 120 python3 -m pytest -q -p no:cacheprovider -x tests/test_asad_triton.py tests/test_asad.py \
    tests/test_fast_path.py -k "(triton or cuda or gpu or device or compile) and not (eager_loss and cpu) and not packed_compiled"
step asad_mask 50 python3 benchmarks/asad.py --device cuda --batch 64 --skip-step
step pretrain_throughput 290 python3 benchmarks/pretrain_throughput.py --device cuda --workers 16 --compile \
    --compare-asad-kernels --loader-pairs 100
# One summary of the ratios, side by side.
grep -h -E "target|ratio|pairs/s|peak" "$out/asad_mask.log" "$out/pretrain_throughput.log" 2>/dev/null \
    | tee "$out/summary.log"
