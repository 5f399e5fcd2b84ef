"""FlashAttention-2 backward kernels: delta preprocess, dK/dV (with optional atomic dQ), and a separate dQ pass.

Two modes share the dK/dV kernel:
- deterministic: ``_attn_bwd_dkdv_kernel`` with ATOMIC_DQ=False, then ``_attn_bwd_dq_kernel``; every output element is
  written by exactly one program in a fixed loop order, so repeated calls are bitwise identical.
- sequence-parallel: ``_attn_bwd_dkdv_kernel`` with ATOMIC_DQ=True accumulates dQ in fp32 with atomics from every
  key block: two fewer matmuls per tile pair, but the summation order (and so the rounding) depends on scheduling.

Ragged tails need no masks here: out-of-range K/V/Q/dO rows load as 0 and out-of-range LSE as +inf, which makes their
P and dS exactly 0. Only the causal diagonal is masked.
"""

import triton
import triton.language as tl

from fa2dist.ops.kernels.forward import LOG2E, _dot


@triton.jit
def _attn_bwd_preprocess_kernel(
    O, DO, DELTA,
    stride_oz, stride_oh, stride_om,
    stride_doz, stride_doh, stride_dom,
    H, N_Q,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta = rowsum(O * dO) in fp32. Grid: (cdiv(N_Q, BLOCK_M), batch * H)."""
    start_m = tl.program_id(0)
    off_zh = tl.program_id(1)
    off_z = off_zh // H
    off_h = off_zh % H
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < N_Q) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(O + off_z.to(tl.int64) * stride_oz + off_h.to(tl.int64) * stride_oh
                + offs_m[:, None] * stride_om + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + off_z.to(tl.int64) * stride_doz + off_h.to(tl.int64) * stride_doh
                 + offs_m[:, None] * stride_dom + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + off_zh.to(tl.int64) * N_Q + offs_m, delta, mask=offs_m < N_Q)


@triton.jit
def _attn_bwd_dkdv_inner(
    dk, dv, k, v,
    q_ptrs, do_ptrs, dq_ptrs, LSE, DELTA, stride_qm, stride_dom, stride_dqm,
    offs_m, offs_n, offs_d, lo, hi, N_Q, diag, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
    MASKED: tl.constexpr, EVEN_D: tl.constexpr, ATOMIC_DQ: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    q_ptrs += lo * stride_qm
    do_ptrs += lo * stride_dom
    if ATOMIC_DQ:
        dq_ptrs += lo * stride_dqm
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        rows = start_m + offs_m
        row_mask = rows < N_Q
        qd_mask = row_mask[:, None] & (offs_d[None, :] < HEAD_DIM)
        q = tl.load(q_ptrs, mask=qd_mask, other=0.0)
        do = tl.load(do_ptrs, mask=qd_mask, other=0.0)
        lse = tl.load(LSE + rows, mask=row_mask, other=float("inf")) * LOG2E
        delta = tl.load(DELTA + rows, mask=row_mask, other=0.0)
        # Transposed tiles (keys along rows) so dK and dV accumulate without a transpose of the accumulators.
        qkT = _dot(k, tl.trans(q), UPCAST, PRECISION)
        pT = tl.math.exp2(qkT * qk_scale - lse[None, :])
        if MASKED:
            pT = tl.where(offs_n[:, None] <= rows[None, :] + diag, pT, 0.0)
        dv = _dot(pT.to(do.dtype), do, UPCAST, PRECISION, dv)
        dpT = _dot(v, tl.trans(do), UPCAST, PRECISION)
        dsT = pT * (dpT - delta[None, :])
        dk = _dot(dsT.to(q.dtype), q, UPCAST, PRECISION, dk)
        if ATOMIC_DQ:
            dq = _dot(tl.trans(dsT.to(k.dtype)), k, UPCAST, PRECISION) * sm_scale
            tl.atomic_add(dq_ptrs, dq, mask=qd_mask, sem="relaxed")
            dq_ptrs += BLOCK_M * stride_dqm
        q_ptrs += BLOCK_M * stride_qm
        do_ptrs += BLOCK_M * stride_dom
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, DQ, LSE, DELTA, sm_scale,
    stride_qz, stride_qh, stride_qm,
    stride_kz, stride_kh, stride_kn,
    stride_vz, stride_vh, stride_vn,
    stride_doz, stride_doh, stride_dom,
    stride_dkz, stride_dkh, stride_dkn,
    stride_dvz, stride_dvh, stride_dvn,
    stride_dqz, stride_dqh, stride_dqm,
    H_KV, GROUP, N_Q, N_K,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, ATOMIC_DQ: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """dK and dV for one key block of one key/value head, summed over its GROUP query heads in a fixed order.

    Grid: (cdiv(N_K, BLOCK_N), batch * H_KV). Constexprs as in the forward kernel, plus ATOMIC_DQ
    (sequence-parallel mode: also add this block's dQ contribution into the fp32 DQ buffer with atomics).
    """
    start_n = tl.program_id(0) * BLOCK_N
    off_zh = tl.program_id(1)
    off_z = off_zh // H_KV
    off_hk = off_zh % H_KV
    H = H_KV * GROUP

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    kv_mask = (offs_n[:, None] < N_K) & (offs_d[None, :] < HEAD_DIM)
    k = tl.load(K + off_z.to(tl.int64) * stride_kz + off_hk.to(tl.int64) * stride_kh
                + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + off_z.to(tl.int64) * stride_vz + off_hk.to(tl.int64) * stride_vh
                + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    qk_scale = sm_scale * LOG2E

    diag = N_K - N_Q
    if IS_CAUSAL:
        # Rows that see at least the block's first key, and rows from which on they see all of its keys.
        lo = (tl.maximum(start_n - diag, 0) // BLOCK_M) * BLOCK_M
        hi_mask = tl.minimum(tl.maximum(start_n + BLOCK_N - 1 - diag, 0), N_Q)
        hi_mask = tl.cdiv(hi_mask, BLOCK_M) * BLOCK_M
        lo_full = tl.maximum(lo, hi_mask)
    else:
        lo = 0
        hi_mask = 0
        lo_full = 0

    for g in range(0, GROUP):
        off_h = off_hk * GROUP + g
        off_q = off_z.to(tl.int64) * stride_qz + off_h.to(tl.int64) * stride_qh
        q_ptrs = Q + off_q + offs_m[:, None] * stride_qm + offs_d[None, :]
        do_ptrs = DO + off_z.to(tl.int64) * stride_doz + off_h.to(tl.int64) * stride_doh \
            + offs_m[:, None] * stride_dom + offs_d[None, :]
        dq_ptrs = DQ + off_z.to(tl.int64) * stride_dqz + off_h.to(tl.int64) * stride_dqh \
            + offs_m[:, None] * stride_dqm + offs_d[None, :]
        lse_ptr = LSE + (off_z * H + off_h).to(tl.int64) * N_Q
        delta_ptr = DELTA + (off_z * H + off_h).to(tl.int64) * N_Q
        if IS_CAUSAL:
            dk, dv = _attn_bwd_dkdv_inner(
                dk, dv, k, v, q_ptrs, do_ptrs, dq_ptrs, lse_ptr, delta_ptr, stride_qm, stride_dom, stride_dqm,
                offs_m, offs_n, offs_d, lo, hi_mask, N_Q, diag, qk_scale, sm_scale,
                HEAD_DIM, BLOCK_M, True, EVEN_D, ATOMIC_DQ, UPCAST, PRECISION,
            )
        dk, dv = _attn_bwd_dkdv_inner(
            dk, dv, k, v, q_ptrs, do_ptrs, dq_ptrs, lse_ptr, delta_ptr, stride_qm, stride_dom, stride_dqm,
            offs_m, offs_n, offs_d, lo_full, N_Q, N_Q, diag, qk_scale, sm_scale,
            HEAD_DIM, BLOCK_M, False, EVEN_D, ATOMIC_DQ, UPCAST, PRECISION,
        )

    dk *= sm_scale
    dk_ptrs = DK + off_z.to(tl.int64) * stride_dkz + off_hk.to(tl.int64) * stride_dkh \
        + offs_n[:, None] * stride_dkn + offs_d[None, :]
    dv_ptrs = DV + off_z.to(tl.int64) * stride_dvz + off_hk.to(tl.int64) * stride_dvh \
        + offs_n[:, None] * stride_dvn + offs_d[None, :]
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attn_bwd_dq_inner(
    dq, q, do, lse, delta,
    k_ptrs, v_ptrs, stride_kn, stride_vn,
    offs_m, offs_n, offs_d, lo, hi, N_K, diag, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    k_ptrs += lo * stride_kn
    v_ptrs += lo * stride_vn
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        kv_mask = (cols[:, None] < N_K) & (offs_d[None, :] < HEAD_DIM)
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
        qk = _dot(q, tl.trans(k), UPCAST, PRECISION)
        p = tl.math.exp2(qk * qk_scale - lse[:, None])
        if MASKED:
            p = tl.where(cols[None, :] <= offs_m[:, None] + diag, p, 0.0)
        dp = _dot(do, tl.trans(v), UPCAST, PRECISION)
        ds = p * (dp - delta[:, None])
        dq = _dot(ds.to(k.dtype), k, UPCAST, PRECISION, dq)
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    return dq


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA, sm_scale,
    stride_qz, stride_qh, stride_qm,
    stride_kz, stride_kh, stride_kn,
    stride_vz, stride_vh, stride_vn,
    stride_doz, stride_doh, stride_dom,
    stride_dqz, stride_dqh, stride_dqm,
    H, GROUP, N_Q, N_K,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """dQ for one query block of one head (deterministic mode). Grid: (cdiv(N_Q, BLOCK_M), batch * H)."""
    start_m = tl.program_id(0) * BLOCK_M
    off_zh = tl.program_id(1)
    off_z = off_zh // H
    off_h = off_zh % H
    off_hk = off_h // GROUP

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_mask = offs_m < N_Q
    qd_mask = row_mask[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + off_z.to(tl.int64) * stride_qz + off_h.to(tl.int64) * stride_qh
                + offs_m[:, None] * stride_qm + offs_d[None, :], mask=qd_mask, other=0.0)
    do = tl.load(DO + off_z.to(tl.int64) * stride_doz + off_h.to(tl.int64) * stride_doh
                 + offs_m[:, None] * stride_dom + offs_d[None, :], mask=qd_mask, other=0.0)
    lse = tl.load(LSE + off_zh.to(tl.int64) * N_Q + offs_m, mask=row_mask, other=float("inf")) * LOG2E
    delta = tl.load(DELTA + off_zh.to(tl.int64) * N_Q + offs_m, mask=row_mask, other=0.0)
    k_ptrs = K + off_z.to(tl.int64) * stride_kz + off_hk.to(tl.int64) * stride_kh \
        + offs_n[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = V + off_z.to(tl.int64) * stride_vz + off_hk.to(tl.int64) * stride_vh \
        + offs_n[:, None] * stride_vn + offs_d[None, :]
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    qk_scale = sm_scale * LOG2E

    diag = N_K - N_Q
    if IS_CAUSAL:
        hi = tl.minimum(tl.maximum(start_m + BLOCK_M + diag, 0), N_K)
        lo_mask = tl.minimum((tl.maximum(start_m + diag + 1, 0) // BLOCK_N) * BLOCK_N, hi)
        dq = _attn_bwd_dq_inner(
            dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn,
            offs_m, offs_n, offs_d, 0, lo_mask, N_K, diag, qk_scale,
            HEAD_DIM, BLOCK_N, False, UPCAST, PRECISION,
        )
        dq = _attn_bwd_dq_inner(
            dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn,
            offs_m, offs_n, offs_d, lo_mask, hi, N_K, diag, qk_scale,
            HEAD_DIM, BLOCK_N, True, UPCAST, PRECISION,
        )
    else:
        dq = _attn_bwd_dq_inner(
            dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn,
            offs_m, offs_n, offs_d, 0, N_K, N_K, diag, qk_scale,
            HEAD_DIM, BLOCK_N, False, UPCAST, PRECISION,
        )
    dq *= sm_scale
    tl.store(DQ + off_z.to(tl.int64) * stride_dqz + off_h.to(tl.int64) * stride_dqh
             + offs_m[:, None] * stride_dqm + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=qd_mask)
