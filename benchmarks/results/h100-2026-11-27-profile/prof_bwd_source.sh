# Nsight Compute source counters (shared-memory wavefronts per SASS instruction) of the sequence-parallel dK/dV
# kernel, d128 4k without a mask. Run from the repository root on the GPU machine; the CSV lands in $OUT.
NCU=$(which ncu)
TMP=$(mktemp -d)
timeout 300 $NCU --clock-control none --section SourceCounters --section MemoryWorkloadAnalysis_Tables --import-source no --profile-from-start off -k regex:dkdv \
    -o "$TMP/sp" python benchmarks/results/h100-2026-11-27-profile/prof_bwd.py fa2dist-sp 128 4096 0 > "$TMP/sp.log" 2>&1
tail -2 "$TMP/sp.log"
$NCU --import "$TMP/sp.ncu-rep" --page source --print-source sass --csv > "$OUT/src_sp_dkdv.sass.csv"
$NCU --import "$TMP/sp.ncu-rep" --page details > "$OUT/src_sp_dkdv.txt"
