#!/usr/bin/env bash
# THE test command (README, .ci/run): installs what the tests need on Debian 12 (apt and pip packages),
# builds the recorder for x86_64, x86_64 with ASan, armhf and aarch64, then runs the whole pytest suite.
# Extra arguments go to pytest, e.g. tests/run-all.sh -k demo -x
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(gcc g++ make pkg-config gcc-arm-linux-gnueabihf libc6-dev-armhf-cross binutils-arm-linux-gnueabihf
              gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu
              musl-tools qemu-user openssh-server openssh-client socat chromium)
PIP_PACKAGES=(scons pyserial pyelftools cffi pytest hypothesis)

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for package in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "run-all: installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian's own python3 refuses pip installs outside a venv (PEP 668) unless told otherwise.
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -m pip install -q "${PIP_PACKAGES[@]}"
if [ -f hostpy/pyproject.toml ]; then
    python3 -m pip install -q -e hostpy
fi

for variables in "" "asan=1" "arm=1" "CROSS=aarch64-linux-gnu-"; do
    echo "run-all: scons -Q -j2 $variables"
    # shellcheck disable=SC2086  # the variables are words on purpose
    python3 -m SCons -Q -j2 $variables
done

exec python3 -m pytest tests -q "$@"
