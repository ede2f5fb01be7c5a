#!/usr/bin/env bash
# Prepare a fresh Debian/Ubuntu machine for kvedge: a Vulkan driver (Mesa's software
# Vulkan, lavapipe, when the machine has none), unzip for models/fetch.sh, and the default
# model (SmolLM2-135M-Instruct). Needs root (or sudo) only when packages are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
compgen -G '/usr/share/vulkan/icd.d/*.json' >/dev/null || compgen -G '/etc/vulkan/icd.d/*.json' >/dev/null \
  || missing+=(mesa-vulkan-drivers)
ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1' || missing+=(libvulkan1)
command -v unzip >/dev/null || missing+=(unzip)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
bash models/fetch.sh "${1:-smollm2}"
