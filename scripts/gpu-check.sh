#!/usr/bin/env bash
# The CUDA backend of nexa-compute on a machine with an NVIDIA GPU, its driver and a CUDA 13
# toolkit (cuBLAS and NVRTC): the device, a release build with the `cuda` feature, the parity
# tests against the CPU backend (which fail here, instead of skipping, when no GPU is found),
# and the CUDA throughput example. Exits non-zero when any of it fails. About 2 to 4 minutes
# from a cold build on 16 cores; the runs themselves take one to two minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "nvidia-smi"
nvidia-smi

# cudarc opens libcuda, libcublas and libnvrtc by name at run time. The toolkit's usual
# folders go on the search path in case the loader's cache does not list them.
for dir in "${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  if [ -d "$dir" ]; then
    export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
done
step "CUDA libraries (LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-})"
{ ldconfig -p 2>/dev/null || true; } | grep -E 'lib(cuda|cublas|nvrtc)\.so' || true

step "cargo build --release --features cuda (parity tests and throughput example)"
cargo build --release -p nexa-compute --features cuda \
  --test cuda_parity --example cuda_throughput

step "parity tests: every operation and short training runs, CUDA against CPU"
NEXA_REQUIRE_GPU=1 timeout 150 \
  cargo test --release -p nexa-compute --features cuda --test cuda_parity -- --nocapture

# PyTorch on the same GPU as the baseline, when there is one that sees it.
torch_args=()
python="${NEXA_TORCH_PYTHON:-python3}"
if "$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  torch_args=(--torch "$python")
else
  echo "(no PyTorch with CUDA for $python: the PyTorch baseline is left out)"
fi

step "throughput: presets at batch 256 and 4096, CPU and PyTorch baselines in the same run"
timeout 240 cargo run --release -p nexa-compute --features cuda --example cuda_throughput \
  -- "${torch_args[@]}"

step "gpu-check passed"
