#!/usr/bin/env bash
# Palu low-rank KV latents (issue 6): compress a model at several rank ratios, plain and
# whitened, and measure each file with `kvedge eval sweep` (streaming perplexity: the
# latents in f16 and q4, and with NACL at a 20 % budget; needle accuracy: f16 latents and
# NACL 20 %), on the cpu device. Writes OUT.md (one table, each row with the compress
# command and the eval command) and keeps every sweep's own .md/.json/.svg under OUT.d/.
#
#   bash scripts/palu-results.sh [-m MODEL.gguf] [--ratios 0.5,0.3,1.0] [--stream 4096]
#        [--needle 1024,2048] [--depths 0,25,50,75,100] [--calib FILE] [-o OUT]
#        [--methods full,q4,nacl] [--no-plain | --only-plain] [--no-original]
#
# --needle '' skips the needle rows; --no-plain skips the plain-SVD ablation, --only-plain
# runs only it; --no-original skips the uncompressed model's rows.
#
# Calibration text (whitening) defaults to one essay that lies past the first tokens the
# evaluations read (the essays are joined in name order; worked.txt comes last).
set -euo pipefail
cd "$(dirname "$0")/.."

model=models/cache/SmolLM2-135M-Instruct.Q4_1.gguf
ratios=0.5,0.3,1.0 stream=4096 needle=1024,2048 depths=0,25,50,75,100
calib=models/cache/PaulGrahamEssays/worked.txt text=models/cache/PaulGrahamEssays
out=docs/palu-smollm2 alloc=energy methods=full,q4,nacl plain=yes original=yes
while [ $# -gt 0 ]; do
  case "$1" in
    -m) model=$2; shift 2 ;;
    --ratios) ratios=$2; shift 2 ;;
    --stream) stream=$2; shift 2 ;;
    --needle) needle=$2; shift 2 ;;
    --depths) depths=$2; shift 2 ;;
    --calib) calib=$2; shift 2 ;;
    --rank-alloc) alloc=$2; shift 2 ;;
    --methods) methods=$2; shift 2 ;;
    --no-original) original=no; shift ;;
    --no-plain) plain=no; shift ;;
    --only-plain) plain=only; shift ;;
    -o) out=$2; shift 2 ;;
    *) echo "unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[ -f "$model" ] || { echo "$model not found (bash models/fetch.sh)" >&2; exit 1; }
[ -e "$calib" ] || { echo "$calib not found (bash models/fetch.sh data)" >&2; exit 1; }
kvedge=${KVEDGE:-target/release/kvedge}
[ -n "${KVEDGE:-}" ] || cargo build --release -q -p kvedge-cli
work=${PALU_WORK:-/tmp/kvedge-palu}
mkdir -p "$work" "$out.d"
base=$(basename "$model" .gguf)
# A 20 % NACL budget in slots: a fifth of the longest context measured.
nacl_ppl=$((stream / 5))

rows=$out.d/rows.md
: > "$rows"
add_rows() { # label, compress command, sweep prefix
  tail -n +3 "$3.md" | while IFS= read -r line; do
    echo "| $1 | \`$2\` |${line#|}" >> "$rows"
  done
}

measure() { # label, file, compress command, tag, methods
  local p="$out.d/$4-ppl"
  "$kvedge" eval sweep --task ppl -m "$2" --device cpu --text "$text" --stream "$stream" \
    --methods "${5%-ppl-only}" --budgets 20 -o "$p" > "$p.log" 2>&1 || { cat "$p.log"; exit 1; }
  add_rows "$1" "$3" "$p"
  if [ -n "$needle" ] && [ "$5" = "$methods" ]; then
    p="$out.d/$4-needle"
    "$kvedge" eval sweep --task needle -m "$2" --device cpu --lengths "$needle" \
      --depths "$depths" --seed 1 --methods full,nacl --budgets 20 -o "$p" > "$p.log" 2>&1 \
      || { cat "$p.log"; exit 1; }
    add_rows "$1" "$3" "$p"
  fi
}

# The uncompressed model, same protocol (its needle rows: docs/kv-sweep-needle*-smollm2.md).
[ $original = yes ] && measure "original" "$model" "(none)" original "$methods-ppl-only"
IFS=, read -ra rs <<< "$ratios"
kinds=whitened
[ $plain = yes ] && kinds="whitened plain"
[ $plain = only ] && kinds=plain
for w in $kinds; do
  for r in "${rs[@]}"; do
    f=$work/$base-r$r-$w.gguf
    args=(--kv-rank-ratio "$r" --rank-alloc "$alloc" --latent-type q4 --hadamard)
    [ $w = whitened ] && args+=(--calib "$calib" --calib-tokens 2048)
    shown="kvedge compress -m $(basename "$model") -o $(basename "$f") ${args[*]}"
    shown=${shown//$calib/$(basename "$calib")}
    log=$out.d/$base-r$r-$w.compress.txt
    "$kvedge" compress -m "$model" -o "$f" "${args[@]}" > "$log" 2>&1 || { cat "$log"; exit 1; }
    # Plain SVD only for perplexity with f16 latents: it is the ablation of whitening.
    m=$methods
    [ $w = plain ] && m=full
    measure "r $r $w" "$f" "$shown" "r$r-$w" "$m"
  done
done
{
  echo "| latents | compress command | method | length | quality | KV MiB | device | eval command |"
  echo "|---|---|---|---:|---:|---:|---|---|"
  cat "$rows"
} > "$out.md"
echo "wrote $out.md"
