#!/usr/bin/env bash
# One set-up command: installs the Debian packages deco needs to build and
# test (as root, or through sudo), then configures and builds into build/.
# Safe to re-run. The CUDA backend is compiled when nvcc is present (it is
# not installed here: the CUDA toolkit comes with the machine's image).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake pkg-config          # compiler and build
  libyaml-cpp-dev                           # config files
  libhdf5-dev hdf5-tools                    # weights and checkpoints (h5ls/h5dump for users)
  catch2                                    # unit tests
  libcli11-dev                              # command line
  nlohmann-json3-dev                        # metrics.jsonl, eval output
  libopenblas-openmp-dev                    # CPU GEMMs, sharing deco's OpenMP threads
  libopenmpi-dev openmpi-bin                # multi-process launch (mpirun)
  libsentencepiece-dev zlib1g-dev          # tokenizers (SentencePiece) and .jsonl.gz input
  python3 python3-numpy python3-h5py python3-yaml python3-torch  # the PyTorch reference tests
  python3-pip                               # fetches the safetensors and tensorboard packages for tests
  libprotobuf-dev protobuf-compiler         # TensorBoard event files (trainer/proto/event.proto)
  libboost-dev                              # their CRC32C (Boost.CRC)
  libboost-context-dev                      # the CUDA emulator's fibers (tests/cuda_emu)
  python3-protobuf python3-six python3-absl # what the tensorboard package's reader needs (its test)
  chromium-headless-shell python3-pil       # deco report's test: a real browser renders it, PIL reads the screenshot
)

if command -v apt-get >/dev/null; then
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
      command -v sudo >/dev/null || { echo "setup.sh: run as root or install sudo to install: ${missing[*]}" >&2; exit 1; }
      sudo="sudo"
    fi
    echo "setup.sh: installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
else
  echo "setup.sh: apt-get not found; install the equivalents of: ${packages[*]}" >&2
fi

# The export test reads deco's files with the Python safetensors package,
# which Debian does not ship: pip puts it in build/pydeps, leaving the system
# Python untouched (the test adds that folder to its path).
if [ ! -d build/pydeps/safetensors ]; then
  echo "setup.sh: installing the Python safetensors package into build/pydeps"
  /usr/bin/python3 -m pip install --quiet --no-deps --target build/pydeps safetensors==0.4.5 ||
    echo "setup.sh: warning: pip could not install safetensors (offline?); the test cli_export_import" \
         "fails until build/pydeps/safetensors exists" >&2
fi

# The TensorBoard test reads deco's event files with the tensorboard package's
# own reader; without --no-deps pip would pull TensorFlow-sized dependencies,
# so they come from Debian (python3-protobuf, python3-numpy, python3-six, python3-absl).
if [ ! -d build/pydeps/tensorboard ]; then
  echo "setup.sh: installing the Python tensorboard package into build/pydeps"
  /usr/bin/python3 -m pip install --quiet --no-deps --target build/pydeps tensorboard==2.18.0 ||
    echo "setup.sh: warning: pip could not install tensorboard (offline?); the test cli_tensorboard" \
         "fails until build/pydeps/tensorboard exists" >&2
fi

# nvcc often lives outside PATH; CMake finds it through CUDACXX.
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build build -j"$(nproc)"
echo "setup.sh: built build/deco"
