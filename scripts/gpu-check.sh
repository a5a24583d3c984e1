#!/usr/bin/env bash
# The CUDA backend of nexa-compute on a machine with an NVIDIA GPU, its driver and a CUDA 13
# toolkit (cuBLAS and NVRTC): the device, the parity tests against the CPU backend (which fail
# here, instead of skipping, when no GPU is found) with the worst error of each operation, the
# throughput of every preset at batch 256 and 4096 against PyTorch eager on the same GPU and
# data, and a `train` job run through `nexa up` on the GPU. Exits non-zero when any of it fails.
#
# The programs come from a release build with the `cuda` feature: made here with cargo, or,
# with NEXA_GPU_BIN=DIR, taken from DIR as `scripts/gpu-prebuild DIR` left them (for a GPU
# machine without a Rust toolchain or without the crates). About 2 to 4 minutes from a cold
# build on 16 cores; the runs themselves take two to three minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
log_dir=${NEXA_GPU_LOG:-$(mktemp -d)}
mkdir -p "$log_dir"

step "nvidia-smi"
nvidia-smi

# cudarc opens libcuda, libcublas and libnvrtc by name at run time. The toolkit's usual
# folders go on the search path in case the loader's cache does not list them; so do the
# CUDA wheels' folders of the Python that has PyTorch, where the toolkit is not installed.
python="${NEXA_TORCH_PYTHON:-python3}"
for dir in "${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
  $("$python" -c 'import glob, site; print(" ".join(sorted(glob.glob(p + "/nvidia/cu*/lib") + glob.glob(p + "/nvidia/*/lib"))) for p in site.getsitepackages())' 2>/dev/null || true); do
  if [ -d "$dir" ]; then
    export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
done
step "CUDA libraries"
{ ldconfig -p 2>/dev/null || true; } | grep -E 'lib(cuda|cublas|nvrtc)\.so' || true
for dir in ${LD_LIBRARY_PATH//:/ }; do ls "$dir" 2>/dev/null | grep -E '^lib(cublas|nvrtc)\.so' | sed "s|^|$dir/|" || true; done

if [ -n "${NEXA_GPU_BIN:-}" ]; then
  bin=$NEXA_GPU_BIN
  step "prebuilt programs from $bin"
  ls -l "$bin"
else
  step "cargo build --release --features cuda"
  bin=target/gpu-bin
  scripts/gpu-prebuild "$bin"
fi

step "parity tests: every operation and short training runs, CUDA against CPU"
NEXA_REQUIRE_GPU=1 timeout 150 "$bin/cuda_parity" --nocapture --test-threads 1 2>&1 | tee "$log_dir/parity.log"
step "worst error of each operation (|gpu - cpu| / (1 + |cpu|), tolerance 1e-4)"
# `parity <operation> <shape...>: <error>`: the operation is the words before the first that
# starts with a digit.
grep '^parity ' "$log_dir/parity.log" | awk '{
  op = ""; for (i = 2; i <= NF; i++) { if ($i ~ /^[0-9]/) break; op = op (op == "" ? "" : " ") $i }
  sub(/:$/, "", op); e = $NF + 0; if (!(op in worst) || e > worst[op]) worst[op] = e; n[op]++
} END { for (op in worst) printf "  %-24s %4d comparisons, worst %.3e\n", op, n[op], worst[op] }' | sort

torch_args=()
if "$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  torch_args=(--torch "$python")
else
  echo "(no PyTorch with CUDA for $python: the PyTorch baseline is left out)"
fi

step "throughput: every preset at batch 256 and 4096, CPU and PyTorch baselines in the same run"
timeout 300 "$bin/cuda_throughput" "${NEXA_GPU_ROWS:-200000}" 2 "${torch_args[@]}" 2>&1 | tee "$log_dir/throughput.log"

if [ -x "$bin/nexa" ]; then
  step "a train job through nexa up on the GPU"
  scripts/gpu-train-job "$bin/nexa" 2>&1 | tee "$log_dir/train-job.log"
fi

step "gpu-check passed"
