"""FlashAttention-2 backward kernels: delta preprocess, dK/dV (with optional atomic dQ), and a separate dQ pass.

Two modes share the dK/dV kernel:
- deterministic: ``_attn_bwd_dkdv_kernel`` with ATOMIC_DQ=False, then ``_attn_bwd_dq_kernel``; every output element is
  written by exactly one program in a fixed loop order, so repeated calls are bitwise identical.
- sequence-parallel: ``_attn_bwd_dkdv_kernel`` with ATOMIC_DQ=True accumulates dQ in fp32 with atomics from every
  key block: two fewer matmuls per tile pair, but the summation order (and so the rounding) depends on scheduling.

Features (window, softcap, ALiBi, dropout, variable length) are the forward's, with the same constexpr flags and the
same helpers, so the backward recomputes exactly the forward's scores and dropout mask. Out-of-range query rows
load as 0 with LSE +inf, which makes their P and dS exactly 0; out-of-range keys load as 0 and are masked wherever
they could reach a stored value.
"""

import triton
import triton.language as tl

from fa2dist.ops.kernels.forward import (
    LOG2E,
    _dot,
    _dropout_keep,
    _key_ranges,
    _lse_log2,
    _prob,
    _query_program,
    _row_ptrs,
    _scores,
    _visible,
)


@triton.jit
def _attn_bwd_preprocess_kernel(
    O, DO, DELTA,
    stride_oz, stride_oh, stride_om,
    stride_doz, stride_doh, stride_dom,
    H, N_Q,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta = rowsum(O * dO) in fp32, laid out (batch, H, N_Q). Grid: (cdiv(N_Q, BLOCK_M), H, batch)."""
    start_m = tl.program_id(0)
    off_h = tl.program_id(1)
    off_z = tl.program_id(2)
    off_zh = off_z * H + off_h
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < N_Q) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(O + off_z.to(tl.int64) * stride_oz + off_h.to(tl.int64) * stride_oh
                + offs_m[:, None].to(tl.int64) * stride_om + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + off_z.to(tl.int64) * stride_doz + off_h.to(tl.int64) * stride_doh
                 + offs_m[:, None].to(tl.int64) * stride_dom + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + off_zh.to(tl.int64) * N_Q + offs_m, delta, mask=offs_m < N_Q)


@triton.jit
def _attn_bwd_dkdv_inner(
    dk, dv, k, v,
    q_ptrs, do_ptrs, dq_ptrs, LSE, DELTA, stride_qm, stride_dom, stride_dqm, off_z, off_h,
    offs_m, offs_n, offs_d, lo, hi, N_Q, N_K, diag, qk_scale, sm_scale,
    cap_in, cap_out, alibi, win_l, win_r, seed, bh, dropout_p, dropout_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    MASKED: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
    SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, DROPOUT: tl.constexpr, ATOMIC_DQ: tl.constexpr,
    KEY_TAIL: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr,
    TMA_DQ: tl.constexpr,
):
    # TMA: q_ptrs, do_ptrs are tensor descriptors (zero fill past the sequence); TMA_DQ: so is dq_ptrs (clipped
    # bulk reductions).
    if not TMA:
        q_ptrs += lo * stride_qm
        do_ptrs += lo * stride_dom
    if ATOMIC_DQ and not TMA_DQ:
        dq_ptrs += lo * stride_dqm
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        rows = start_m + offs_m
        row_mask = rows < N_Q
        qd_mask = row_mask[:, None] & (offs_d[None, :] < HEAD_DIM)
        if TMA:
            q = q_ptrs.load([off_z, off_h, start_m, 0]).reshape(BLOCK_M, BLOCK_D)
            do = do_ptrs.load([off_z, off_h, start_m, 0]).reshape(BLOCK_M, BLOCK_D)
        else:
            q = tl.load(q_ptrs, mask=qd_mask, other=0.0)
            do = tl.load(do_ptrs, mask=qd_mask, other=0.0)
        lse_hi, lse_lo = _lse_log2(tl.load(LSE + rows, mask=row_mask, other=float("inf")), PRECISION)
        delta = tl.load(DELTA + rows, mask=row_mask, other=0.0)
        # Transposed tiles (keys along rows) so dK and dV accumulate without a transpose of the accumulators.
        sT, tT = _scores(_dot(k, tl.trans(q), UPCAST, PRECISION), rows[None, :], offs_n[:, None], diag, qk_scale,
                         cap_in, cap_out, alibi, SOFTCAP, ALIBI)
        pT = _prob(sT, lse_hi[None, :], lse_lo[None, :], PRECISION)
        if MASKED:
            pT = tl.where(_visible(rows[None, :], offs_n[:, None], N_K, diag, win_l, win_r, HAS_LEFT, HAS_RIGHT),
                          pT, 0.0)
        # dV before dP: this order lets the accumulating MMA overlap the next one (measured on sm_90).
        if DROPOUT:
            keepT = _dropout_keep(seed, bh, rows[None, :], offs_n[:, None], dropout_p)
            dv = _dot(tl.where(keepT, pT * dropout_scale, 0.0).to(do.dtype), do, UPCAST, PRECISION, dv)
            dpT = tl.where(keepT, _dot(v, tl.trans(do), UPCAST, PRECISION) * dropout_scale, 0.0)
        else:
            dv = _dot(pT.to(do.dtype), do, UPCAST, PRECISION, dv)
            dpT = _dot(v, tl.trans(do), UPCAST, PRECISION)
        dsT = pT * (dpT - delta[None, :])
        if SOFTCAP:
            dsT *= 1.0 - tT * tT
        dk = _dot(dsT.to(q.dtype), q, UPCAST, PRECISION, dk)
        if ATOMIC_DQ:
            if KEY_TAIL and not MASKED:
                # Keys past the end load as 0, but their P may be inf (unmasked tiles); 0 * inf would be NaN in dQ.
                dsT = tl.where(offs_n[:, None] < N_K, dsT, 0.0)
            dq = _dot(tl.trans(dsT.to(k.dtype)), k, UPCAST, PRECISION) * sm_scale
            if TMA_DQ:
                # One bulk reduction of the tile through shared memory instead of an atomic per element.
                dq_ptrs.atomic_add([off_z, off_h, start_m, 0], dq.reshape(1, 1, BLOCK_M, BLOCK_D))
            else:
                tl.atomic_add(dq_ptrs, dq, mask=qd_mask, sem="relaxed")
                dq_ptrs += BLOCK_M * stride_dqm
        if not TMA:
            q_ptrs += BLOCK_M * stride_qm
            do_ptrs += BLOCK_M * stride_dom
    return dk, dv


@triton.jit
def _query_ranges(n0, N_Q, diag, win_l, win_r, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    """Query ranges for keys [n0, n0 + BLOCK_N): masked [lo, a), unmasked [a, b), masked [b, hi)."""
    if HAS_RIGHT:
        lo = (tl.maximum(n0 - diag - win_r, 0) // BLOCK_M) * BLOCK_M
        a = tl.cdiv(tl.maximum(n0 + BLOCK_N - 1 - diag - win_r, 0), BLOCK_M) * BLOCK_M
    else:
        lo = 0
        a = 0
    if HAS_LEFT:
        hi = tl.minimum(tl.maximum(n0 + BLOCK_N - diag + win_l, 0), N_Q)
        b = (tl.maximum(n0 - diag + win_l + 1, 0) // BLOCK_M) * BLOCK_M
    else:
        hi = N_Q
        b = N_Q
    lo = tl.minimum(lo, hi)
    a = tl.minimum(tl.maximum(a, lo), hi)
    b = tl.minimum(tl.maximum(b, a), hi)
    return lo, a, b, hi


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, DQ, LSE, DELTA, CU_Q, CU_K, ALIBI_SLOPES, SEED,
    sm_scale, cap_in, cap_out, dropout_p, dropout_scale,
    stride_qz, stride_qh, stride_qm,
    stride_kz, stride_kh, stride_kn,
    stride_vz, stride_vh, stride_vn,
    stride_doz, stride_doh, stride_dom,
    stride_dkz, stride_dkh, stride_dkn,
    stride_dvz, stride_dvh, stride_dvn,
    stride_dqz, stride_dqh, stride_dqm,
    stride_lz, stride_lh, stride_az,
    H_KV, GROUP, N_Q, N_K, win_l, win_r,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    VARLEN: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
    SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, DROPOUT: tl.constexpr,
    ATOMIC_DQ: tl.constexpr, KEY_TAIL: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    TMA: tl.constexpr, TMA_DQ: tl.constexpr,
):
    """dK and dV for one key block of one key/value head, summed over its GROUP query heads in a fixed order.

    Grid: (cdiv(max seqlen_k, BLOCK_N), H_KV, batch). Constexprs as in the forward kernel, plus ATOMIC_DQ
    (sequence-parallel mode: also add this block's dQ contribution into the fp32 DQ buffer with atomics) and KEY_TAIL
    (some key block may end past the sequence: a blocked-out tail whose P must not reach the atomic dQ), TMA
    (Q and DO are tensor descriptors over (batch, heads, seqlen, head dim), blocks (1, 1, BLOCK_M, BLOCK_D); sm_90+,
    not with VARLEN) and TMA_DQ (so is the fp32 DQ buffer, reduced into by the copy engine).
    LSE and DELTA share the strides (stride_lz, stride_lh, 1).
    """
    start_n = tl.program_id(0) * BLOCK_N
    off_hk = tl.program_id(1)
    off_z = tl.program_id(2)
    H = H_KV * GROUP

    if VARLEN:
        q_start = tl.load(CU_Q + off_z)
        N_Q = tl.load(CU_Q + off_z + 1) - q_start
        k_start = tl.load(CU_K + off_z)
        N_K = tl.load(CU_K + off_z + 1) - k_start
        if start_n >= N_K:
            return
    else:
        q_start = 0
        k_start = 0
    # Sequence starts as 64-bit scalars; offsets inside a sequence stay 32-bit (_row_ptrs).
    q_start64 = q_start.to(tl.int64) if VARLEN else 0
    k_start64 = k_start.to(tl.int64) if VARLEN else 0

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n[:, None] < N_K) & (offs_d[None, :] < HEAD_DIM)
    k_ptrs = _row_ptrs(K, off_z, off_hk, k_start64, stride_kz, stride_kh, stride_kn, offs_n, offs_d)
    v_ptrs = _row_ptrs(V, off_z, off_hk, k_start64, stride_vz, stride_vh, stride_vn, offs_n, offs_d)
    k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
    v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    qk_scale = sm_scale * LOG2E
    seed = 0
    if DROPOUT:
        seed = tl.load(SEED)

    diag = N_K - N_Q
    lo, a, b, hi = _query_ranges(start_n, N_Q, diag, win_l, win_r, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT)

    for g in range(0, GROUP):
        off_h = off_hk * GROUP + g
        bh = off_z * H + off_h
        alibi = 0.0
        if ALIBI:
            alibi = tl.load(ALIBI_SLOPES + off_z * stride_az + off_h).to(tl.float32) * LOG2E
        if TMA:
            q_ptrs = Q
            do_ptrs = DO
        else:
            q_ptrs = _row_ptrs(Q, off_z, off_h, q_start64, stride_qz, stride_qh, stride_qm, offs_m, offs_d)
            do_ptrs = _row_ptrs(DO, off_z, off_h, q_start64, stride_doz, stride_doh, stride_dom, offs_m, offs_d)
        if TMA_DQ:
            dq_ptrs = DQ
        else:
            dq_ptrs = _row_ptrs(DQ, off_z, off_h, q_start64, stride_dqz, stride_dqh, stride_dqm, offs_m, offs_d)
        row_offset = off_z.to(tl.int64) * stride_lz + off_h.to(tl.int64) * stride_lh + q_start
        lse_ptr = LSE + row_offset
        delta_ptr = DELTA + row_offset
        if HAS_RIGHT:
            dk, dv = _attn_bwd_dkdv_inner(
                dk, dv, k, v, q_ptrs, do_ptrs, dq_ptrs, lse_ptr, delta_ptr, stride_qm, stride_dom, stride_dqm,
                off_z, off_h,
                offs_m, offs_n, offs_d, lo, a, N_Q, N_K, diag, qk_scale, sm_scale,
                cap_in, cap_out, alibi, win_l, win_r, seed, bh, dropout_p, dropout_scale,
                HEAD_DIM, BLOCK_M, BLOCK_D, True, HAS_LEFT, HAS_RIGHT, SOFTCAP, ALIBI, DROPOUT, ATOMIC_DQ,
                KEY_TAIL, UPCAST, PRECISION, TMA, TMA_DQ,
            )
        dk, dv = _attn_bwd_dkdv_inner(
            dk, dv, k, v, q_ptrs, do_ptrs, dq_ptrs, lse_ptr, delta_ptr, stride_qm, stride_dom, stride_dqm,
            off_z, off_h,
            offs_m, offs_n, offs_d, a, b, N_Q, N_K, diag, qk_scale, sm_scale,
            cap_in, cap_out, alibi, win_l, win_r, seed, bh, dropout_p, dropout_scale,
            HEAD_DIM, BLOCK_M, BLOCK_D, False, HAS_LEFT, HAS_RIGHT, SOFTCAP, ALIBI, DROPOUT, ATOMIC_DQ,
            KEY_TAIL, UPCAST, PRECISION, TMA, TMA_DQ,
        )
        if HAS_LEFT:
            dk, dv = _attn_bwd_dkdv_inner(
                dk, dv, k, v, q_ptrs, do_ptrs, dq_ptrs, lse_ptr, delta_ptr, stride_qm, stride_dom, stride_dqm,
                off_z, off_h,
                offs_m, offs_n, offs_d, b, hi, N_Q, N_K, diag, qk_scale, sm_scale,
                cap_in, cap_out, alibi, win_l, win_r, seed, bh, dropout_p, dropout_scale,
                HEAD_DIM, BLOCK_M, BLOCK_D, True, HAS_LEFT, HAS_RIGHT, SOFTCAP, ALIBI, DROPOUT, ATOMIC_DQ,
                KEY_TAIL, UPCAST, PRECISION, TMA, TMA_DQ,
            )

    # d(score)/d(q.k) is the softmax scale, times 1 - tanh^2 with a softcap (that factor is already in dS).
    dk *= sm_scale
    dk_ptrs = _row_ptrs(DK, off_z, off_hk, k_start64, stride_dkz, stride_dkh, stride_dkn, offs_n, offs_d)
    dv_ptrs = _row_ptrs(DV, off_z, off_hk, k_start64, stride_dvz, stride_dvh, stride_dvn, offs_n, offs_d)
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attn_bwd_dq_inner(
    dq, q, do, lse_hi, lse_lo, delta,
    k_ptrs, v_ptrs, stride_kn, stride_vn, off_z, off_hk,
    offs_m, offs_n, offs_d, lo, hi, N_K, diag, qk_scale,
    cap_in, cap_out, alibi, win_l, win_r, seed, bh, dropout_p, dropout_scale,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    MASKED: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
    SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr,
):
    # TMA: k_ptrs, v_ptrs are tensor descriptors (zero fill past the sequence).
    if not TMA:
        k_ptrs += lo * stride_kn
        v_ptrs += lo * stride_vn
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        if MASKED:
            kv_mask = (cols[:, None] < N_K) & (offs_d[None, :] < HEAD_DIM)
        else:
            kv_mask = offs_d[None, :] < HEAD_DIM
        if TMA:
            k = k_ptrs.load([off_z, off_hk, start_n, 0]).reshape(BLOCK_N, BLOCK_D)
            v = v_ptrs.load([off_z, off_hk, start_n, 0]).reshape(BLOCK_N, BLOCK_D)
        else:
            k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
            v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
        s, t = _scores(_dot(q, tl.trans(k), UPCAST, PRECISION), offs_m[:, None], cols[None, :], diag, qk_scale,
                       cap_in, cap_out, alibi, SOFTCAP, ALIBI)
        p = _prob(s, lse_hi[:, None], lse_lo[:, None], PRECISION)
        if MASKED:
            p = tl.where(_visible(offs_m[:, None], cols[None, :], N_K, diag, win_l, win_r, HAS_LEFT, HAS_RIGHT),
                         p, 0.0)
        dp = _dot(do, tl.trans(v), UPCAST, PRECISION)
        if DROPOUT:
            keep = _dropout_keep(seed, bh, offs_m[:, None], cols[None, :], dropout_p)
            dp = tl.where(keep, dp * dropout_scale, 0.0)
        ds = p * (dp - delta[:, None])
        if SOFTCAP:
            ds *= 1.0 - t * t
        dq = _dot(ds.to(k.dtype), k, UPCAST, PRECISION, dq)
        if not TMA:
            k_ptrs += BLOCK_N * stride_kn
            v_ptrs += BLOCK_N * stride_vn
    return dq


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA, CU_Q, CU_K, ALIBI_SLOPES, SEED,
    sm_scale, cap_in, cap_out, dropout_p, dropout_scale,
    stride_qz, stride_qh, stride_qm,
    stride_kz, stride_kh, stride_kn,
    stride_vz, stride_vh, stride_vn,
    stride_doz, stride_doh, stride_dom,
    stride_dqz, stride_dqh, stride_dqm,
    stride_lz, stride_lh, stride_az,
    H, GROUP, N_Q, N_K, win_l, win_r,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    VARLEN: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
    SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr,
):
    """dQ for one query block of one head (deterministic mode). Grid: (cdiv(max seqlen_q, BLOCK_M), H, batch).

    TMA: K and V are tensor descriptors over (batch, kv heads, seqlen_k, head dim), blocks (1, 1, BLOCK_N, BLOCK_D).
    """
    start_m, off_z, off_h = _query_program(HAS_LEFT, HAS_RIGHT)
    start_m = start_m * BLOCK_M
    off_zh = off_z * H + off_h
    off_hk = off_h // GROUP

    if VARLEN:
        q_start = tl.load(CU_Q + off_z)
        N_Q = tl.load(CU_Q + off_z + 1) - q_start
        k_start = tl.load(CU_K + off_z)
        N_K = tl.load(CU_K + off_z + 1) - k_start
        if start_m >= N_Q:
            return
    else:
        q_start = 0
        k_start = 0
    q_start64 = q_start.to(tl.int64) if VARLEN else 0
    k_start64 = k_start.to(tl.int64) if VARLEN else 0

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_mask = offs_m < N_Q
    qd_mask = row_mask[:, None] & (offs_d[None, :] < HEAD_DIM)
    q_ptrs = _row_ptrs(Q, off_z, off_h, q_start64, stride_qz, stride_qh, stride_qm, offs_m, offs_d)
    do_ptrs = _row_ptrs(DO, off_z, off_h, q_start64, stride_doz, stride_doh, stride_dom, offs_m, offs_d)
    q = tl.load(q_ptrs, mask=qd_mask, other=0.0)
    do = tl.load(do_ptrs, mask=qd_mask, other=0.0)
    row_offset = off_z.to(tl.int64) * stride_lz + off_h.to(tl.int64) * stride_lh + q_start
    lse_hi, lse_lo = _lse_log2(tl.load(LSE + row_offset + offs_m, mask=row_mask, other=float("inf")), PRECISION)
    delta = tl.load(DELTA + row_offset + offs_m, mask=row_mask, other=0.0)
    if TMA:
        k_ptrs = K
        v_ptrs = V
    else:
        k_ptrs = _row_ptrs(K, off_z, off_hk, k_start64, stride_kz, stride_kh, stride_kn, offs_n, offs_d)
        v_ptrs = _row_ptrs(V, off_z, off_hk, k_start64, stride_vz, stride_vh, stride_vn, offs_n, offs_d)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    qk_scale = sm_scale * LOG2E
    alibi = 0.0
    if ALIBI:
        alibi = tl.load(ALIBI_SLOPES + off_z * stride_az + off_h).to(tl.float32) * LOG2E
    seed = 0
    if DROPOUT:
        seed = tl.load(SEED)

    diag = N_K - N_Q
    lo, a, b, hi = _key_ranges(start_m, N_K, diag, win_l, win_r, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT)
    if HAS_LEFT:
        dq = _attn_bwd_dq_inner(
            dq, q, do, lse_hi, lse_lo, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, off_z, off_hk,
            offs_m, offs_n, offs_d, lo, a, N_K, diag, qk_scale,
            cap_in, cap_out, alibi, win_l, win_r, seed, off_zh, dropout_p, dropout_scale,
            HEAD_DIM, BLOCK_N, BLOCK_D, True, HAS_LEFT, HAS_RIGHT, SOFTCAP, ALIBI, DROPOUT, UPCAST, PRECISION, TMA,
        )
    dq = _attn_bwd_dq_inner(
        dq, q, do, lse_hi, lse_lo, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, off_z, off_hk,
        offs_m, offs_n, offs_d, a, b, N_K, diag, qk_scale,
        cap_in, cap_out, alibi, win_l, win_r, seed, off_zh, dropout_p, dropout_scale,
        HEAD_DIM, BLOCK_N, BLOCK_D, False, HAS_LEFT, HAS_RIGHT, SOFTCAP, ALIBI, DROPOUT, UPCAST, PRECISION, TMA,
    )
    dq = _attn_bwd_dq_inner(
        dq, q, do, lse_hi, lse_lo, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, off_z, off_hk,
        offs_m, offs_n, offs_d, b, hi, N_K, diag, qk_scale,
        cap_in, cap_out, alibi, win_l, win_r, seed, off_zh, dropout_p, dropout_scale,
        HEAD_DIM, BLOCK_N, BLOCK_D, True, HAS_LEFT, HAS_RIGHT, SOFTCAP, ALIBI, DROPOUT, UPCAST, PRECISION, TMA,
    )
    dq *= sm_scale
    dq_ptrs = _row_ptrs(DQ, off_z, off_h, q_start64, stride_dqz, stride_dqh, stride_dqm, offs_m, offs_d)
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=qd_mask)
