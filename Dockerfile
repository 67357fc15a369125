# ecgmamba with mamba-ssm's and causal-conv1d's CUDA kernels, for the PhysioNet/CinC Challenge 2021 commands:
#   docker build -t ecgmamba .
#   docker run --gpus all --shm-size=8g -it -v ~/data:/physionet/training_data -v ~/model:/physionet/model \
#       ecgmamba python train_model.py training_data model
# (--shm-size: the DataLoader workers share batches through /dev/shm, which docker limits to 64 MB by default.)
#
# Base image: PyTorch 2.9.1 for CUDA 12.8, a -devel image (nvcc and the CUDA headers), Python 3.11.
# Why this torch: mamba-ssm 2.3.2.post1 and causal-conv1d 1.7.0 publish prebuilt CUDA wheels (on their GitHub
# releases, which their setup.py downloads) for torch 2.6 to 2.10 only; with a torch in that range nothing is
# compiled, outside it pip compiles both with nvcc (reported as 15-35 minutes on a 48-core machine, much longer
# on a few cores). Within the range, torch 2.9 is the first whose triton (3.5.1) meets mamba-ssm 2.3.2.post1's
# triton>=3.5 (torch 2.8 pins triton 3.4.0). Python 3.11 is what requirements.txt's numpy and scipy pins need.
# docker build needs github.com (the prebuilt wheels) and PyPI; BUILD_FROM_SOURCE=1 needs PyPI only.
FROM pytorch/pytorch:2.9.1-cuda12.8-cudnn9-devel

# The base image's torch (checked below, and again after the installs: pip must never replace it), and the torch
# versions with prebuilt mamba-ssm 2.3.2.post1 and causal-conv1d 1.7.0 wheels.
ARG TORCH_VERSION=2.9.1
ARG PREBUILT_WHEELS_TORCH_MIN=2.6
ARG PREBUILT_WHEELS_TORCH_MAX=2.10
# BUILD_FROM_SOURCE=1 compiles both extensions with nvcc (scripts/build_cuda_extensions.sh) instead of using the
# prebuilt wheels, for the compute capabilities in TORCH_CUDA_ARCH_LIST only: T4 7.5, A100 8.0, A10 and RTX 30
# 8.6, L4 and RTX 40 8.9, H100 9.0. Narrow it to your card to cut the compile time, e.g.
#   docker build --build-arg BUILD_FROM_SOURCE=1 --build-arg TORCH_CUDA_ARCH_LIST=8.6 -t ecgmamba .
# The prebuilt wheels ignore TORCH_CUDA_ARCH_LIST: they carry sm_75, sm_80, sm_87 and sm_90 (+ sm_100, sm_120),
# and sm_80 code runs on 8.6 and 8.9 cards. MAX_JOBS: parallel nvcc jobs, each needs a few GB of memory.
ARG BUILD_FROM_SOURCE=0
ARG TORCH_CUDA_ARCH_LIST="7.5;8.0;8.6;8.9;9.0"
ARG MAX_JOBS=4

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Dependencies first, from the requirement files alone, so that editing the code does not redo them.
COPY requirements.txt requirements-cuda.txt /tmp/ecgmamba-build/
COPY scripts/build_cuda_extensions.sh /tmp/ecgmamba-build/scripts/
WORKDIR /tmp/ecgmamba-build
# 1. The base image is what this file expects. 2. requirements.txt without its torch line (it pins the CPU
# install's torch). 3. The build tools setup.py imports. 4. mamba-ssm, causal-conv1d and their imports, --no-deps
# (requirements-cuda.txt is the complete list) and --no-build-isolation (they build against the image's torch).
# 5. torch is unchanged and the compiled extensions load (no GPU needed for that).
RUN python -c "import sys, torch; \
assert sys.version_info[:2] == (3, 11), 'expected Python 3.11, the base image has ' + sys.version; \
assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', 'the base image has torch ' + torch.__version__; \
assert torch.version.cuda, 'the base image has a CPU-only torch'; \
minor = tuple(map(int, torch.__version__.split('+')[0].split('.')[:2])); \
low, high = (tuple(map(int, v.split('.'))) for v in ('${PREBUILT_WHEELS_TORCH_MIN}', '${PREBUILT_WHEELS_TORCH_MAX}')); \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, '- prebuilt mamba-ssm wheels:', low <= minor <= high)" \
 && grep -v '^torch==' requirements.txt > requirements-without-torch.txt \
 && python -m pip install --no-cache-dir -r requirements-without-torch.txt \
 && python -m pip install --no-cache-dir --no-deps -c requirements-cuda.txt setuptools wheel packaging ninja \
 && if [ "${BUILD_FROM_SOURCE}" = "1" ]; then \
        MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE python -m pip download --no-cache-dir \
            --no-deps --no-build-isolation --no-binary mamba-ssm,causal-conv1d -r requirements-cuda.txt -d wheelhouse \
        && PYTHON=python bash scripts/build_cuda_extensions.sh --wheelhouse wheelhouse \
            --arch "${TORCH_CUDA_ARCH_LIST}" --jobs "${MAX_JOBS}" --skip-verify; \
    else \
        python -m pip install --no-cache-dir --no-deps --no-build-isolation -r requirements-cuda.txt; \
    fi \
 && python -c "import torch; \
assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', 'pip replaced torch by ' + torch.__version__; \
import selective_scan_cuda, causal_conv1d_cuda, mamba_ssm, causal_conv1d; \
print('mamba-ssm', mamba_ssm.__version__, 'causal-conv1d', causal_conv1d.__version__, 'import fine')" \
 && rm -rf /tmp/ecgmamba-build/*

## DO NOT EDIT the 3 lines.
RUN mkdir /physionet
COPY ./ /physionet
WORKDIR /physionet
