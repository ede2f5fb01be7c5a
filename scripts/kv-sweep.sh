#!/usr/bin/env bash
# Quality against KV memory for each KV method, as markdown rows with the command of each:
#
#   scripts/kv-sweep.sh ppl MODEL TEXT N_TOKENS CHUNK DEVICE "PERCENTS"
#       streaming perplexity of the first N_TOKENS of TEXT, fed in chunks of CHUNK;
#   scripts/kv-sweep.sh needle MODEL "LENGTHS" DEPTHS DEVICE "PERCENTS"
#       needle accuracy at each prompt length (comma-separated DEPTHS, in percent);
#
# PERCENTS are budgets as a share of the stream or prompt (e.g. "50 20 10"); every policy
# in $POLICIES (default: window h2o nacl) runs at each, after the full cache in f16, q8
# and q4. KVEDGE_BIN picks the binary (default target/release/kvedge).
set -euo pipefail
bin=${KVEDGE_BIN:-target/release/kvedge}
policies=${POLICIES:-"window h2o nacl"}
mode=$1; shift

ppl_row() { # label tokens args...
    local label=$1 n=$2; shift 2
    local out ppl mib
    out=$("$bin" eval ppl -m "$model" --device "$device" --text "$text" --stream "$n" --ctx "$chunk" "$@" 2>/dev/null)
    ppl=$(sed -n 's/^PPL = \([0-9.]*\).*/\1/p' <<<"$out")
    mib=$(sed -n 's/.*: \([0-9.]*\) MiB.*/\1/p' <<<"$out")
    echo "| $label | $ppl | $mib | \`kvedge eval ppl -m $(basename "$model") --device $device --text $(basename "$text") --stream $n --ctx $chunk $*\` |"
}

needle_row() { # label length args...
    local label=$1 len=$2; shift 2
    local out acc mib
    out=$("$bin" eval needle -m "$model" --device "$device" --lengths "$len" --depths "$depths" --json "$@" 2>/dev/null)
    acc=$(sed -n 's/.*"accuracy":\([0-9.]*\).*/\1/p' <<<"$out")
    mib=$(sed -n 's/.*KV \([0-9.]*\) MiB.*/\1/p' <<<"$out")
    echo "| $label | $len | $acc | $mib | \`kvedge eval needle -m $(basename "$model") --device $device --lengths $len --depths $depths $*\` |"
}

case $mode in
ppl)
    model=$1 text=$2 n=$3 chunk=$4 device=$5 percents=$6
    echo "| method | PPL | KV MiB | command |"
    echo "|---|---:|---:|---|"
    ppl_row "full f16" "$n"
    ppl_row "full q8" "$n" --kv-type q8
    ppl_row "full q4" "$n" --kv-type q4
    for pct in $percents; do
        for p in $policies; do
            ppl_row "$p $pct %" "$n" --kv-policy "$p" --kv-budget $((n * pct / 100))
        done
    done
    ;;
needle)
    model=$1 lengths=$2 depths=$3 device=$4 percents=$5
    echo "| method | length | accuracy | KV MiB | command |"
    echo "|---|---:|---:|---:|---|"
    for len in $lengths; do
        needle_row "full f16" "$len"
        needle_row "full q8" "$len" --kv-type q8
        needle_row "full q4" "$len" --kv-type q4
        for pct in $percents; do
            for p in $policies; do
                needle_row "$p $pct %" "$len" --kv-policy "$p" --kv-budget $((len * pct / 100))
            done
        done
    done
    ;;
*) echo "kv-sweep.sh: mode must be ppl or needle, got '$mode'" >&2; exit 2 ;;
esac
