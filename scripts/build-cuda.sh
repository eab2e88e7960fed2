#!/usr/bin/env bash
# Builds the CUDA trainer on a machine without a GPU, for carrying to a GPU box that has the NVIDIA
# driver but no Rust (the recipe of ../shared/notes/cuda-build.md):
#
#   bash scripts/build-cuda.sh [OUT_DIR]        # default target/cuda-dist
#
# writes OUT_DIR/trainer.zst (zstd -19 of the stripped binary; 7.9 MB, about 18 minutes on 2
# cores, most of it nvcc compiling candle's kernels). The CUDA 13.0 toolkit comes from
# PyPI wheels, downloaded once into target/cuda-toolkit; the binary links against libcuda,
# libnvrtc, libcublas(Lt), libcurand and libcudart, which the GPU box's driver and its PyTorch
# install provide at run time (scripts/gpu-check.sh sets LD_LIBRARY_PATH for that).
# CUDA_COMPUTE_CAP (default 90: H100/H200) chooses the kernels' architecture.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/cuda-dist}
toolkit=$PWD/target/cuda-toolkit
cu13=$toolkit/root/nvidia/cu13
links=$toolkit/links

if [ ! -x "$cu13/bin/nvcc" ]; then
  echo "== CUDA 13.0 toolkit from PyPI wheels into $toolkit"
  mkdir -p "$toolkit/whl" "$toolkit/root"
  python3 -m pip download -q --no-deps -d "$toolkit/whl" \
    "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-nvrtc==13.0.*" "nvidia-cuda-cccl==13.0.*" \
    "nvidia-cublas==13.0.*" nvidia-curand
  for wheel in "$toolkit"/whl/*.whl; do
    python3 -m zipfile -e "$wheel" "$toolkit/root"
  done
  chmod +x "$cu13"/bin/* "$cu13"/nvvm/bin/* 2>/dev/null || true
fi

# Unversioned library names for the linker, and a stand-in libcuda (the real one is the driver's).
mkdir -p "$links"
for lib in cublas cublasLt nvrtc cudart; do
  ln -sf "$(ls "$cu13"/lib/lib$lib.so.13* | head -1)" "$links/lib$lib.so"
done
ln -sf "$(ls "$cu13"/lib/libcurand.so.10* | head -1)" "$links/libcurand.so"
if [ ! -f "$links/libcuda.so" ]; then
  echo 'void pneumoscope_cuda_stub(void) {}' > "$links/stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$links/libcuda.so" "$links/stub.c"
fi

echo "== cargo rustc --features cuda (nvcc compiles candle's kernels: several minutes)"
export PATH="$cu13/bin:$PATH" CUDA_ROOT="$cu13" CUDA_PATH="$cu13" CUDARC_CUDA_VERSION=13000
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export RUSTFLAGS="-L $links -C link-arg=-Wl,--unresolved-symbols=ignore-in-object-files"
export CARGO_TARGET_DIR=${CUDA_TARGET_DIR:-target/cuda-build}
# The driver libraries go into the binary's NEEDED list here, not in RUSTFLAGS: build scripts
# linked against the stub libcuda could not start.
cargo rustc --release -p trainer --features cuda --bin trainer -- \
  -C link-arg=-Wl,--no-as-needed -C link-arg=-lcuda -C link-arg=-lnvrtc

mkdir -p "$out"
strip -o "$out/trainer" "$CARGO_TARGET_DIR/release/trainer"
zstd -q -19 -f "$out/trainer" -o "$out/trainer.zst"
rm "$out/trainer"
ls -l "$out/trainer.zst"
