"""FlashAttention-2 forward kernel (portable path: interpreter, Turing, Ampere, Ada, Hopper, Blackwell).

Causal alignment follows flash-attn >= 2.1: the mask is aligned to the bottom-right corner, so query row ``i``
sees key ``j`` iff ``j <= i + (seqlen_k - seqlen_q)``. For seqlen_q=5, seqlen_k=3 (rows i, columns j; diag=-2)::

    . . .      rows 0-1 see no key: output 0, lse +inf (as flash-attn)
    . . .
    1 . .
    1 1 .
    1 1 1

and for seqlen_q=2, seqlen_k=5 (diag=+3)::

    1 1 1 1 .
    1 1 1 1 1
"""

import triton
import triton.language as tl

# exp2 is one MUFU instruction; exp is exp2 plus a multiply. Folding 1/ln(2) into the softmax scale lets the
# inner loop use exp2 directly.
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr, PRECISION: tl.constexpr, acc=None):
    """a @ b (+ acc, accumulated inside the MMA) in fp32."""
    # Triton's interpreter computes bf16 tl.dot wrongly; the launcher sets UPCAST only there.
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _attn_fwd_inner(
    acc, l_i, m_i, q,
    k_ptrs, v_ptrs, stride_kn, stride_vn,
    offs_m, offs_n, offs_d, lo, hi, N_K, diag, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, MASKED: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    k_ptrs += lo * stride_kn
    v_ptrs += lo * stride_vn
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        # Only the masked stage can touch the ragged tail of the key sequence.
        if MASKED and not EVEN_N:
            k_mask = ((start_n + offs_n)[None, :] < N_K) & (offs_d[:, None] < HEAD_DIM)
            v_mask = ((start_n + offs_n)[:, None] < N_K) & (offs_d[None, :] < HEAD_DIM)
            k = tl.load(k_ptrs, mask=k_mask, other=0.0)
            v = tl.load(v_ptrs, mask=v_mask, other=0.0)
        elif EVEN_D:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        else:
            k = tl.load(k_ptrs, mask=offs_d[:, None] < HEAD_DIM, other=0.0)
            v = tl.load(v_ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
        qk = _dot(q, k, UPCAST, PRECISION) * qk_scale
        if MASKED:
            keep = (start_n + offs_n)[None, :] < N_K
            if IS_CAUSAL:
                keep = keep & ((start_n + offs_n)[None, :] <= offs_m[:, None] + diag)
            qk = tl.where(keep, qk, float("-inf"))
            m_ij = tl.maximum(m_i, tl.max(qk, 1))
            # A row with no visible key so far keeps m = -inf; subtracting 0 instead keeps p = 0, not NaN.
            m_sub = tl.where(m_ij == float("-inf"), 0.0, m_ij)
        else:
            m_ij = tl.maximum(m_i, tl.max(qk, 1))
            m_sub = m_ij
        p = tl.math.exp2(qk - m_sub[:, None])
        alpha = tl.math.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = _dot(p.to(v.dtype), v, UPCAST, PRECISION, acc * alpha[:, None])
        m_i = m_ij
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    return acc, l_i, m_i


@triton.heuristics(
    {
        "EVEN_M": lambda args: args["N_Q"] % args["BLOCK_M"] == 0,
        "EVEN_N": lambda args: args["N_K"] % args["BLOCK_N"] == 0,
        "EVEN_D": lambda args: args["HEAD_DIM"] == args["BLOCK_D"],
    }
)
@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE, sm_scale,
    stride_qz, stride_qh, stride_qm,
    stride_kz, stride_kh, stride_kn,
    stride_vz, stride_vh, stride_vn,
    stride_oz, stride_oh, stride_om,
    H, GROUP, N_Q, N_K,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr,
):
    """Forward attention: O = softmax(scale * Q K^T [+ causal mask]) V and LSE (natural log, fp32).

    Grid: (cdiv(N_Q, BLOCK_M), batch * H). Query head h reads key/value head h // GROUP (GQA/MQA).
    Constexprs: HEAD_DIM (true head dim), BLOCK_D (next power of two), BLOCK_M, BLOCK_N (tile sizes), IS_CAUSAL,
    UPCAST (dot in fp32, interpreter bf16 only), PRECISION (tl.dot input precision for fp32 inputs),
    EVEN_M/EVEN_N/EVEN_D (no ragged tile along that axis; computed from the arguments).
    Fully masked rows (causal with N_Q > N_K) get O = 0 and LSE = +inf, as in flash-attn.
    """
    start_m = tl.program_id(0)
    off_zh = tl.program_id(1)
    off_z = off_zh // H
    off_h = off_zh % H
    off_hk = off_h // GROUP

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)

    q_ptrs = Q + off_z.to(tl.int64) * stride_qz + off_h.to(tl.int64) * stride_qh \
        + offs_m[:, None] * stride_qm + offs_d[None, :]
    k_ptrs = K + off_z.to(tl.int64) * stride_kz + off_hk.to(tl.int64) * stride_kh \
        + offs_n[None, :] * stride_kn + offs_d[:, None]
    v_ptrs = V + off_z.to(tl.int64) * stride_vz + off_hk.to(tl.int64) * stride_vh \
        + offs_n[:, None] * stride_vn + offs_d[None, :]

    if EVEN_M and EVEN_D:
        q = tl.load(q_ptrs)
    else:
        q = tl.load(q_ptrs, mask=(offs_m[:, None] < N_Q) & (offs_d[None, :] < HEAD_DIM), other=0.0)

    qk_scale = sm_scale * LOG2E
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    diag = N_K - N_Q
    if IS_CAUSAL:
        # Keys this block's last row can see, and key blocks that every row of the block sees in full.
        hi = tl.minimum(tl.maximum(start_m * BLOCK_M + BLOCK_M + diag, 0), N_K)
        lo_mask = (tl.maximum(start_m * BLOCK_M + diag + 1, 0) // BLOCK_N) * BLOCK_N
        lo_mask = tl.minimum(lo_mask, (N_K // BLOCK_N) * BLOCK_N)
    else:
        hi = N_K
        lo_mask = (N_K // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
        offs_m, offs_n, offs_d, 0, lo_mask, N_K, diag, qk_scale,
        HEAD_DIM, BLOCK_N, IS_CAUSAL, False, EVEN_N, EVEN_D, UPCAST, PRECISION,
    )
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
        offs_m, offs_n, offs_d, lo_mask, hi, N_K, diag, qk_scale,
        HEAD_DIM, BLOCK_N, IS_CAUSAL, True, EVEN_N, EVEN_D, UPCAST, PRECISION,
    )

    empty = l_i == 0.0
    acc = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("inf"), (m_i + tl.math.log2(l_i)) * LN2)

    lse_ptrs = LSE + off_zh.to(tl.int64) * N_Q + offs_m
    o_ptrs = O + off_z.to(tl.int64) * stride_oz + off_h.to(tl.int64) * stride_oh \
        + offs_m[:, None] * stride_om + offs_d[None, :]
    if EVEN_M:
        tl.store(lse_ptrs, lse)
    else:
        tl.store(lse_ptrs, lse, mask=offs_m < N_Q)
    if EVEN_M and EVEN_D:
        tl.store(o_ptrs, acc.to(O.dtype.element_ty))
    else:
        tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=(offs_m[:, None] < N_Q) & (offs_d[None, :] < HEAD_DIM))
