"""FlashAttention-2 forward kernel (portable path: interpreter, Turing, Ampere, Ada, Hopper, Blackwell).

Masks follow flash-attn >= 2.1 and are aligned to the bottom-right corner: with ``diag = seqlen_k - seqlen_q``,
query row ``i`` sees key ``j`` iff ``i + diag - left <= j <= i + diag + right``, where a causal mask is ``right = 0``
and a missing bound (window size -1) is infinite. For causal, seqlen_q=5, seqlen_k=3 (rows i, columns j; diag=-2)::

    . . .      rows 0-1 see no key: output 0, lse +inf (as flash-attn)
    . . .
    1 . .
    1 1 .
    1 1 1

Features are constexpr-specialised: a call that uses no window, softcap, ALiBi, dropout or variable lengths
compiles to the dense kernel with none of their code.

- Variable length (VARLEN): sequences packed along one token axis; ``CU_Q``/``CU_K`` hold the cumulative lengths
  (int32, batch + 1) and each program reads its sequence's start and length from them.
- Softcap: ``score = softcap * tanh(scale * q.k / softcap)`` (Gemma 2), before ALiBi and the masks.
- ALiBi: ``score += -slope * |i + diag - j|``, one fp32 slope per query head (and batch).
- Dropout: the kept probabilities are rescaled by 1 / (1 - p); the keep mask of element (batch * nheads + head,
  i, j) is a pure function of the seed and those coordinates (Philox4x32-7, one counter per element), so the
  backward regenerates it tile by tile whatever its tile sizes.
"""

import triton
import triton.language as tl

# exp2 is one MUFU instruction; exp is exp2 plus a multiply. Folding 1/ln(2) into the softmax scale lets the
# inner loop use exp2 directly.
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
PHILOX_ROUNDS = tl.constexpr(7)


@triton.jit
def _row_ptrs(base, off_z, off_h, start, stride_z, stride_h, stride_m, rows, offs_d):
    """Pointers to rows ``start + rows`` (columns ``offs_d``) of head ``off_h`` of batch ``off_z``: 64-bit scalar
    batch, head and sequence-start offsets, 32-bit offsets inside the sequence (64-bit per-element offsets stop the
    MMA pipelining on sm_90: 96 warpgroup fences against 14 in the dK/dV kernel)."""
    return base + off_z.to(tl.int64) * stride_z + off_h.to(tl.int64) * stride_h + start * stride_m \
        + rows[:, None] * stride_m + offs_d[None, :]


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr, PRECISION: tl.constexpr, acc=None):
    """a @ b (+ acc) in fp32: accumulated inside the MMA on tensor cores; for IEEE fp32 (FMA, one long chain
    per element if accumulated inside) each tile's product is summed first, then added, which keeps the rounding
    error of long reductions (dV over thousands of query rows) near cuBLAS's."""
    # Triton's interpreter computes bf16 tl.dot wrongly; the launcher sets UPCAST only there.
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if PRECISION == "ieee" and acc is not None:
        # Written as a subtraction on purpose: Triton's combine pass folds ``acc + dot(a, b)`` back into
        # ``dot(a, b, acc)``, the single long chain this avoids (it matches additions only).
        return acc - (-tl.dot(a, b, input_precision=PRECISION))
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _lse_log2(lse, PRECISION: tl.constexpr):
    """A row vector of natural-log LSEs in log2 units, as hi + lo fp32 parts for _prob. For fp32 inputs (IEEE
    dots) the conversion runs in fp64 and keeps its rounding error in ``lo``: in fp32 alone, rounding at |x| ~ 15
    (about 1e-6) costs every P of the row several ulp. Elsewhere lo = 0 (2-byte inputs do not see it)."""
    if PRECISION == "ieee":
        finite = lse < float("inf")  # rows that see no key keep hi = +inf (P = 0), lo = 0
        wide = tl.where(finite, lse, 0.0).to(tl.float64) * 1.4426950408889634
        hi = wide.to(tl.float32)
        lo = (wide - hi.to(tl.float64)).to(tl.float32)
        hi = tl.where(finite, hi, float("inf"))
    else:
        hi = lse * LOG2E
        lo = tl.zeros_like(hi)
    return hi, lo


@triton.jit
def _prob(s, hi, lo, PRECISION: tl.constexpr):
    """P = 2^(score - lse) from scores and the LSE in log2 units (hi + lo, from _lse_log2), broadcastable."""
    if PRECISION == "ieee":
        x = (s - hi) - lo  # s - hi is exact near the row maximum (Sterbenz), where P matters
    else:
        x = s - hi
    return tl.math.exp2(x)


@triton.jit
def _tanh(x):
    # From one exp2; saturates cleanly to +-1 (exp2 overflows to inf or underflows to 0).
    return 1.0 - 2.0 / (tl.math.exp2(x * (2.0 * LOG2E)) + 1.0)


@triton.jit
def _scores(qk, i, j, diag, qk_scale, cap_in, cap_out, alibi, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr):
    """Raw q.k -> scores in log2 units (softcap, then ALiBi), and tanh of the softcap (for its derivative).

    ``i``/``j`` are query/key positions broadcastable to ``qk``; ``alibi`` is the head's slope times log2(e).
    """
    if SOFTCAP:
        t = _tanh(qk * cap_in)
        s = t * cap_out
    else:
        t = qk
        s = qk * qk_scale
    if ALIBI:
        s -= alibi * tl.abs(i + diag - j).to(tl.float32)
    return s, t


@triton.jit
def _visible(i, j, N_K, diag, win_l, win_r, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    """True where query ``i`` sees key ``j`` (in range, inside the window; causal is ``win_r = 0``)."""
    keep = j < N_K
    if HAS_RIGHT:
        keep = keep & (j <= i + diag + win_r)
    if HAS_LEFT:
        keep = keep & (j >= i + diag - win_l)
    return keep


@triton.jit
def _query_program(HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    """(query tile, batch, head) of a program of a query-tiled grid (cdiv(seqlen_q, BLOCK_M), heads, batch). With a
    right window and no left one (causal-like), later tiles see more keys: a head's longest tiles run first, so the
    last ones launched are short."""
    start_m = tl.program_id(0)
    if HAS_RIGHT and not HAS_LEFT:
        start_m = tl.num_programs(0) - 1 - start_m
    return start_m, tl.program_id(2), tl.program_id(1)


@triton.jit
def _dropout_keep(seed, bh, i, j, dropout_p):
    """Keep mask of dropout for rows ``i`` and columns ``j`` of score matrix ``bh``: P(keep) = 1 - dropout_p."""
    zero = (i * 0 + j * 0).to(tl.uint32)
    r, _, _, _ = tl.philox(seed, (zero + j).to(tl.uint32), (zero + i).to(tl.uint32), zero + bh.to(tl.uint32), zero,
                           PHILOX_ROUNDS)
    return tl.uint_to_uniform_float(r) >= dropout_p


@triton.jit
def _attn_fwd_inner(
    acc, l_i, m_i, q,
    k_ptrs, v_ptrs, stride_kn, stride_vn, off_z, off_hk,
    offs_m, offs_n, offs_d, lo, hi, N_K, diag, qk_scale,
    cap_in, cap_out, alibi, win_l, win_r, seed, bh, dropout_p,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    MASKED: tl.constexpr, EVEN_D: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
    SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr,
):
    # TMA: k_ptrs, v_ptrs are tensor descriptors; the copy engine fills rows past the sequence with zeros.
    if not TMA:
        k_ptrs += lo * stride_kn
        v_ptrs += lo * stride_vn
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        if TMA:
            k = tl.trans(k_ptrs.load([off_z, off_hk, start_n, 0]).reshape(BLOCK_N, BLOCK_D))
            v = v_ptrs.load([off_z, off_hk, start_n, 0]).reshape(BLOCK_N, BLOCK_D)
        # Only masked stages can touch the ragged tail of the key sequence.
        elif MASKED:
            k = tl.load(k_ptrs, mask=(cols[None, :] < N_K) & (offs_d[:, None] < HEAD_DIM), other=0.0)
            v = tl.load(v_ptrs, mask=(cols[:, None] < N_K) & (offs_d[None, :] < HEAD_DIM), other=0.0)
        elif EVEN_D:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        else:
            k = tl.load(k_ptrs, mask=offs_d[:, None] < HEAD_DIM, other=0.0)
            v = tl.load(v_ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
        qk, _ = _scores(_dot(q, k, UPCAST, PRECISION), offs_m[:, None], cols[None, :], diag, qk_scale,
                        cap_in, cap_out, alibi, SOFTCAP, ALIBI)
        if MASKED:
            qk = tl.where(_visible(offs_m[:, None], cols[None, :], N_K, diag, win_l, win_r, HAS_LEFT, HAS_RIGHT),
                          qk, float("-inf"))
            m_ij = tl.maximum(m_i, tl.max(qk, 1))
            # A row with no visible key so far keeps m = -inf; subtracting 0 instead keeps p = 0, not NaN.
            m_sub = tl.where(m_ij == float("-inf"), 0.0, m_ij)
        else:
            m_ij = tl.maximum(m_i, tl.max(qk, 1))
            m_sub = m_ij
        p = tl.math.exp2(qk - m_sub[:, None])
        alpha = tl.math.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:
            # The normaliser counts every probability; only the kept ones reach the output (rescaled at the end).
            p = tl.where(_dropout_keep(seed, bh, offs_m[:, None], cols[None, :], dropout_p), p, 0.0)
        acc = _dot(p.to(v.dtype), v, UPCAST, PRECISION, acc * alpha[:, None])
        m_i = m_ij
        if not TMA:
            k_ptrs += BLOCK_N * stride_kn
            v_ptrs += BLOCK_N * stride_vn
    return acc, l_i, m_i


@triton.jit
def _key_ranges(m0, N_K, diag, win_l, win_r, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    """Key ranges for query rows [m0, m0 + BLOCK_M): masked [lo, a), unmasked [a, b), masked [b, hi).

    Unmasked blocks are seen in full by every row of the block and lie inside the key sequence.
    """
    if HAS_RIGHT:
        hi = tl.minimum(tl.maximum(m0 + BLOCK_M + diag + win_r, 0), N_K)
        b = (tl.maximum(m0 + diag + win_r + 1, 0) // BLOCK_N) * BLOCK_N
    else:
        hi = N_K
        b = N_K
    if HAS_LEFT:
        lo = (tl.maximum(m0 + diag - win_l, 0) // BLOCK_N) * BLOCK_N
        a = tl.cdiv(tl.maximum(m0 + BLOCK_M - 1 + diag - win_l, 0), BLOCK_N) * BLOCK_N
    else:
        lo = 0
        a = 0
    lo = tl.minimum(lo, hi)
    a = tl.minimum(tl.maximum(a, lo), hi)
    b = tl.minimum(tl.maximum(tl.minimum(b, (N_K // BLOCK_N) * BLOCK_N), a), hi)
    return lo, a, b, hi


@triton.heuristics(
    {
        "EVEN_M": lambda args: not args["VARLEN"] and args["N_Q"] % args["BLOCK_M"] == 0,
        "EVEN_D": lambda args: args["HEAD_DIM"] == args["BLOCK_D"],
    }
)
@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE, CU_Q, CU_K, ALIBI_SLOPES, SEED,
    sm_scale, cap_in, cap_out, dropout_p, dropout_scale,
    stride_qz, stride_qh, stride_qm,
    stride_kz, stride_kh, stride_kn,
    stride_vz, stride_vh, stride_vn,
    stride_oz, stride_oh, stride_om,
    stride_lz, stride_lh, stride_az,
    H, GROUP, N_Q, N_K, win_l, win_r,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    VARLEN: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
    SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_D: tl.constexpr,
):
    """Forward attention: O = softmax(scores) V and LSE (natural log, fp32).

    Grid: (cdiv(max seqlen_q, BLOCK_M), H, batch). Query head h reads key/value head h // GROUP (GQA/MQA).
    Constexprs: HEAD_DIM (true head dim), BLOCK_D (next power of two), BLOCK_M, BLOCK_N (tile sizes), VARLEN
    (sequence starts and lengths from CU_Q/CU_K; N_Q/N_K are then unused), HAS_LEFT/HAS_RIGHT (window bounds
    win_l/win_r; causal is HAS_RIGHT with win_r = 0), SOFTCAP (cap_in = scale / softcap, cap_out = softcap *
    log2 e), ALIBI (slopes at ALIBI_SLOPES + batch * stride_az + head), DROPOUT (seed at SEED), UPCAST (dot in
    fp32, interpreter bf16 only), PRECISION (tl.dot input precision for fp32 inputs), EVEN_M/EVEN_D (no ragged
    tile along that axis), TMA (Q, K, V, O are 4-D tensor descriptors over (batch, heads, seqlen, head dim) with
    blocks (1, 1, tile, BLOCK_D), loaded by the copy engine; sm_90+, not with VARLEN). Rows that see no key get O = 0 and LSE = +inf, as in flash-attn.
    """
    start_m, off_z, off_h = _query_program(HAS_LEFT, HAS_RIGHT)
    off_zh = off_z * H + off_h
    off_hk = off_h // GROUP

    if VARLEN:
        q_start = tl.load(CU_Q + off_z)
        N_Q = tl.load(CU_Q + off_z + 1) - q_start
        k_start = tl.load(CU_K + off_z)
        N_K = tl.load(CU_K + off_z + 1) - k_start
        if start_m * BLOCK_M >= N_Q:
            return
    else:
        q_start = 0
        k_start = 0
    # Sequence starts as 64-bit scalars; offsets inside a sequence stay 32-bit (_row_ptrs).
    q_start64 = q_start.to(tl.int64) if VARLEN else 0
    k_start64 = k_start.to(tl.int64) if VARLEN else 0

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)

    if TMA:
        k_ptrs = K
        v_ptrs = V
        q = Q.load([off_z, off_h, start_m * BLOCK_M, 0]).reshape(BLOCK_M, BLOCK_D)
    else:
        q_ptrs = _row_ptrs(Q, off_z, off_h, q_start64, stride_qz, stride_qh, stride_qm, offs_m, offs_d)
        k_ptrs = K + off_z.to(tl.int64) * stride_kz + off_hk.to(tl.int64) * stride_kh \
            + k_start64 * stride_kn + offs_n[None, :] * stride_kn + offs_d[:, None]
        v_ptrs = _row_ptrs(V, off_z, off_hk, k_start64, stride_vz, stride_vh, stride_vn, offs_n, offs_d)
        if EVEN_M and EVEN_D:
            q = tl.load(q_ptrs)
        else:
            q = tl.load(q_ptrs, mask=(offs_m[:, None] < N_Q) & (offs_d[None, :] < HEAD_DIM), other=0.0)

    qk_scale = sm_scale * LOG2E
    alibi = 0.0
    if ALIBI:
        alibi = tl.load(ALIBI_SLOPES + off_z * stride_az + off_h).to(tl.float32) * LOG2E
    seed = 0
    if DROPOUT:
        seed = tl.load(SEED)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    diag = N_K - N_Q
    lo, a, b, hi = _key_ranges(start_m * BLOCK_M, N_K, diag, win_l, win_r, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT)
    if HAS_LEFT:
        acc, l_i, m_i = _attn_fwd_inner(
            acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, off_z, off_hk,
            offs_m, offs_n, offs_d, lo, a, N_K, diag, qk_scale, cap_in, cap_out, alibi, win_l, win_r,
            seed, off_zh, dropout_p, HEAD_DIM, BLOCK_N, BLOCK_D, True, EVEN_D, HAS_LEFT, HAS_RIGHT,
            SOFTCAP, ALIBI, DROPOUT, UPCAST, PRECISION, TMA,
        )
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, off_z, off_hk,
        offs_m, offs_n, offs_d, a, b, N_K, diag, qk_scale, cap_in, cap_out, alibi, win_l, win_r,
        seed, off_zh, dropout_p, HEAD_DIM, BLOCK_N, BLOCK_D, False, EVEN_D, HAS_LEFT, HAS_RIGHT,
        SOFTCAP, ALIBI, DROPOUT, UPCAST, PRECISION, TMA,
    )
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, off_z, off_hk,
        offs_m, offs_n, offs_d, b, hi, N_K, diag, qk_scale, cap_in, cap_out, alibi, win_l, win_r,
        seed, off_zh, dropout_p, HEAD_DIM, BLOCK_N, BLOCK_D, True, EVEN_D, HAS_LEFT, HAS_RIGHT,
        SOFTCAP, ALIBI, DROPOUT, UPCAST, PRECISION, TMA,
    )

    empty = l_i == 0.0
    scale = 1.0 / tl.where(empty, 1.0, l_i)
    if DROPOUT:
        scale *= dropout_scale
    acc = acc * scale[:, None]
    if PRECISION == "ieee":  # one rounding to fp32 (see _prob)
        lse = ((m_i.to(tl.float64) + tl.math.log2(l_i).to(tl.float64)) * 0.6931471805599453).to(tl.float32)
    else:
        lse = (m_i + tl.math.log2(l_i)) * LN2
    lse = tl.where(empty, float("inf"), lse)

    lse_ptrs = LSE + off_z.to(tl.int64) * stride_lz + off_h.to(tl.int64) * stride_lh + q_start + offs_m
    if EVEN_M:
        tl.store(lse_ptrs, lse)
    else:
        tl.store(lse_ptrs, lse, mask=offs_m < N_Q)
    if TMA:
        # Rows past the sequence are clipped by the copy engine.
        O.store([off_z, off_h, start_m * BLOCK_M, 0], acc.to(q.dtype).reshape(1, 1, BLOCK_M, BLOCK_D))
    else:
        o_ptrs = _row_ptrs(O, off_z, off_h, q_start64, stride_oz, stride_oh, stride_om, offs_m, offs_d)
        if EVEN_M and EVEN_D:
            tl.store(o_ptrs, acc.to(O.dtype.element_ty))
        else:
            tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=(offs_m[:, None] < N_Q) & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def _dropout_mask_kernel(SEED, MASK, H, N_Q, N_K, dropout_p, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The keep mask the attention kernels use, as int8 (batch * H, N_Q, N_K): for tests and debugging."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    bh = tl.program_id(2)
    keep = _dropout_keep(tl.load(SEED), bh, offs_m[:, None], offs_n[None, :], dropout_p)
    ptrs = MASK + bh.to(tl.int64) * N_Q * N_K + offs_m[:, None] * N_K + offs_n[None, :]
    tl.store(ptrs, keep.to(tl.int8), mask=(offs_m[:, None] < N_Q) & (offs_n[None, :] < N_K))
