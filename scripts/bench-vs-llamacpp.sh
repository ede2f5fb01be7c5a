#!/usr/bin/env bash
# kvedge bench and llama.cpp's llama-bench side by side on one model and device, run
# alternately, one repetition per call, medians over -r calls each.
#
#   bash scripts/bench-vs-llamacpp.sh [-m MODEL.gguf] [--device cpu] [-p 512] [-n 128]
#        [-d 0,4096] [--kv f16,q8_0] [-r 10] [-o OUT.md] [--build-only]
#
# llama.cpp is built once into the git-ignored .llamacpp/ from the source shipped in the
# pinned PyPI sdist llama-cpp-python==0.3.36 (its vendor/llama.cpp), with CMake and Ninja
# from PyPI, CPU backend. Rows: pp and tg at each depth, for each KV type (kvedge
# --kv-type f16|q8 beside llama.cpp -ctk/-ctv f16|q8_0), llama.cpp with flash attention
# off and on; the ratio is kvedge over the faster llama.cpp. A fixed CPU busy-loop probe
# is timed before and after the table, so a noisy stretch of the machine shows.
#
# --device vulkan compares the two on the first Vulkan adapter (kvedge `--device gpu` with
# WGPU_BACKEND=vulkan; llama.cpp's Vulkan backend, every layer offloaded,
# GGML_VK_VISIBLE_DEVICES=0 so that a CPU-type adapter such as lavapipe is not hidden).
# That build needs glslc and spirv-headers (Debian packages, installed when missing) and
# Vulkan headers newer than Debian 12's 1.3.239: libvulkan-dev 1.4.309 from Debian 13's
# pool, hash-checked and unpacked into .llamacpp/vulkan-headers (nothing is installed
# system-wide from it; the installed loader libvulkan.so.1 is linked).
set -euo pipefail
cd "$(dirname "$0")/.."

LCP_VERSION=0.3.36
LCP_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
LCP_URL=https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-0.3.36.tar.gz
VK_DEB=libvulkan-dev_1.4.309.0-1_amd64.deb
VK_SHA256=8d329d465e16168afff58b1bd0dd6db46aac2cc3f56054a481b25a04e90b345a
VK_URL=http://deb.debian.org/debian/pool/main/v/vulkan-loader/$VK_DEB

model=models/cache/SmolLM2-135M-Instruct.Q4_1.gguf
device=cpu prompt=512 gen=128 depths=0,4096 kvs=f16,q8_0 reps=10 out="" build_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    -m) model=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    -p) prompt=$2; shift 2 ;;
    -n) gen=$2; shift 2 ;;
    -d) depths=$2; shift 2 ;;
    --kv) kvs=$2; shift 2 ;;
    -r) reps=$2; shift 2 ;;
    -o) out=$2; shift 2 ;;
    --build-only) build_only=1; shift ;;
    *) echo "unknown argument '$1'" >&2; exit 2 ;;
  esac
done
case "$device" in cpu|vulkan) ;; *) echo "--device $device: expected cpu or vulkan" >&2; exit 2 ;; esac
[ -f "$model" ] || { echo "$model not found (bash models/fetch.sh)" >&2; exit 1; }

work=.llamacpp
bench=$work/build-$device/bin/llama-bench
if [ ! -x "$bench" ]; then
  mkdir -p "$work/dl"
  tarball=$work/dl/llama_cpp_python-$LCP_VERSION.tar.gz
  [ -f "$tarball" ] || curl -sSL -o "$tarball" "$LCP_URL"
  echo "$LCP_SHA256  $tarball" | sha256sum -c --quiet
  if [ ! -d "$work/src/vendor/llama.cpp" ]; then
    rm -rf "$work/src" && mkdir -p "$work/src"
    tar -xzf "$tarball" -C "$work/src" --strip-components=1
  fi
  [ -x "$work/venv/bin/cmake" ] || { python3 -m venv "$work/venv" && "$work/venv/bin/pip" install -q cmake==3.31.10 ninja==1.13.0; }
  backend=(-DGGML_NATIVE=ON)
  if [ "$device" = vulkan ]; then
    if ! command -v glslc >/dev/null || [ ! -d /usr/include/spirv ]; then
      sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
      $sudo apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends glslc spirv-headers
    fi
    deb=$work/dl/$VK_DEB
    [ -f "$deb" ] || curl -sSL -o "$deb" "$VK_URL"
    echo "$VK_SHA256  $deb" | sha256sum -c --quiet
    rm -rf "$work/vulkan-headers" && dpkg-deb -x "$deb" "$work/vulkan-headers"
    vk_lib=$(ldconfig -p | awk '/libvulkan\.so\.1 .*x86-64/ { print $NF; exit }')
    [ -n "$vk_lib" ] || { echo "no libvulkan.so.1 (bash scripts/setup.sh installs it)" >&2; exit 1; }
    backend+=(-DGGML_VULKAN=ON "-DVulkan_INCLUDE_DIR=$PWD/$work/vulkan-headers/usr/include"
              "-DVulkan_LIBRARY=$vk_lib")
  fi
  echo "building llama.cpp ($device) from llama-cpp-python $LCP_VERSION: about 17 minutes on 2 cores (CPU), 12 more with Vulkan"
  PATH=$PWD/$work/venv/bin:$PATH cmake -S "$work/src/vendor/llama.cpp" -B "$work/build-$device" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF "${backend[@]}" > "$work/cmake-$device.log"
  PATH=$PWD/$work/venv/bin:$PATH cmake --build "$work/build-$device" --target llama-bench -j "$(nproc)" > "$work/build-$device.log"
fi
[ "$build_only" = 0 ] || { echo "built $bench"; exit 0; }
cargo build --release --quiet
kvedge=./target/release/kvedge
if [ "$device" = vulkan ]; then
  kdev=gpu llama_dev=(-ngl 99)
  kvedge_env=(env WGPU_BACKEND=vulkan) llama_env=(env GGML_VK_VISIBLE_DEVICES=0)
  adapter=$(WGPU_BACKEND=vulkan "$kvedge" devices 2>/dev/null | grep -m1 -i vulkan || true)
  device_line="Vulkan adapter: ${adapter:-unknown} (llama.cpp: Vulkan backend, -ngl 99)"
else
  kdev=cpu llama_dev=() kvedge_env=(env) llama_env=(env)
  device_line="CPU ($(nproc) threads, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
fi

probe() { python3 -c 'import time
t=time.perf_counter(); s=0
for i in range(5_000_000): s += i
print(f"{time.perf_counter()-t:.3f}")'; }

# Raw results (JSON lines); KVEDGE_BENCH_RAW=DIR keeps them there and resumes: rows that
# already have their repetitions are not run again.
raw=${KVEDGE_BENCH_RAW:-$(mktemp -d)}
mkdir -p "$raw"
probe_before=$(probe)
IFS=, read -ra depth_list <<< "$depths"
IFS=, read -ra kv_list <<< "$kvs"
for kv in "${kv_list[@]}"; do
  case "$kv" in f16) kk=f16 ;; q8_0) kk=q8 ;; *) echo "--kv $kv: f16 or q8_0" >&2; exit 2 ;; esac
  for d in "${depth_list[@]}"; do
    # llama.cpp needs flash attention for a quantized V cache.
    fa=0,1; [ "$kv" = f16 ] || fa=1
    have=0; [ ! -f "$raw/kvedge-$kv-$d.jsonl" ] || have=$(wc -l < "$raw/kvedge-$kv-$d.jsonl")
    for i in $(seq $((have + 1)) "$reps"); do
      # Alternate which runtime goes first, so a drift hits both.
      run_l() { "${llama_env[@]}" "$bench" -m "$model" -p "$prompt" -n "$gen" -d "$d" -fa "$fa" -ctk "$kv" -ctv "$kv" \
                  -r 1 -t "$(nproc)" "${llama_dev[@]}" -o jsonl >> "$raw/llama-$kv-$d.jsonl" 2>> "$raw/llama.log"; }
      run_k() { "${kvedge_env[@]}" "$kvedge" bench -m "$model" --device "$kdev" -p "$prompt" -n "$gen" -d "$d" \
                  --kv-type "$kk" -r 1 --json >> "$raw/kvedge-$kv-$d.jsonl"; }
      if [ $((i % 2)) -eq 1 ]; then run_l; run_k; else run_k; run_l; fi
      echo "  $kv depth $d: repetition $i of $reps" >&2
    done
  done
done
probe_after=$(probe)

table=$(python3 - "$raw" "$prompt" "$gen" "$depths" "$kvs" <<'PY'
import json, statistics, sys, pathlib
raw, p, n, depths, kvs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def lines(path):
    f = pathlib.Path(raw, path)
    return [json.loads(l) for l in f.read_text().splitlines() if l.strip()] if f.exists() else []
print("| test | KV | llama.cpp fa off | llama.cpp fa on | kvedge | kvedge / best llama.cpp |")
print("|---|---|---:|---:|---:|---:|")
for kv in kvs.split(","):
    for d in map(int, depths.split(",")):
        ll, kk = lines(f"llama-{kv}-{d}.jsonl"), lines(f"kvedge-{kv}-{d}.jsonl")
        for test, key in ((f"pp{p}", "pp_tok_s"), (f"tg{n}", "tg_tok_s")):
            is_pp = test.startswith("pp")
            def med(fa):
                v = [r["avg_ts"] for r in ll if bool(r.get("flash_attn")) == fa
                     and (r["n_prompt"] > 0) == is_pp and (r["n_gen"] > 0) != is_pp]
                return statistics.median(v) if v else float("nan")
            kv_ = [row[key] for r in kk for row in r["rows"] if row["depth"] == d]
            k = statistics.median(kv_) if kv_ else float("nan")
            off, on = med(False), med(True)
            vals = [x for x in (off, on) if x == x]
            best = max(vals) if vals else float("nan")
            at = f" @ d{d}" if d else ""
            cell = lambda x: "n/a" if x != x else f"{x:.2f}"
            print(f"| {test}{at} | {kv} | {cell(off)} | {cell(on)} | {cell(k)} | {cell(k / best)} |")
PY
)
commit=$(git rev-parse --short HEAD)
report=$(cat <<MD
Model $(basename "$model"), device: $device_line,
$(date -u +%Y-%m-%d). kvedge $commit (release build); llama.cpp from llama-cpp-python $LCP_VERSION
(vendor/llama.cpp, $device build). Tokens/s, median of $reps alternating calls of one
repetition each. CPU probe (5M-iteration Python loop, s): $probe_before before, $probe_after after.

$table

Command: \`bash scripts/bench-vs-llamacpp.sh -m $model --device $device -p $prompt -n $gen -d $depths --kv $kvs -r $reps\`
MD
)
echo "$report"
[ -z "$out" ] || echo "$report" >> "$out"
[ -n "${KVEDGE_BENCH_RAW:-}" ] || rm -rf "$raw"
