# Nsight Compute on one forward+backward per provider, d128 without a mask (prof_bwd.py). Run from the repository
# root on the GPU machine; the raw CSVs land in $OUT (summarised in ncu_bwd_summary.json).
NCU=$(which ncu)
TMP=$(mktemp -d)
run() {  # name provider d n causal
  timeout 200 $NCU --clock-control none --set full --import-source no --profile-from-start off \
    -o "$TMP/$1" python benchmarks/results/h100-2026-11-27-profile/prof_bwd.py "$2" "$3" "$4" "$5" > "$TMP/$1.log" 2>&1
  tail -2 "$TMP/$1.log"
  $NCU --import "$TMP/$1.ncu-rep" --page raw --csv > "$OUT/$1.raw.csv"
}
run bwd_det_d128_4k fa2dist-det 128 4096 0
run bwd_sp_d128_4k fa2dist-sp 128 4096 0
run bwd_cudnn_d128_4k cudnn 128 4096 0
run bwd_sp_d128_16k fa2dist-sp 128 16384 0
run bwd_cudnn_d128_16k cudnn 128 16384 0
ls -la $OUT
