A="--providers sdpa-cudnn,fa2dist-sp,sdpa-flash --dtypes bf16 --head-dims 128 --seqlens 1024,2048 --causal both --modes fwdbwd,fwd,bwd --cuda-graphs --rep 100"
python benchmarks/bench_attention.py $A --out $OUT/graph_capture 2>&1 | grep '^{' | cut -c1-250
# a failed capture (a host sync inside it) must not cost the cells after it
python - <<'PY'
import sys, torch; sys.path.insert(0, "benchmarks"); import bench_attention as b
x = torch.randn(1000, device="cuda")
try:
    b._graph_ms(lambda: x.sum().item(), 50)
except Exception as e:
    print("expected failure:", b._error(e))
print("after:", b._graph_ms(lambda: torch.randn(1000, device="cuda").sum(), 50))
PY
rm -f $OUT/graph_capture/*.png
