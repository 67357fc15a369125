#!/usr/bin/env bash
# Build mamba-ssm's and causal-conv1d's CUDA extensions on a GPU machine without internet access, for that machine's
# card only, from source distributions downloaded beforehand; then check them against ecgmamba's CPU reference.
#
# Hospital and university clusters often have GPUs but no internet, so `pip install mamba-ssm` (which downloads a
# prebuilt wheel from GitHub, or compiles for six GPU generations) is not an option there. Run `--help` for the
# procedure. The Dockerfile's BUILD_FROM_SOURCE=1 path uses this script as well (with --skip-verify: no GPU at
# `docker build`).
#
# Status: tests/test_docker.py runs `bash -n`, --help, --dry-run, the nvcc flag rewriting and --real-only on
# stand-in sdists, the concurrent build, and the verification's Python with the CPU reference standing in for the
# kernels. Run for real on an H200 (torch 2.11.0+cu130, nvcc 13.0, 16 cores, 2026-12-04): with --real-only both
# packages built in 302 s (causal-conv1d 300 s, mamba-ssm 86 s) and the verification passed.
set -euo pipefail
shopt -s inherit_errexit  # a failing command inside $(...) stops the script too

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
REQUIREMENTS_CUDA="$REPO_ROOT/requirements-cuda.txt"
# The two packages with CUDA extensions, in build order (mamba-ssm imports causal-conv1d when present).
EXTENSION_PACKAGES=(causal-conv1d mamba-ssm)
BUILD_PACKAGES=("${EXTENSION_PACKAGES[@]}")  # --skip-causal-conv1d: mamba-ssm only

die() {
    echo "build_cuda_extensions.sh: error: $*" >&2
    exit 1
}

pinned_version() {  # pinned_version NAME -> the version requirements-cuda.txt pins NAME to
    local version
    version=$(sed -n "s/^$1==\([^[:space:]#]*\).*/\1/p" "$REQUIREMENTS_CUDA")
    [[ -n $version ]] || die "$REQUIREMENTS_CUDA does not pin $1 (expected a line '$1==VERSION')"
    echo "$version"
}

runtime_pins() {  # every name==version line of requirements-cuda.txt except the two extension packages
    grep -E '^[A-Za-z0-9][A-Za-z0-9._-]*==' "$REQUIREMENTS_CUDA" | sed 's/[[:space:]]*#.*//' |
        grep -v -E "^($(IFS='|'; echo "${EXTENSION_PACKAGES[*]}"))=="
}

sdist_name() {  # sdist_name mamba-ssm -> mamba_ssm-2.3.2.post1.tar.gz (the file name pip download saves)
    echo "${1//-/_}-$(pinned_version "$1").tar.gz"
}

usage() {
    local mamba causal
    mamba=$(pinned_version mamba-ssm)
    causal=$(pinned_version causal-conv1d)
    cat <<EOF
Usage: scripts/build_cuda_extensions.sh [--wheelhouse DIR] [--arch LIST] [--jobs N] [--real-only]
                                      [--skip-causal-conv1d] [--skip-verify] [--dry-run]
       scripts/build_cuda_extensions.sh --verify-only

Builds causal-conv1d $causal and mamba-ssm $mamba (the versions requirements-cuda.txt pins) from their source
distributions in the wheelhouse, compiling the CUDA kernels for this machine's GPU only, with no network access;
installs them and their pinned runtime dependencies into the Python environment that runs the script
(\$PYTHON, default: python); then checks ecgmamba's selective scan, causal conv and a small model on CUDA
against the CPU reference and prints the largest differences.

1. On a machine WITH internet (Linux x86_64, Python 3.11, any torch, CPU-only is fine), from the repository root:

     MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE \\
       python -m pip download --no-deps --no-build-isolation --no-binary mamba-ssm,causal-conv1d \\
       -r requirements-cuda.txt -d wheelhouse/

   This saves mamba_ssm-$mamba.tar.gz, causal_conv1d-$causal.tar.gz and the wheels of their pinned
   runtime dependencies (about 25 MB). The SKIP variables only stop setup.py from looking for nvcc while pip
   reads the package metadata; --no-build-isolation lets it import the local torch for that.
   Three of those wheels (regex, pyyaml, charset-normalizer) are built for the downloading Python. If the GPU
   machine runs another Python (3.12, say), add its wheels too (the --dry-run of step 3 names any that are missing):

     grep -E '^(regex|pyyaml|charset-normalizer)==' requirements-cuda.txt | xargs python -m pip download \\
       --no-deps --only-binary :all: --python-version 3.12 --platform manylinux2014_x86_64 -d wheelhouse/

2. Copy the repository, including wheelhouse/, to the GPU machine. There you need: a CUDA build of PyTorch, nvcc
   of the same CUDA major version (e.g. a CUDA module: module load cuda/12.8), g++, and the project's own
   requirements (requirements.txt without its torch line).

3. On the GPU machine (a compute node, so that the card is visible):

     scripts/build_cuda_extensions.sh --dry-run     # checks and the plan; changes nothing
     scripts/build_cuda_extensions.sh

Options:
  --wheelhouse DIR  where the downloads are (default: wheelhouse/ in the repository)
  --arch LIST       compute capabilities to build for, e.g. "8.6" or "7.5;8.0;9.0+PTX" (default: the visible
                    card's, from torch.cuda.get_device_capability()). T4 7.5, A100 8.0, A10/RTX 30 8.6,
                    L4/RTX 40 8.9, H100 9.0. Compile time grows with the number of architectures: one,
                    instead of the six the packages list for CUDA 12.8 (sm_75 sm_80 sm_87 sm_90 sm_100 sm_120).
  --jobs N          parallel nvcc jobs, MAX_JOBS (default: CPU count, at most one per 4 GB of free memory); with
                    two or more, the two packages compile at the same time and share them
  --skip-causal-conv1d
                    build mamba-ssm only: ecgmamba then runs the blocks' short causal convolution with PyTorch's
                    conv1d (causal-conv1d took 300 s of a 302 s build on an H200, mamba-ssm 86 s)
  --real-only       skip mamba-ssm's complex-A selective-scan kernels (3 of its 9 .cu files, the slowest to
                    compile): ecgmamba, and mamba-ssm's own Mamba and Mamba2 blocks, use a real A. A complex A
                    then raises mamba-ssm's "not implemented for weight type" error. For short GPU leases.
  --skip-verify     build and install only (no GPU needed, e.g. inside docker build)
  --verify-only     only the verification, of whatever is installed (e.g. in the Docker image)
  --dry-run         run the checks and print what would be done; exit status 1 if a check fails
  -h, --help        this text

Environment: PYTHON (the interpreter to build for, default: python).

How: both setup.py files hard-code their -gencode list, so TORCH_CUDA_ARCH_LIST alone changes nothing; the script
runs each setup.py with torch's CUDAExtension wrapped so that the -gencode flags are replaced by --arch's.
MAMBA_FORCE_BUILD and CAUSAL_CONV1D_FORCE_BUILD stop setup.py from trying to download a prebuilt wheel.
EOF
}

# ----------------------------------------------------------------------------------------------------------------
# nvcc flags

gencode_flags() {  # gencode_flags "7.5;8.6 9.0+PTX" -> -gencode arch=compute_75,code=sm_75 ... (one per line)
    local arch number
    for arch in ${1//[;,]/ }; do
        [[ $arch =~ ^([0-9]+)\.([0-9])(a?)(\+PTX)?$ ]] ||
            die "--arch: '$arch' is not a compute capability such as 8.6, 9.0a or 9.0+PTX"
        number="${BASH_REMATCH[1]}${BASH_REMATCH[2]}${BASH_REMATCH[3]}"
        printf '%s\n' -gencode "arch=compute_${number},code=sm_${number}"
        if [[ -n ${BASH_REMATCH[4]} ]]; then
            printf '%s\n' -gencode "arch=compute_${number},code=compute_${number}"
        fi
    done
}

run_setup_with_gencode() {  # run_setup_with_gencode SOURCE_DIR GENCODE_FLAG... -- SETUP_ARG...
    # Runs SOURCE_DIR/setup.py with every CUDAExtension's nvcc -gencode/-arch flags replaced by GENCODE_FLAGs.
    local source_dir=$1
    shift
    (cd "$source_dir" && "${PYTHON:-python}" - "$@" <<'PY'
import os
import runpy
import sys

import torch.utils.cpp_extension as cpp_extension

separator = sys.argv.index("--")
gencode, setup_args = sys.argv[1:separator], sys.argv[separator + 1:]
original_extension = cpp_extension.CUDAExtension


def without_arch_flags(flags):
    kept, removed, i = [], [], 0
    while i < len(flags):
        flag = flags[i]
        if flag in ("-gencode", "--generate-code", "-arch", "--gpu-architecture") and i + 1 < len(flags):
            removed += flags[i:i + 2]
            i += 2
            continue
        if flag.startswith(("-gencode=", "--generate-code=", "-arch=", "--gpu-architecture=")):
            removed.append(flag)
        else:
            kept.append(flag)
        i += 1
    return kept, removed


def restricted_extension(name, sources, *args, **kwargs):
    skip = os.environ.get("ECGMAMBA_SKIP_SOURCES_ENDING")
    if skip:
        dropped = [source for source in sources if str(source).endswith(skip)]
        sources = [source for source in sources if not str(source).endswith(skip)]
        print(f"{name}: not compiling {' '.join(map(str, dropped)) or 'nothing'} (--real-only)", flush=True)
    compile_args = kwargs.get("extra_compile_args")
    if not isinstance(compile_args, dict):
        compile_args = {"cxx": list(compile_args or [])}
    kept, removed = without_arch_flags(list(compile_args.get("nvcc", [])))
    compile_args["nvcc"] = kept + gencode
    kwargs["extra_compile_args"] = compile_args
    print(f"{name}: nvcc builds for {' '.join(gencode)} (setup.py asked for {' '.join(removed) or 'nothing'})",
          flush=True)
    return original_extension(name, sources, *args, **kwargs)


cpp_extension.CUDAExtension = restricted_extension
sys.argv = ["setup.py"] + setup_args
sys.path.insert(0, ".")
runpy.run_path("setup.py", run_name="__main__")
PY
    )
}

drop_complex_kernels() {  # drop_complex_kernels MAMBA_SOURCE_DIR: --real-only's edit of mamba-ssm's selective scan
    # ecgmamba, like mamba-ssm's own Mamba and Mamba2 blocks, uses a real A. The complex-A kernels are a third of
    # the .cu files and the slowest to compile. The dispatch's complex branch is removed, so a complex A raises
    # mamba-ssm's own "not implemented for weight type" error instead of failing to link.
    (cd "$1/csrc/selective_scan" && "${PYTHON:-python}" - <<'PY'
import glob
import re
import sys

path = "selective_scan.cpp"
with open(path) as f:
    text = f.read()
branch = (r"\}\s*else\s+if\s*\(WTYPE\s*==\s*at::ScalarType::ComplexFloat\)\s*\{\s*\\\s*"
          r"using\s+weight_t\s*=\s*c10::complex<float>;\s*\\\s*__VA_ARGS__\(\);\s*\\\s*")
text, count = re.subn(branch, "", text)
if count != 1:
    sys.exit(f"--real-only: expected one complex-weight branch in {path}, found {count}; this mamba-ssm's "
             "source differs from the pinned one, build without --real-only")
with open(path, "w") as f:
    f.write(text)
for path in sorted(glob.glob("selective_scan_fwd_*.cu")):
    with open(path) as f:
        lines = f.read().splitlines(keepends=True)
    kept = [line for line in lines if not re.match(r"\s*template\s+void\s+selective_scan_fwd_cuda<.*complex_t>", line)]
    if len(lines) - len(kept) != 1:
        sys.exit(f"--real-only: expected one complex instantiation in {path}, found {len(lines) - len(kept)}")
    with open(path, "w") as f:
        f.writelines(kept)
print("--real-only: removed the complex-weight dispatch and forward instantiations; the complex backward "
      "files are not compiled", flush=True)
PY
    )
}

# ----------------------------------------------------------------------------------------------------------------
# Checks (read-only): fill PROBLEMS, print one line each

PROBLEMS=()

ok() { echo "  ok       $*"; }
problem() {
    echo "  PROBLEM  $*"
    PROBLEMS+=("$*")
}

default_jobs() {
    local cpus memory_gb
    cpus=$(nproc 2>/dev/null || echo 1)
    memory_gb=$(awk '/^MemAvailable:/ {print int($2 / 1048576)}' /proc/meminfo 2>/dev/null || echo 4)
    local by_memory=$((memory_gb / 4))
    ((by_memory < 1)) && by_memory=1
    echo $((cpus < by_memory ? cpus : by_memory))
}

check_environment() {
    local info
    if ! info=$("$PYTHON" - <<'PY' 2>&1
import platform
import torch
from torch.utils.cpp_extension import CUDA_HOME, is_ninja_available
capability = ""
name = ""
if torch.cuda.is_available():
    capability = "%d.%d" % torch.cuda.get_device_capability(0)
    name = torch.cuda.get_device_name(0).replace(" ", "_")
print(platform.python_version(), torch.__version__, torch.version.cuda or "-", capability or "-", name or "-",
      CUDA_HOME or "-", int(is_ninja_available()))
PY
    ); then
        problem "$PYTHON cannot import torch: ${info##*$'\n'}"
        return
    fi
    info=${info##*$'\n'}  # the last line; anything before it is a warning printed while importing torch
    local python_version torch_version torch_cuda capability device cuda_home ninja
    read -r python_version torch_version torch_cuda capability device cuda_home ninja <<<"$info"
    ok "python $python_version ($PYTHON), torch $torch_version"

    if [[ $torch_cuda == - ]]; then
        problem "torch $torch_version is a CPU-only build: the extensions need a CUDA build of torch"
    else
        ok "torch built for CUDA $torch_cuda"
    fi

    if [[ $cuda_home == - ]]; then  # a CPU-only torch does not look for nvcc; look where torch would
        cuda_home=${CUDA_HOME:-${CUDA_PATH:-}}
        if [[ -z $cuda_home ]] && command -v nvcc >/dev/null; then
            cuda_home=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
        fi
    fi
    if [[ -z $cuda_home || ! -x $cuda_home/bin/nvcc ]]; then
        problem "nvcc not found (set CUDA_HOME or put nvcc on PATH, e.g. module load cuda)"
    else
        local nvcc_version
        nvcc_version=$("$cuda_home/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
        if [[ $torch_cuda != - && ${nvcc_version%%.*} != "${torch_cuda%%.*}" ]]; then
            problem "nvcc is CUDA $nvcc_version but torch was built for CUDA $torch_cuda: the major versions must match"
        else
            ok "nvcc $nvcc_version in $cuda_home"
        fi
    fi
    command -v "${CXX:-g++}" >/dev/null || problem "${CXX:-g++} not found: nvcc needs a host C++ compiler"
    if [[ $ninja == 1 ]]; then
        ok "ninja available (MAX_JOBS parallel compilation)"
    else
        echo "  note     ninja is not installed yet; step 1 installs the pinned one from the wheelhouse"
    fi

    if [[ -n $ARCH ]]; then
        ok "building for --arch $ARCH"
    elif [[ $capability != - ]]; then
        ARCH=$capability
        ok "GPU ${device//_/ }: compute capability $capability"
    else
        problem "no CUDA device visible (torch.cuda.is_available() is False): run on the GPU node, or pass --arch 8.6"
    fi
}

check_wheelhouse() {
    local package file
    if [[ ! -d $WHEELHOUSE ]]; then
        problem "no wheelhouse at $WHEELHOUSE (see --help, step 1)"
        return
    fi
    for package in "${BUILD_PACKAGES[@]}"; do
        file="$WHEELHOUSE/$(sdist_name "$package")"
        if [[ -f $file ]]; then ok "$file"; else problem "missing $file (see --help, step 1)"; fi
    done
    # Runtime dependencies: installed at the pinned version already, or a wheel of that version in the wheelhouse
    # that this Python can install (a cp311 wheel of regex does not install on Python 3.12: pip then finds "no
    # matching distribution", so say which Python the download was for). Prints "PIN<TAB>problem or empty".
    local line pin trouble
    mapfile -t RUNTIME_CHECK < <(runtime_pins | "$PYTHON" -c '
import glob
import importlib.metadata
import os
import re
import sys

try:  # pip vendors packaging; without it, only the file names are checked
    from pip._vendor.packaging.tags import sys_tags
    from pip._vendor.packaging.utils import parse_wheel_filename
    supported = set(sys_tags())
except ImportError:
    supported = None
wheelhouse = sys.argv[1]
python = "%d.%d" % sys.version_info[:2]
for pin in sys.stdin.read().split():
    name, version = pin.split("==")
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed == version:
        continue
    stem = re.sub(r"[-_.]+", "_", name).lower()
    wheels = [w for w in glob.glob(os.path.join(wheelhouse, "*.whl"))
              if re.sub(r"[-_.]+", "_", os.path.basename(w).split("-")[0]).lower() == stem
              and os.path.basename(w).split("-")[1] == version]
    if not wheels:
        print(f"{pin}\tis neither installed nor in {wheelhouse}")
    elif supported is not None and not any(supported & parse_wheel_filename(os.path.basename(w))[3] for w in wheels):
        names = ", ".join(sorted(os.path.basename(w) for w in wheels))
        print(f"{pin}\tis in {wheelhouse} only for another Python or platform ({names}); this is Python {python}:"
              f" download it with pip download --only-binary :all: --python-version {python} (see --help)")
    else:
        print(f"{pin}\t")
' "$WHEELHOUSE")
    MISSING_RUNTIME=()
    for line in "${RUNTIME_CHECK[@]}"; do
        pin=${line%%$'\t'*}
        trouble=${line#*$'\t'}
        MISSING_RUNTIME+=("$pin")
        [[ -z $trouble ]] || problem "$pin $trouble"
    done
    ok "runtime dependencies: ${#MISSING_RUNTIME[@]} to install from the wheelhouse, the others already installed"
}

# ----------------------------------------------------------------------------------------------------------------
# Plan and build

print_plan() {
    local flags package step=1
    flags=$(gencode_flags "${ARCH:-<arch>}" 2>/dev/null | paste -sd' ' || true)
    [[ -n $ARCH ]] || flags="-gencode arch=compute_<XY>,code=sm_<XY> (for the card's capability X.Y)"
    echo "Plan:"
    if ((${#MISSING_RUNTIME[@]})); then
        echo "  $step. $PYTHON -m pip install --no-index --no-deps --no-cache-dir --find-links $WHEELHOUSE \\"
        echo "       ${MISSING_RUNTIME[*]}"
        step=$((step + 1))
    fi
    for package in "${BUILD_PACKAGES[@]}"; do
        local force=MAMBA_FORCE_BUILD
        [[ $package == causal-conv1d ]] && force=CAUSAL_CONV1D_FORCE_BUILD
        echo "  $step. $package $(pinned_version "$package"): extract $WHEELHOUSE/$(sdist_name "$package"), then"
        echo "       $force=TRUE MAX_JOBS=$JOBS TORCH_CUDA_ARCH_LIST=\"${ARCH:-<arch>}\" $PYTHON setup.py bdist_wheel"
        echo "       with setup.py's -gencode flags replaced by: $flags"
        if [[ $package == mamba-ssm ]] && ((REAL_ONLY)); then
            echo "       without the complex-A selective-scan kernels (--real-only)"
        fi
        echo "       and $PYTHON -m pip install --no-index --no-deps --no-cache-dir --force-reinstall <the wheel>"
        step=$((step + 1))
    done
    if ((VERIFY)); then
        echo "  $step. verify: import the extensions; ecgmamba's selective scan (output and gradients), causal conv"
        echo "       and a small ECGMamba on CUDA against the CPU reference; print the largest differences"
    fi
}

build_wheel() {  # build_wheel PACKAGE BUILD_DIR [JOBS]: builds the wheelhouse's sdist of PACKAGE, prints the wheel's path
    local package=$1 build_dir=$2 jobs=${3:-$JOBS} version source_dir force wheel skip=""
    local -a flags
    version=$(pinned_version "$package")
    source_dir="$build_dir/${package//-/_}-$version"
    force=MAMBA_FORCE_BUILD
    [[ $package == causal-conv1d ]] && force=CAUSAL_CONV1D_FORCE_BUILD
    mapfile -t flags < <(gencode_flags "$ARCH")
    tar -xzf "$WHEELHOUSE/$(sdist_name "$package")" -C "$build_dir"
    [[ -f $source_dir/setup.py ]] || die "$(sdist_name "$package") does not unpack to ${source_dir##*/}/setup.py"
    if [[ $package == mamba-ssm ]] && ((${REAL_ONLY:-0})); then
        drop_complex_kernels "$source_dir" >&2
        skip=_complex.cu
    fi
    (
        export "$force=TRUE" MAX_JOBS="$jobs" TORCH_CUDA_ARCH_LIST="$ARCH" ECGMAMBA_SKIP_SOURCES_ENDING="$skip"
        run_setup_with_gencode "$source_dir" "${flags[@]}" -- bdist_wheel --dist-dir "$build_dir/dist-$package"
    ) >&2
    wheel=$(compgen -G "$build_dir/dist-$package/${package//-/_}-$version-*.whl" | head -n 1) ||
        die "building $package produced no wheel in $build_dir/dist-$package"
    echo "$wheel"
}

build_and_install() {
    local package wheel
    BUILD_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ecgmamba-cuda-build.XXXXXX")
    trap 'rm -rf "$BUILD_DIR"' EXIT
    if ((${#MISSING_RUNTIME[@]})); then
        echo "==> installing runtime dependencies from $WHEELHOUSE"
        "$PYTHON" -m pip install --no-index --no-deps --no-cache-dir --find-links "$WHEELHOUSE" "${MISSING_RUNTIME[@]}"
    fi
    if ((JOBS < 2 || ${#BUILD_PACKAGES[@]} == 1)); then
        for package in "${BUILD_PACKAGES[@]}"; do
            echo "==> building $package $(pinned_version "$package") for $ARCH with $JOBS jobs (this takes minutes)"
            local begun=$SECONDS
            wheel=$(build_wheel "$package" "$BUILD_DIR")
            echo "==> $package built in $((SECONDS - begun)) s"
            "$PYTHON" -m pip install --no-index --no-deps --no-cache-dir --force-reinstall "$wheel"
        done
        return
    fi
    # Both at once: the build's wall time is its slowest .cu file, and each package has fewer files than a GPU
    # node has cores. causal-conv1d has 4 sources, mamba-ssm 10 (7 with --real-only): a third of the jobs and
    # the rest. Each build's output goes to its own log, printed when it ends.
    local causal_jobs=$((JOBS / 3 > 0 ? JOBS / 3 : 1)) started=$SECONDS
    local -A jobs=([causal-conv1d]=$causal_jobs [mamba-ssm]=$((JOBS - causal_jobs))) pids=()
    for package in "${BUILD_PACKAGES[@]}"; do
        echo "==> building $package $(pinned_version "$package") for $ARCH with ${jobs[$package]} jobs (minutes)"
        (
            local begun=$SECONDS
            build_wheel "$package" "$BUILD_DIR" "${jobs[$package]}" >"$BUILD_DIR/$package.wheel" 2>"$BUILD_DIR/$package.log"
            echo "$((SECONDS - begun))" >"$BUILD_DIR/$package.seconds"
        ) &
        pids[$package]=$!
    done
    local failed=()
    for package in "${BUILD_PACKAGES[@]}"; do
        wait "${pids[$package]}" || failed+=("$package")
        echo "==> $package: compiler output" && cat "$BUILD_DIR/$package.log"
    done
    ((${#failed[@]} == 0)) || die "building ${failed[*]} failed (the compiler output is above)"
    for package in "${BUILD_PACKAGES[@]}"; do
        echo "==> $package built in $(cat "$BUILD_DIR/$package.seconds") s"
        "$PYTHON" -m pip install --no-index --no-deps --no-cache-dir --force-reinstall "$(cat "$BUILD_DIR/$package.wheel")"
    done
    echo "==> both built in $((SECONDS - started)) s"
}

verify() {
    "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null ||
        die "the verification needs a CUDA device, and $PYTHON's torch sees none"
    echo "==> verifying on $("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0))')"
    (cd "$REPO_ROOT" && WITH_CAUSAL_CONV1D=$([[ " ${BUILD_PACKAGES[*]} " == *" causal-conv1d "* ]] && echo 1 || echo 0) \
        "$PYTHON" - <<'PY'
import os
import sys
import types

import torch

import selective_scan_cuda  # noqa: F401  the compiled extensions: an error here is the real cause
with_causal_conv1d = os.environ.get("WITH_CAUSAL_CONV1D", "1") == "1"
if with_causal_conv1d:
    import causal_conv1d_cuda  # noqa: F401
    import causal_conv1d
else:
    causal_conv1d = types.SimpleNamespace(__version__="not built (--skip-causal-conv1d)")
import mamba_ssm
import ecgmamba.model as model
from ecgmamba.selective_scan import scan_backend, selective_scan_fn, selective_scan_ref

print(f"mamba-ssm {mamba_ssm.__version__}, causal-conv1d {causal_conv1d.__version__}, torch {torch.__version__}")
torch.backends.cuda.matmul.allow_tf32 = False  # compare float32 with float32, not TF32
torch.backends.cudnn.allow_tf32 = False
failures = []


def compare(what, got, reference, scale=1.0):
    """mamba-ssm's own float32 test tolerances (rtol 6e-4, atol 2e-3), times `scale` for gradients."""
    reference = reference.detach().double().cpu()
    difference = (got.detach().double().cpu() - reference).abs().max().item()
    tolerance = scale * (2e-3 + 6e-4 * reference.abs().max().item())
    verdict = "ok" if difference <= tolerance else "TOO LARGE"
    print(f"  {what:<42} max abs difference {difference:.2e}  (tolerance {tolerance:.1e})  {verdict}")
    if difference > tolerance:
        failures.append(what)


torch.manual_seed(0)
batch, dim, length, dstate = 2, 48, 300, 16
inputs = dict(u=torch.randn(batch, dim, length), delta=0.5 * torch.randn(batch, dim, length),
              A=-0.5 - torch.rand(dim, dstate), B=torch.randn(batch, dstate, length),
              C=torch.randn(batch, dstate, length), D=torch.randn(dim), z=torch.randn(batch, dim, length),
              delta_bias=0.1 * torch.randn(dim))
on_gpu = {k: v.detach().cuda().requires_grad_() for k, v in inputs.items()}
on_cpu = {k: v.detach().double().requires_grad_() for k, v in inputs.items()}
backend = scan_backend(on_gpu["u"], on_gpu["A"], on_gpu["B"], on_gpu["C"])
if backend != "mamba_ssm":
    sys.exit(f"ecgmamba chose the '{backend}' selective scan on CUDA instead of mamba-ssm's kernel")
out_gpu = selective_scan_fn(**on_gpu, delta_softplus=True)
out_cpu = selective_scan_ref(**on_cpu, delta_softplus=True)
print("selective scan, mamba-ssm CUDA kernel vs ecgmamba's float64 CPU reference:")
compare("output", out_gpu, out_cpu)
weights = torch.randn(batch, dim, length, dtype=torch.float64)
(out_gpu.double() * weights.cuda()).sum().backward()
(out_cpu * weights).sum().backward()
for name in inputs:
    compare(f"gradient of {name}", on_gpu[name].grad, on_cpu[name].grad, scale=10.0)

x = torch.randn(batch, dim, length)
weight, bias = 0.5 * torch.randn(dim, 1, 4), 0.1 * torch.randn(dim)
conv_gpu = model.causal_conv1d_silu(x.cuda(), weight.cuda(), bias.cuda())
if with_causal_conv1d and model._causal_conv1d_fn is None:
    sys.exit("ecgmamba did not pick up causal-conv1d's kernel on CUDA")
print("causal conv + SiLU, " + ("causal-conv1d CUDA kernel" if with_causal_conv1d else "PyTorch conv1d on CUDA")
      + " vs PyTorch on the CPU:")
compare("output", conv_gpu, model.causal_conv1d_silu(x.double(), weight.double(), bias.double()))

net = model.ECGMamba(model.preset_config("small")).eval()
signal = torch.randn(2, net.config.num_leads, net.config.num_samples)
with torch.no_grad():
    logits_cpu = net(signal)
    logits_gpu = net.cuda()(signal.cuda())
print("ECGMamba 'small' preset, same weights, CUDA kernels vs CPU:")
compare("logits", logits_gpu, logits_cpu)

if failures:
    sys.exit(f"verification FAILED: {', '.join(failures)}")
print("verification passed: the CUDA kernels agree with the CPU reference")
PY
    )
}

# ----------------------------------------------------------------------------------------------------------------

main() {
    WHEELHOUSE="$REPO_ROOT/wheelhouse"
    ARCH=""
    JOBS=""
    DRY_RUN=0
    VERIFY=1
    VERIFY_ONLY=0
    REAL_ONLY=0
    PYTHON=${PYTHON:-python}
    MISSING_RUNTIME=()
    while (($#)); do
        case $1 in
            --wheelhouse) [[ $# -ge 2 ]] || die "--wheelhouse needs a directory"; WHEELHOUSE=$2; shift 2 ;;
            --arch) [[ $# -ge 2 ]] || die "--arch needs a list such as 8.6"; ARCH=$2; shift 2 ;;
            --jobs) [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || die "--jobs needs a positive number"; JOBS=$2; shift 2 ;;
            --skip-verify) VERIFY=0; shift ;;
            --real-only) REAL_ONLY=1; shift ;;
            --skip-causal-conv1d) BUILD_PACKAGES=(mamba-ssm); shift ;;
            --verify-only) VERIFY_ONLY=1; shift ;;
            --dry-run) DRY_RUN=1; shift ;;
            -h | --help) usage; exit 0 ;;
            *) die "unknown argument '$1' (see --help)" ;;
        esac
    done
    [[ -f $REQUIREMENTS_CUDA ]] || die "$REQUIREMENTS_CUDA not found"
    command -v "$PYTHON" >/dev/null || die "python interpreter '$PYTHON' not found (set PYTHON=/path/to/python)"
    if ((VERIFY_ONLY)); then
        verify
        exit 0
    fi
    [[ -n $ARCH ]] && gencode_flags "$ARCH" >/dev/null
    JOBS=${JOBS:-$(default_jobs)}
    local parent
    parent=$(cd "$(dirname "$WHEELHOUSE")" 2>/dev/null && pwd) ||
        die "--wheelhouse: the folder containing $WHEELHOUSE does not exist"
    WHEELHOUSE="$parent/$(basename "$WHEELHOUSE")"

    ((DRY_RUN)) && echo "Dry run: nothing is installed or built."
    echo "Checks:"
    check_environment
    check_wheelhouse
    print_plan
    if ((${#PROBLEMS[@]})); then
        echo "${#PROBLEMS[@]} problem(s) to fix first:" >&2
        printf '  - %s\n' "${PROBLEMS[@]}" >&2
        exit 1
    fi
    if ((DRY_RUN)); then
        echo "Dry run: all checks passed."
        exit 0
    fi
    build_and_install
    if ((VERIFY)); then verify; else echo "==> installed; verification skipped (--skip-verify)"; fi
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
