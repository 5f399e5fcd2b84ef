# Nsight Compute on one forward launch per provider (prof_fwd.py profiles its third call). Run from the repository
# root on the GPU machine; the text reports land in $OUT.
set -e
NCU=$(which ncu)
TMP=$(mktemp -d)
full() {  # name provider head_dim seqlen causal kernel-regex
  $NCU --clock-control none --set full --import-source no -k "regex:$6" --launch-skip 2 --launch-count 1 \
    -o "$TMP/$1" python benchmarks/results/h100-2026-11-27-profile/prof_fwd.py "$2" "$3" "$4" "$5"
  $NCU --import "$TMP/$1.ncu-rep" --page details > "$OUT/ncu_$1.txt"
  $NCU --import "$TMP/$1.ncu-rep" --page raw --csv > "$OUT/$1.raw.csv"
}
sampled() {  # warp-stall samples per SASS instruction
  $NCU --clock-control none --section SourceCounters --section WarpStateStats --import-source no -k "regex:$6" \
    --launch-skip 2 --launch-count 1 -o "$TMP/src_$1" python benchmarks/results/h100-2026-11-27-profile/prof_fwd.py \
    "$2" "$3" "$4" "$5"
  $NCU --import "$TMP/src_$1.ncu-rep" --page source --print-source sass --csv > "$OUT/src_$1.sass.csv"
}
full fa_d64_1k_c fa2dist 64 1024 1 attn_fwd
full cudnn_d64_1k_c cudnn 64 1024 1 "cudnn|fmha|sdpa|flash|attn"
full flash_d64_1k_c flash 64 1024 1 "flash|fmha"
full fa_d64_1k_f fa2dist 64 1024 0 attn_fwd
full fa_d64_16k_c fa2dist 64 16384 1 attn_fwd
full fa_d128_1k_c fa2dist 128 1024 1 attn_fwd
sampled fa_d64_1k_c fa2dist 64 1024 1 attn_fwd
sampled fa_d64_16k_c fa2dist 64 16384 1 attn_fwd
