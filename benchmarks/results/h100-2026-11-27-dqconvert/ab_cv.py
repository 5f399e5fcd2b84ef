"""A/B: the fused sequence-parallel backward with dQ converted in-kernel (new) against a separate convert (old)."""
import importlib, json, os, sys, tempfile, time
import torch

ROOT = os.getcwd()
sys.path.insert(0, os.path.join(ROOT, "ab_old", "old"))
import fa2dist as old_pkg  # noqa: E402
old_fa = old_pkg.flash_attention
for name in [m for m in sys.modules if m == "fa2dist" or m.startswith("fa2dist.")]:
    del sys.modules[name]
sys.path.pop(0)
sys.path.insert(0, ROOT)
import fa2dist  # noqa: E402
assert fa2dist.__file__.startswith(ROOT + "/fa2dist"), fa2dist.__file__
new_fa = fa2dist.flash_attention
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from bench_attention import _graph_ms  # noqa: E402

OUT = os.environ.get("OUT", ".")
dev = torch.device("cuda")
mode = sys.argv[1]


def grads(fa, q, k, v, do, causal, det, layout="bhsd"):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    o = fa(q, k, v, causal=causal, layout=layout, deterministic=det)
    return torch.autograd.grad(o, (q, k, v), do)


def ref_grads(q, k, v, do, causal, layout):
    from fa2dist.ops.reference import attention_reference  # noqa
    x = [t.detach().double().requires_grad_() for t in (q, k, v)]
    if layout == "bshd":
        xs = [t.transpose(1, 2) for t in x]
    else:
        xs = x
    group = xs[0].shape[1] // xs[1].shape[1]
    kk, vv = (t.repeat_interleave(group, 1) for t in xs[1:])
    s = xs[0] @ kk.transpose(-1, -2) / xs[0].shape[-1] ** 0.5
    if causal:
        nq, nk = s.shape[-2:]
        mask = torch.ones(nq, nk, dtype=torch.bool, device=s.device).tril(nk - nq)
        s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num()
    o = p @ vv
    if layout == "bshd":
        o = o.transpose(1, 2)
    return torch.autograd.grad(o, x, do.double())


if mode == "check":
    torch.manual_seed(0)
    shapes = [  # (b, hq, hk, nq, nk, d, causal, layout, dtype)
        (2, 4, 4, 1024, 1024, 128, False, "bhsd", torch.bfloat16),
        (2, 4, 4, 1000, 1000, 128, False, "bshd", torch.bfloat16),
        (1, 6, 2, 700, 1300, 128, False, "bhsd", torch.float16),
        (1, 4, 4, 3100, 3100, 128, True, "bhsd", torch.bfloat16),
        (1, 3, 3, 700, 4100, 64, True, "bshd", torch.bfloat16),
        (1, 4, 2, 4200, 4100, 64, True, "bhsd", torch.bfloat16),
        (1, 4, 4, 4100, 4100, 64, False, "bhsd", torch.bfloat16),
        (3, 2, 1, 257, 129, 64, False, "bhsd", torch.bfloat16),
        (1, 2, 2, 5000, 3072, 128, True, "bhsd", torch.bfloat16),
    ]
    rows = []
    for b, hq, hk, nq, nk, d, causal, layout, dt in shapes:
        def mk(h, n):
            shape = (b, h, n, d) if layout == "bhsd" else (b, n, h, d)
            return torch.randn(shape, device=dev, dtype=dt)
        q, k, v, do = mk(hq, nq), mk(hk, nk), mk(hk, nk), mk(hq, nq)
        ref = ref_grads(q, k, v, do, causal, layout)
        t0 = time.time()
        gn = [grads(new_fa, q, k, v, do, causal, False, layout) for _ in range(3)]
        torch.cuda.synchronize()
        go = grads(old_fa, q, k, v, do, causal, False, layout)
        gd = grads(new_fa, q, k, v, do, causal, True, layout)
        err = lambda g: [float((a.double() - r).abs().max()) for a, r in zip(g, ref)]
        row = dict(shape=[b, hq, hk, nq, nk, d, causal, layout, str(dt)], new=err(gn[0]), old=err(go), det=err(gd),
                   new_runs_max_dq_diff=max(float((g[0] - gn[0][0]).abs().max()) for g in gn),
                   dkdv_equal_old=all(torch.equal(a, c) for a, c in zip(gn[0][1:], go[1:])),
                   finite=all(bool(torch.isfinite(t).all()) for t in gn[0]), secs=round(time.time() - t0, 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
        row["dkdv_repeat_equal"] = all(torch.equal(a, c) for g in gn[1:] for a, c in zip(g[1:], gn[0][1:]))
        ok = row["finite"] and all(row["new"][i] <= 1.5 * max(row["old"][i], row["det"][i]) + 1e-6 for i in range(3))
        ok = ok and row["dkdv_repeat_equal"]
        print("OK" if ok else "FAIL", flush=True)
    json.dump(rows, open(os.path.join(OUT, "check.json"), "w"), indent=1)
elif mode == "variants":
    import importlib.util
    import fa2dist.ops.attention as att
    src = open(os.path.join(ROOT, "fa2dist/ops/kernels/hopper.py")).read()
    ROT = "DQ_ROTATE = gl.constexpr(True)"
    assert src.count(ROT) == 1
    edits = {"both": [], "rot": [], "zero": [(ROT, ROT.replace("True", "False"))],
             "none": [(ROT, ROT.replace("True", "False"))]}
    real_pre = att._attn_bwd_preprocess_kernel

    class NoZero:
        def __getitem__(self, grid):
            def launch(*args, **kw):
                if kw.get("ZERO_DQ"):
                    args[3].zero_()
                    kw["ZERO_DQ"] = False
                return real_pre[grid](*args, **kw)
            return launch

    pre = {"both": real_pre, "rot": NoZero(), "zero": real_pre, "none": NoZero()}
    kernels = {}
    variants_dir = tempfile.mkdtemp()
    for name, eds in edits.items():
        t = src
        for x, y in eds:
            t = t.replace(x, y)
        path = os.path.join(variants_dir, f"hopper_{name}.py")
        open(path, "w").write(t)
        spec = importlib.util.spec_from_file_location(f"hopper_{name}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        kernels[name] = mod.attn_bwd_dkdv_ws_kernel
    shapes = [(64, 1024, False), (128, 1024, False), (64, 4096, False), (128, 4096, False), (128, 4096, True),
              (64, 16384, False), (128, 16384, False), (128, 16384, True), (64, 16384, True)]
    res = {}
    for r in range(2):
        for d, n, causal in shapes:
            b, h = 16384 // n, 2048 // d
            q, k, v = (torch.randn(b, h, n, d, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
            do = torch.randn(b, h, n, d, device=dev, dtype=torch.bfloat16)
            flops = 4 * b * h * n * n * d * (0.5 if causal else 1) * 3.5
            names = ["old"] + list(kernels)
            if r % 2:
                names = names[::-1]
            key = f"d{d} n{n} {'causal' if causal else 'full'}"
            for name in names:
                fa = old_fa if name == "old" else new_fa
                if name != "old":
                    att.attn_bwd_dkdv_ws_kernel = kernels[name]
                    att._attn_bwd_preprocess_kernel = pre[name]
                def step(fa=fa):
                    o = fa(q, k, v, causal=causal, layout="bhsd", deterministic=False)
                    return torch.autograd.grad(o, (q, k, v), do)
                ms = _graph_ms(step, 300)
                res.setdefault(key, {}).setdefault(name, []).append(round(flops / ms / 1e9, 1))
            print(r, key, {k2: v2[-1] for k2, v2 in res[key].items()}, flush=True)
    json.dump(res, open(os.path.join(OUT, "variants.json"), "w"), indent=1)
    for key, vals in res.items():
        print(f"{key:22s}", "  ".join(f"{k2} {max(v2):6.1f}" for k2, v2 in vals.items()))
else:
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    shapes = [(d, n, c) for d in (64, 128) for n in (1024, 4096, 16384) for c in (False, True)]
    res = {}
    for r in range(rounds):
        for d, n, causal in shapes:
            b, h = 16384 // n, 2048 // d
            q, k, v = (torch.randn(b, h, n, d, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
            do = torch.randn(b, h, n, d, device=dev, dtype=torch.bfloat16)
            flops = 4 * b * h * n * n * d * (0.5 if causal else 1) * 3.5
            variants = [("old", old_fa), ("new", new_fa)] if r % 2 == 0 else [("new", new_fa), ("old", old_fa)]
            for name, fa in variants:
                def step(fa=fa):
                    o = fa(q, k, v, causal=causal, layout="bhsd", deterministic=False)
                    return torch.autograd.grad(o, (q, k, v), do)
                ms = _graph_ms(step, 300)
                res.setdefault(f"d{d} n{n} {'causal' if causal else 'full'}", {}).setdefault(name, []).append(
                    round(flops / ms / 1e9, 1))
            print(r, d, n, causal, {k2: v2[-1] for k2, v2 in res[f"d{d} n{n} {'causal' if causal else 'full'}"].items()},
                  flush=True)
    json.dump(res, open(os.path.join(OUT, f"ab_{mode}.json"), "w"), indent=1)
    for key, vals in res.items():
        med = {k2: sorted(v2)[len(v2) // 2] for k2, v2 in vals.items()}
        print(f"{key:22s} old {med['old']:6.1f}  new {med['new']:6.1f}  {med['new'] / med['old']:.3f}")
