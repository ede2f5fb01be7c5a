#!/usr/bin/env bash
# Streaming perplexity of one model under each KV policy and budget, as markdown rows:
#   scripts/kv-sweep.sh MODEL.gguf TEXT N_TOKENS CHUNK DEVICE "BUDGET..." [POLICIES]
# e.g. scripts/kv-sweep.sh models/cache/SmolLM2-135M-Instruct.Q4_1.gguf \
#        /usr/share/common-licenses/GPL-3 1024 256 cpu "512 205 102"
# Every row is one `kvedge eval ppl --stream` run; the command is printed beside it.
set -euo pipefail
model=$1 text=$2 n=$3 chunk=$4 device=$5 budgets=$6
policies=${7:-"window h2o nacl"}
bin=${KVEDGE_BIN:-target/release/kvedge}
row() {
    local label=$1; shift
    local cmd="kvedge eval ppl -m $(basename "$model") --device $device --text $(basename "$text") --stream $n --ctx $chunk $*"
    local out
    out=$("$bin" eval ppl -m "$model" --device "$device" --text "$text" --stream "$n" --ctx "$chunk" "$@" 2>/dev/null)
    local ppl mib
    ppl=$(sed -n 's/^PPL = \([0-9.]*\).*/\1/p' <<<"$out")
    mib=$(sed -n 's/.*: \([0-9.]*\) MiB.*/\1/p' <<<"$out")
    echo "| $label | $ppl | $mib | \`$cmd\` |"
}
echo "| method | PPL | KV MiB | command |"
echo "|---|---:|---:|---|"
row "full f16" 
for b in $budgets; do
    for p in $policies; do
        row "$p $b slots" --kv-policy "$p" --kv-budget "$b"
    done
done
