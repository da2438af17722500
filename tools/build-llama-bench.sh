#!/usr/bin/env bash
# Builds llama.cpp's `llama-bench` from the llama.cpp source vendored in the llama-cpp-python sdist
# on PyPI (CPU only, native ISA, that one target) and prints the binary's path on stdout.
# The build is cached in ${XDG_CACHE_HOME:-~/.cache}/numatune/llama.cpp-<version>/, so a second run
# neither downloads nor compiles; an interrupted build resumes where it stopped (the source and
# build tree stay in .work/ until the binary is installed). Environment:
#   NUMATUNE_LLAMA_CPP_PYTHON   llama-cpp-python version whose vendored llama.cpp is built (pinned
#                               so that results and CI are reproducible)
#   NUMATUNE_BUILD_JOBS         parallel compile jobs (default 2)
# Progress goes to stderr; only the path goes to stdout.
# --cached-only: print the cached binary's path, or fail (exit 1) without building.
# --portable: the variant for machines without the build host's ISA (the emulated multi-node
#   guests of tests/multinode have AVX2 at most): GGML_NATIVE=OFF with AVX, AVX2, FMA and F16C
#   only, cached apart in llama.cpp-<version>-portable/. tests/multinode/ci.sh builds it.
set -euo pipefail

# Everything runs from main, called on the last line: bash has then read the whole file, so
# editing this script while a build runs cannot change what the running build does.
main() {
  local version="${NUMATUNE_LLAMA_CPP_PYTHON:-0.3.36}"
  local jobs="${NUMATUNE_BUILD_JOBS:-2}"
  local variant="" cached_only="" isa=(-DGGML_NATIVE=ON) what="native ISA"
  for arg in "$@"; do
    case "$arg" in
      --cached-only) cached_only=1 ;;
      --portable)
        variant="-portable" what="portable: AVX2, FMA, F16C"
        isa=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
             -DGGML_BMI2=OFF -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF) ;;
      *) echo "build-llama-bench: unknown option $arg (--cached-only, --portable)" >&2; return 2 ;;
    esac
  done
  local cache="${XDG_CACHE_HOME:-$HOME/.cache}/numatune/llama.cpp-$version$variant"
  local bin="$cache/bin/llama-bench"

  if [ -x "$bin" ]; then
    echo "$bin"
    return 0
  fi
  if [ -n "$cached_only" ]; then
    echo "build-llama-bench: no llama-bench built in $cache (run tools/build-llama-bench.sh${variant:+ --portable})" >&2
    return 1
  fi
  for tool in cmake c++ python3; do
    command -v "$tool" >/dev/null || { echo "build-llama-bench: $tool is not installed" >&2; return 2; }
  done

  local work="$cache/.work" start
  start=$(date +%s)
  mkdir -p "$work"
  local sdist="$work/llama_cpp_python-$version.tar.gz"
  local src="$work/llama_cpp_python-$version/vendor/llama.cpp"
  if [ ! -f "$sdist" ]; then
    echo "build-llama-bench: downloading the llama-cpp-python $version sdist" >&2
    python3 -m pip download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$version" >&2
  fi
  if [ ! -f "$src/CMakeLists.txt" ]; then
    tar -xzf "$sdist" -C "$work" "llama_cpp_python-$version/vendor/llama.cpp"
  fi

  echo "build-llama-bench: configuring (CPU only, $what)" >&2
  cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
    "${isa[@]}" -DGGML_CPU=ON -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF \
    -DGGML_OPENMP=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >&2
  echo "build-llama-bench: compiling llama-bench with -j$jobs" >&2
  cmake --build "$work/build" --target llama-bench -j "$jobs" >&2

  # Install atomically: the binary appears last, so a later run never trusts a half-made install.
  mkdir -p "$cache/bin.new"
  cp "$work/build/CMakeCache.txt" "$cache/CMakeCache.txt"
  cp "$work/build/bin/llama-bench" "$cache/bin.new/llama-bench"
  rm -rf "$cache/bin"
  mv "$cache/bin.new" "$cache/bin"
  rm -rf "$work"
  echo "build-llama-bench: built in $(( $(date +%s) - start )) s" >&2
  echo "$bin"
}

main "$@"
