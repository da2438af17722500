#!/usr/bin/env bash
# CI step: the multi-node suite in every guest layout (see docs/multinode.md).
#
#   bash tests/multinode/ci.sh [guest.py options, e.g. --layout A]
#
# Installs what the guests need when it is missing (Debian packages as root, virtme-ng from
# PyPI), checks that everything is there afterwards, then boots each layout once under QEMU's
# TCG emulator (no /dev/kvm needed; nested KVM hangs on these hosts) and runs its tests.
# Expects numatune to be installed already (`.ci/run` does that first).
# Exit status: 0 when every layout passed; 1 when tests failed; 3 when a guest could not be
# started or did not report; 4 when a tool is still missing after the install.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python}
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

kernel_image() { ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -1; }

packages=()
command -v qemu-system-x86_64 >/dev/null || packages+=(qemu-system-x86)
[ -x /bin/busybox ] || command -v busybox >/dev/null || packages+=(busybox-static)
[ -n "$(kernel_image)" ] || packages+=(linux-image-amd64)
command -v numactl >/dev/null || packages+=(numactl)
command -v lstopo-no-graphics >/dev/null || packages+=(hwloc)
command -v gcc >/dev/null || packages+=(gcc)
command -v cmake >/dev/null || packages+=(cmake)
command -v c++ >/dev/null || packages+=(g++)
if [ ${#packages[@]} -gt 0 ]; then
  echo "multinode: installing ${packages[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi
command -v vng >/dev/null || "$python" -m pip install -q virtme-ng

missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86_64)
{ [ -x /bin/busybox ] || command -v busybox >/dev/null; } || missing+=(busybox)
kernel=$(kernel_image)
{ [ -n "$kernel" ] && [ -r "$kernel" ]; } || missing+=("a readable /boot/vmlinuz-*")
command -v vng >/dev/null || missing+=(vng)
command -v numactl >/dev/null || missing+=(numactl)
command -v lstopo-no-graphics >/dev/null || missing+=(lstopo-no-graphics)
command -v gcc >/dev/null || missing+=(gcc)
command -v cmake >/dev/null || missing+=(cmake)
command -v c++ >/dev/null || missing+=(c++)
if [ ${#missing[@]} -gt 0 ]; then
  echo "multinode: still missing after the install: ${missing[*]}" >&2
  exit 4
fi
[ -e /dev/kvm ] || echo "multinode: no /dev/kvm; the guests run under TCG emulation anyway"
echo "multinode: kernel $kernel, $(qemu-system-x86_64 --version | head -1), $(vng --version)"

# The guests' CPU has no AVX-512: the llama.cpp guest tests run a portable llama-bench (AVX2, FMA,
# F16C), built here only (cached; about 25 min on 2 busy cores the first time, nothing after).
echo "multinode: portable llama-bench (tools/build-llama-bench.sh --portable)"
bash "$here/../../tools/build-llama-bench.sh" --portable >/dev/null

exec "$python" "$here/guest.py" --quiet "$@"
