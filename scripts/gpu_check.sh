#!/usr/bin/env bash
# One-command GPU rehearsal: parity, speed and train_model.py end to end on whatever GPU is visible; Markdown for
# bench/RESULTS.md in OUT_DIR.
#
#   scripts/gpu_check.sh [torch|kernels|all] [OUT_DIR]        (default: all, $OUT or ./gpu_check_out)
#
# torch    needs only a CUDA build of torch: the chunked PyTorch scan's parity and speed, `paper` and `large` training
#          throughput and memory with activation checkpointing off and on, inference throughput, train_model.py on
#          1,000 synthetic records. On an H200 the steps before train_model.py took about 3 minutes (2026-12-04).
# kernels  builds mamba-ssm and causal-conv1d for this card only from the source distributions in $WHEELHOUSE
#          (default wheelhouse/; scripts/build_cuda_extensions.sh --help says how to download them beforehand on
#          a machine with internet), then the same measurements with the kernels, plus kernel parity and the
#          chunked scan's speed relative to the kernel. The build takes minutes: on an H200's 16 cores (sharing
#          them) causal-conv1d built within a lease, a full mamba-ssm had not finished after 7 minutes, its three
#          complex-A backward files still compiling. So this stage builds the two packages at once and without
#          the complex-A kernels (--real-only; BUILD_ARGS="" for all): 338 s with the verification, and the whole
#          stage 425 s, on an H200's 16 cores (2026-12-04). With a short lease run this stage first.
# all      torch, then kernels when the wheelhouse holds the two source distributions.
# Each stage ends with bench/profile_step.py on `paper` (profile_<stage>.md): the step's GPU time by kernel group.
#
# Python packages the GPU machine lacks (iterative-stratification, say) are installed from $WHEELS (default
# .whl/) when that folder exists. Exit status: 0 when every stage ran, 2 without a GPU, 1 on a failure.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STAGE=${1:-all}
OUT_DIR=${2:-${OUT:-$REPO_ROOT/gpu_check_out}}
PYTHON=${PYTHON:-python3}
WHEELHOUSE=${WHEELHOUSE:-$REPO_ROOT/wheelhouse}
WHEELS=${WHEELS:-$REPO_ROOT/.whl}
export PYTHONUNBUFFERED=1

case $STAGE in torch | kernels | all) ;; *) echo "usage: $0 [torch|kernels|all] [OUT_DIR]" >&2; exit 1 ;; esac
mkdir -p "$OUT_DIR"
cd "$REPO_ROOT"

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check.sh: no CUDA GPU visible to $PYTHON (or no torch): nothing to measure" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT_DIR/card.txt" 2>&1 || true

if [[ -d $WHEELS ]] && compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpu_check_site \
        "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi

run_profile() {  # run_profile STAGE: where a `paper` step's GPU time goes (bench/profile_step.py), about 30 s
    "$PYTHON" bench/profile_step.py --preset paper --batch 32 --out "$OUT_DIR/profile_$1.md" >/dev/null
}

run_torch() {
    echo "==> stage torch" >&2
    "$PYTHON" bench/gpu_check.py --stage torch --out "$OUT_DIR/gpu_check_torch.md" 2>&1 | tee "$OUT_DIR/torch.log"
    run_profile torch
}

run_kernels() {
    echo "==> stage kernels: building mamba-ssm and causal-conv1d for this card" >&2
    local started=$SECONDS
    # --real-only: ecgmamba needs no complex-A kernel, and those are the slowest to compile. BUILD_ARGS="" builds all.
    # shellcheck disable=SC2086  # BUILD_ARGS is a list of options
    PYTHON=$PYTHON scripts/build_cuda_extensions.sh --wheelhouse "$WHEELHOUSE" ${BUILD_ARGS---real-only} 2>&1 |
        tee "$OUT_DIR/build.log"
    echo "==> build and verification took $((SECONDS - started)) s" | tee -a "$OUT_DIR/build.log" >&2
    "$PYTHON" bench/gpu_check.py --stage kernels --out "$OUT_DIR/gpu_check_kernels.md" 2>&1 |
        tee "$OUT_DIR/kernels.log"
    run_profile kernels
}

have_sdists() {
    compgen -G "$WHEELHOUSE/mamba_ssm-*.tar.gz" >/dev/null && compgen -G "$WHEELHOUSE/causal_conv1d-*.tar.gz" >/dev/null
}

case $STAGE in
    torch) run_torch ;;
    kernels) run_kernels ;;
    all)
        run_torch
        if have_sdists; then
            run_kernels
        else
            echo "gpu_check.sh: no mamba-ssm/causal-conv1d source distributions in $WHEELHOUSE; stage kernels skipped" >&2
        fi
        ;;
esac
echo "==> Markdown for bench/RESULTS.md in $OUT_DIR" >&2
