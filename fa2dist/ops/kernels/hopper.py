"""Warp-specialised FlashAttention kernels for Hopper (sm_90), written in Gluon: the forward and the backward.

Triton 3.6's automatic warp specialisation does not take these loops on sm_90, so these kernels give the warps their
roles themselves (as FlashAttention-3 does):

- a **load partition** (one warp) copies the tiles a program keeps (Q in the forward and the dQ pass, K and V in the
  dK/dV kernels) once, and streams the others through a ring of ``STAGES`` shared-memory buffers with the Tensor
  Memory Accelerator; mbarriers say "landed" and "free again";
- two to four **compute partitions** (one warpgroup each) issue the asynchronous warpgroup MMAs and the softmax
  work, each at its own pace. In the forward each owns 64 query rows: it issues tile j's q.k product, then tile
  j-1's P V product, and computes tile j's softmax while the tensor cores run P V (P stays in registers; the exponent
  is one FMA, exp2(s * scale - max); it becomes 16-bit once the last P V has read the previous P's registers).
  Causal: each warpgroup stops at the last key tile its own rows see (the program loads those of its last rows).
  The backward kernels are described above each one.

Dense attention (causal or not, bottom-right aligned as the portable kernels) and sliding windows: a right bound is
the causal diagonal moved RIGHT keys on (CAUSAL), a left bound (HAS_LEFT) drops keys more than LEFT before it; only
the key tiles (backward: query tiles) within a tile's band load, and the tiles that cross either edge are masked.
fp16/bf16, a positive softmax scale, the head dims and lengths of the tables below (a window bounded on both sides
takes the tiles of its width), 4-D tensor descriptors over (batch, heads, seqlen, head dim): rows past a sequence
load as zeros and are clipped on store. Packed sequences (VARLEN) too: the descriptors see the packed tokens as one
batch item, rows read past a sequence's end are masked, and the rows of a tile that crosses the end are stored one by
one. Everything else (softcap, ALiBi, dropout, other head dims, other GPUs) runs the portable kernels in
``forward.py`` and ``backward.py``. Gluon has no interpreter: these kernels run on an sm_90 GPU only, and CPU tests
cross-compile them.
"""

from triton._C.libtriton import ir
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language._core import builtin
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

#: (head dim, causal (None: either), shortest seqlen_k, (BLOCK_M, BLOCK_N, STAGES, CTAS)): the calls this kernel runs,
#: its tiles and the programs an SM runs at once (the last matching row wins). BLOCK_M is 64 rows per computing
#: warpgroup: 128 (two), 192 (three) or 256 (four). CTAS 2 launches each program with few enough registers that two
#: fit on an SM (``ws_launch_options``).
#: Timed on an H100 and an H200 (bf16, 16k tokens, 2026-11-26; benchmarks/results/h100-2026-11-26-ws,
#: h200-2026-11-26-ws): at d128, 128x128 with 3 stages was fastest at every length (224 KiB of shared memory, of sm_90's
#: 227 KiB); 2 stages (10-15%; before K buffers came free apart from V, below), 64-key tiles (4-11%) and ping-pong
#: ordering of the warpgroups' MMAs (-4% to +1%) were not faster. At d64 (kernel time from CUDA-graph replays,
#: benchmarks/results/h100-2026-11-26-skip, after causal warpgroups began to stop at their own last tile): from 2k keys
#: one program of 192x128 tiles with 3 stages (benchmarks/results/h100-2026-11-26-bias: against 192x64 with 4 stages
#: +6-9% at 2k, +8-11% from 4k without a mask; causal level at 2k, +5-9% from 4k; 192x128 spilled until each P waits for
#: the last P V, below; 2 stages 3-13% slower than 3); below 2k two programs of 128x64 tiles with 3 stages (occ2.json:
#: against the Triton forward +7-10% at 1k without a mask, +14-17% causal; against one 192-row program of 64-key tiles
#: -2% to -5% at 2k without a mask, level to 11% slower from 4k; one 192x128 program is 3-30% slower at 1k). At d256
#: (benchmarks/results/h100-2026-11-26-fwd256), 128x32 with 4 stages (192 KiB) against the Triton forward: +30-45% at
#: 1k, -1% to +4% at 4k and 16k causal, -1% to -4% at 16k without a mask, over two runs; 128x64 with 2 stages (before K
#: buffers came free apart from V) and 128x32 with 3 or 5 were not faster. d64 with 256-row tiles (four computing
#: warpgroups at 112-120 registers, each K and V tile read once for 256 rows: half the L2 traffic of two 128-row
#: programs) against the rows before, on an H100 (2026-11-27, benchmarks/results/h100-2026-11-27-rows256, medians of 3
#: interleaved rounds, two runs): without a mask +11-18% at 512-1.5k keys (6 stages; 4 and 5 within 3% of 6), level at
#: 2k and 1-2% slower at 4k; causal level at 1k, +6-7% at 1.5k, +10% at 2k and +2-3% at 4k (4 stages), 2-5% slower at
#: 16k. d256 since each K buffer comes free apart from its V buffer (``ws_k_free``; 2026-11-27,
#: benchmarks/results/h100-2026-11-27-kfree): 128x64 with 2 stages, +19-33% over 128x32 with 4 at 1k-16k, causal or not;
#: d128 up to 2k keys 2 stages, whose spare shared memory holds an output buffer (``WS_OUTPUT_BUFFER``): +5-9% at 1k to
#: 2k, causal or not (3 stages past 2k: 2 stages with the output buffer were 8% slower at 4k). d64 since two programs
#: per SM issue one wgmma product at a time (``ws_launch_options``' OVERLAP_PV; 2026-11-27,
#: benchmarks/results/h100-2026-11-27-pvfirst, tiles.json): causal below 2k keys, +4% at 1.5k over 256-row tiles
#: (level at 2k; 1-3% slower at 1k without a mask and at 4k causal, 6% at 4k without a mask). Past 2k causal, on the
#: counter-drawn grid (``WS_DYNAMIC``), 6 stages: +4% at 4k against 4 stages with one tile a program (grid4k.json;
#: 4 stages on that grid +1.5%, 6 stages with one tile a program level). d64 without a mask from 1280 keys (2026-11-27,
#: benchmarks/results/h100-2026-11-27-d64rows192, medians of per-round ratios over 5 interleaved rounds, on the
#: counter-drawn grid, ``WS_DYNAMIC``): 192x128 in 3 stages against 256x64 in 6, +2% at 1280, +8% at 1408, +7% and +10%
#: at 1536 (two runs), +3% at 1792 and 2000; level at 1k (0.98x and 1.01x), 8-11% slower at 512 (4 and 5 stages no
#: faster than 3).
WS_TILES = (
    (64, False, 0, (256, 64, 6, 1)),
    (64, False, 1280, (192, 128, 3, 1)),
    (64, True, 0, (128, 64, 3, 2)),
    (64, True, 2048, (256, 64, 4, 1)),
    (64, True, 2049, (256, 64, 6, 1)),
    (64, True, 4097, (192, 128, 3, 1)),
    (128, None, 0, (128, 128, 2, 1)),
    (128, None, 2049, (128, 128, 3, 1)),
    (256, None, 0, (128, 64, 2, 1)),
)


#: (head dim, longest seqlen_k): causal forwards that interleave the query tiles of 4 (batch, head) pairs
#: (``_query_program``): where a head's K and V take at most 4 MiB, so that the four heads' stay well within the L2
#: cache. Timed on an H100 (bf16, 16k tokens, 2026-11-26; benchmarks/results/h100-2026-11-26-order, CUDA-graph
#: replays, medians of 4 interleaved rounds), against head by head: d64 +4% at 4k, +8% at 16k, level at 1k and 2k;
#: d128 +4% at 4k, +5% at 8k, level at 1k; d128 at 16k (8 MiB) read 2% slower in eager timings: not interleaved. The
#: backward kernels keep head by head: interleaved, they spilled more and were level or 1-7% slower.
WS_INTERLEAVE = ((64, 16384), (128, 8192))


def ws_interleave(head_dim: int, seqlen_k: int) -> int:
    """How many (batch, head) pairs a causal forward's grid interleaves (1: head by head)."""
    return 4 if any(head_dim == dim and seqlen_k <= longest for dim, longest in WS_INTERLEAVE) else 1


#: (head dim, causal, longest seqlen_k): the forwards that run a persistent grid (``attn_fwd_ws_kernel``'s
#: PERSISTENT): as many programs as run on the GPU at once, each taking every so-many-th query tile of the same order.
#: The loading warp then fetches a tile's first keys while the warpgroups finish the tile before, and each
#: warpgroup's Q once its output has left the buffer. Timed on an H100 (bf16, 16k tokens, 2026-11-26;
#: benchmarks/results/h100-2026-11-26-persist, CUDA-graph replays, medians of 3-4 interleaved rounds, four A/Bs),
#: against one tile a program: d128 without a mask +5-7% at 1k, +1-3% at 2k, -2% to +3% at 4k, 0-2% at 16k. Not
#: taken: causal (+7-8% at 1k, but level at 2k and 28% slower at 4k, where the programs' shares of tiles of unequal
#: length no longer even out), d256 (-4% to +2% at 1k), d64 (2-4% slower at 1k).
WS_PERSISTENT = ((128, False, 1 << 31),)


def ws_persistent(head_dim: int, causal: bool, seqlen_k: int) -> bool:
    """Whether this forward runs a persistent grid (``WS_PERSISTENT``)."""
    return any(head_dim == dim and causal == c and seqlen_k <= longest for dim, c, longest in WS_PERSISTENT)


#: (head dim, causal, longest seqlen_k): the forwards whose persistent programs draw their tiles from a counter
#: (``attn_fwd_ws_kernel``'s DYNAMIC; they take precedence over ``WS_PERSISTENT``): the tiles go out in launch order
#: (longest first where causal), each to whichever program comes free, so that causal grids stay balanced where a
#: fixed share of tiles did not. Timed on an H100 (bf16, 16k tokens, 2026-11-27; benchmarks/results/
#: h100-2026-11-27-dynamic, CUDA-graph replays, medians of 3 interleaved rounds, two runs), against the grids before:
#: d64 and d128 from 512 to 2k keys +1-5% (d64 1k without a mask +2% and -2%; d128 without a mask against the fixed
#: persistent grid); d128 at 4k and 16k level; d64 from 4k causal 2-4% slower (its 192x128 kernel spills on any
#: persistent grid); d256 level to 3% slower. d64 causal at 2k keys, with 256-row tiles: +2% (h100-2026-11-27-rows256);
#: up to 4k with 256-row tiles in 6 stages (``WS_TILES``; h100-2026-11-27-pvfirst/grid4k.json): +4% at 4k. d64
#: without a mask from 2k to 4k keys (192x128 tiles; h100-2026-11-27-dyn64, medians of per-round ratios over 5 rounds,
#: on an H100 and an H200): +11% and +8% at 2k, +6% and +5% at 3k, +5% and +4% at 4k; level at 8k, 6-7% slower at 16k.
WS_DYNAMIC = ((64, False, 4096), (64, True, 4096), (128, False, 2048), (128, True, 2048))


#: (head dim, causal, shortest seqlen_k): the persistent forwards (``WS_PERSISTENT``, not ``WS_DYNAMIC``) that share
#: the query tiles past their last whole round out by keys (``attn_fwd_ws_kernel``'s SPLIT_TAIL): 16k tokens at d128
#: make 2048 query tiles of 128 rows, 15.5 rounds of the H100's 132 programs, so in the last round half the SMs idle.
#: Timed on an H100 and an H200 (bf16, 16k tokens, 2026-11-27, benchmarks/results/h100-2026-11-27-tail, medians of
#: per-round ratios against whole tiles): H100, 30 rounds of alternating graph replays, +1.5% at 4k, +2.5% at 8k,
#: +2.3% at 16k (the same code on both sides read 0.992); H200 +3.5%, +2.4%, +1.7%; an H100 run of 7 noisy rounds
#: 0.965x, 1.077x, 1.030x. A split whose parts a second launch merged was not faster (h100-2026-11-27-split). Not
#: on the counter-drawn grids, whose programs finish at spread-out times (that try: 3-11% slower there).
WS_SPLIT_TAIL = ((128, False, 2049),)


def ws_split_tail(head_dim: int, causal: bool, seqlen_k: int, tiles: int, programs: int) -> bool:
    """Whether this persistent forward of ``tiles`` query tiles on ``programs`` programs splits its tail
    (``WS_SPLIT_TAIL``): only where the tiles leave a last round part-filled."""
    return tiles > programs and tiles % programs != 0 and any(
        head_dim == dim and causal == c and seqlen_k >= shortest for dim, c, shortest in WS_SPLIT_TAIL)


def ws_dynamic(head_dim: int, causal: bool, seqlen_k: int) -> bool:
    """Whether this forward runs a persistent grid whose programs draw their tiles from a counter (``WS_DYNAMIC``)."""
    return any(head_dim == dim and causal == c and seqlen_k <= longest for dim, c, longest in WS_DYNAMIC)


def ws_launch_options(block_m: int, ctas: int) -> dict:
    """The forward's register split and what it allows: with two programs per SM every thread starts with at most 80
    registers (a program's 384 threads, loading warp padded to a warpgroup, take half the register file); the second
    computing warpgroup then takes 112, the first the 104 left after the loading warp's 24. With four computing
    warpgroups (640 threads) each thread starts with 96; three take 112 and the first the 120 left. Otherwise 240 for
    each of two computing warpgroups (160 for each of three).

    OVERLAP_PV (``attn_fwd_ws_kernel``): whether a warpgroup keeps tile i-1's P V product in flight while tile i's
    softmax runs. That takes the scores, the output accumulator and P at once, which 104 registers do not hold: with
    two programs per SM ptxas then waited for every wgmma instruction (its C7512), and issuing one product at a time
    instead was 8.6-13.5% faster at d64 1k causal and 6.6-9.8% at 512, bitwise equal (H100, bf16, 16k tokens, 2026-11-27,
    two runs: benchmarks/results/h100-2026-11-27-pvfirst)."""
    if ctas == 2:
        assert block_m == 128, "two programs per SM are written for two computing warpgroups"
        return dict(REGS=112, maxnreg=80, OVERLAP_PV=False)
    if block_m == 256:
        return dict(REGS=112, maxnreg=96, OVERLAP_PV=True)
    return dict(REGS=240 if block_m == 128 else 160, OVERLAP_PV=True)


#: (head dim, longest seqlen_k): the forwards that stage their output in a buffer of their own
#: (``attn_fwd_ws_kernel``'s O_BUF) rather than in each warpgroup's Q buffer: there, a persistent program's next Q
#: loads while a tile finishes, and the output's copy to memory is waited for only before the buffer's next use. d64
#: (benchmarks/results/h100-2026-11-27-rows256), and d128 where its tiles have 2 stages (up to 2k keys,
#: h100-2026-11-27-kfree: with 3 stages d128 has no shared memory left for it); d256 has none.
WS_OUTPUT_BUFFER = ((64, 1 << 31), (128, 2048))


def ws_output_buffer(head_dim: int, seqlen_k: int) -> bool:
    """Whether this forward stages its output in a buffer of its own (``WS_OUTPUT_BUFFER``)."""
    return any(head_dim == dim and seqlen_k <= longest for dim, longest in WS_OUTPUT_BUFFER)


def ws_k_free(stages: int) -> bool:
    """Whether a forward whose ring has ``stages`` stages frees each K buffer once the q.k products have read it,
    apart from its V buffer, which frees after the P V product (``attn_fwd_ws_kernel``'s K_FREE): the next K then
    loads a whole softmax step earlier, which makes two stages enough. Timed on an H100 (bf16, 16k tokens,
    2026-11-27, benchmarks/results/h100-2026-11-27-kfree, CUDA-graph replays, medians of 3 interleaved rounds): d256
    with 128x64 tiles in 2 stages +19-33% over 128x32 in 4 at 1k-16k (its q.k products read a 64-row Q from shared
    memory half as often per key), where the same tiles without it were within 3% of 128x32; with 3 to 6 stages
    (d64, d128) -5% to +1%."""
    return stages == 2


#: The head dims whose forward keeps each thread's share of the row sums (``attn_fwd_ws_kernel``'s ROW_SHARES): the
#: quad's two shuffles and adds of every key tile move after the last one. Timed on an H100 (bf16, 16k tokens,
#: 2026-11-27, benchmarks/results/h100-2026-11-27-rowshares, CUDA-graph replays, medians of 5 interleaved rounds):
#: d64 +2.4% at 1k without a mask (faster in each round) and at 4k causal, +1.5% at 16k, level at 1k causal; d128
#: and d256 from -2% to +3%, not taken. Output errors against float64 equal to the quad's sums.
WS_ROW_SHARES = (64,)


def ws_row_shares(head_dim: int) -> bool:
    """Whether this forward keeps each thread's share of the row sums (``WS_ROW_SHARES``)."""
    return head_dim in WS_ROW_SHARES


def ws_tiles(head_dim: int, seqlen_k: int, causal: bool) -> tuple[int, int, int, int] | None:
    """The tiles (BLOCK_M, BLOCK_N, STAGES, CTAS) for this call, or None where it runs the Triton forward."""
    tiles = None
    for dim, c, shortest, row in WS_TILES:
        if dim == head_dim and c in (None, causal) and seqlen_k >= shortest:
            tiles = row
    return tiles


@builtin
def _tma_reduce_add(tensor_desc, coord, src, _semantic=None):
    """The copy engine adds the shared-memory tile ``src`` into the global tile at ``coord`` (``cp.reduce.async.bulk``,
    one bulk group: ``tma.store_wait`` waits for it). Gluon 3.6 builds this operation but has no function for it."""
    coord = _semantic._convert_to_ir_values(coord, require_i64=False)
    _semantic.builder.create_async_tma_reduce(ir.DESCRIPTOR_REDUCE_KIND.ADD, tensor_desc.handle, coord, src.handle)


LOG2E = gl.constexpr(1.4426950408889634)
LN2 = gl.constexpr(0.6931471805599453)


@gluon.jit
def _query_program(CAUSAL: gl.constexpr, INTERLEAVE: gl.constexpr = 1):
    """(query tile, batch, head) of a program of the forward's or the dQ pass's grid (cdiv(N_Q, BLOCK_M), heads,
    batch): ``_tile_coords`` of its linear index."""
    if not CAUSAL:
        return gl.program_id(0), gl.program_id(2), gl.program_id(1)
    n_t = gl.num_programs(0)
    n_h = gl.num_programs(1)
    pid = gl.program_id(0) + n_t * (gl.program_id(1) + n_h * gl.program_id(2))
    return _tile_coords(pid, n_t, n_h, gl.num_programs(2), CAUSAL, INTERLEAVE)


@gluon.jit
def _tile_coords(t, n_t, n_h, n_z, CAUSAL: gl.constexpr, INTERLEAVE: gl.constexpr):
    """(query tile, batch, head) of the ``t``-th of ``n_t`` query tiles x ``n_h`` heads x ``n_z`` batch items, in
    launch order: head by head, query tiles fastest. Causal: later tiles see more keys, so the longest tiles run first
    and the last ones launched are short. INTERLEAVE (batch, head) pairs run at a time, tile by tile: their longest
    tiles launch first, then their second-longest, and so on (1: head by head)."""
    if not CAUSAL:
        return t % n_t, t // (n_t * n_h), (t // n_t) % n_h
    if INTERLEAVE == 1:
        return n_t - 1 - t % n_t, t // (n_t * n_h), (t // n_t) % n_h
    first = t // (n_t * INTERLEAVE) * INTERLEAVE  # the group's first pair
    size = gl.minimum(n_h * n_z - first, INTERLEAVE)  # the last group may be smaller
    rank = t - first * n_t
    pair = first + rank % size
    return n_t - 1 - rank // size, pair // n_h, pair % n_h


@gluon.jit
def _load_partition(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars, free_bars,
                    first, step, n_mine, n_t, n_h, n_z, GROUP, N_Q, N_K, LEFT, RIGHT, BLOCK_M: gl.constexpr,
                    BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr, INTERLEAVE: gl.constexpr,
                    PERSISTENT: gl.constexpr, ids, COUNTER, DYNAMIC: gl.constexpr, HAS_LEFT: gl.constexpr, CU_Q, CU_K,
                    VARLEN: gl.constexpr, SPLIT_TAIL: gl.constexpr):
    """The forward's loading warp: for each of the program's ``n_mine`` query tiles (``first``, ``first + step``,
    ...), the tile's Q once and its K and V tiles through the ring, whose position carries over from tile to tile.
    DYNAMIC: the program's first tile is ``first``, each next one ``step`` past a draw from ``COUNTER``
    (``_next_tile``), handed to the warpgroups through ``ids``."""
    if DYNAMIC:
        total = n_t * n_h * n_z
        tile = first
        kv = 0  # K/V tiles loaded so far
        j = 0
        while tile < total:
            _put_tile_id(ids, j, tile)
            start_m, off_z, off_h = _tile_coords(tile, n_t, n_h, n_z, CAUSAL, INTERLEAVE)
            kv = _load_tile(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars,
                            free_bars, start_m, off_z, off_h, j, kv, GROUP, N_Q, N_K, LEFT, RIGHT, BLOCK_M,
                            BLOCK_N, STAGES, CAUSAL, PERSISTENT, HAS_LEFT)
            tile = _next_tile(COUNTER, step, total)
            j += 1
        # No tile left: the warpgroups read a tile past the last one (once their buffers are free) and stop.
        _put_tile_id(ids, j, tile)
        NUM_WG: gl.constexpr = q_smem.shape[0]
        for w in gl.static_range(NUM_WG):
            mbarrier.wait(q_free.index(w), (j & 1) ^ 1)
            mbarrier.arrive(q_bars.index(w))
    elif PERSISTENT:
        kv = 0  # K/V tiles loaded so far
        for j in range(n_mine):
            start_m, off_z, off_h = _tile_coords(first + j * step, n_t, n_h, n_z, CAUSAL, INTERLEAVE)
            kv = _load_tile(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars,
                            free_bars, start_m, off_z, off_h, j, kv, GROUP, N_Q, N_K, LEFT, RIGHT, BLOCK_M,
                            BLOCK_N, STAGES, CAUSAL, PERSISTENT, HAS_LEFT)
        if SPLIT_TAIL:
            full, n_units, tail, lo, hi = _tail_work(n_t * n_h * n_z, N_K, BLOCK_N)
            for s in range(_tail_count(lo, hi, n_units)):
                tile, key_lo, key_hi, writer = _tail_part(s, lo, hi, n_units)
                start_m, off_z, off_h = _tile_coords(full + tile, n_t, n_h, n_z, CAUSAL, INTERLEAVE)
                kv = _load_tile(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars,
                                free_bars, start_m, off_z, off_h, n_mine + s, kv, GROUP, N_Q, N_K, LEFT, RIGHT,
                                BLOCK_M, BLOCK_N, STAGES, CAUSAL, PERSISTENT, HAS_LEFT, 0, 0, key_lo, key_hi, True)
    else:
        start_m, off_z, off_h = _query_program(CAUSAL, INTERLEAVE)
        if VARLEN:
            q_start, k_start, n_q, n_k = _sequence(CU_Q, CU_K, off_z)
            if start_m * BLOCK_M < n_q:
                _load_tile(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars, free_bars,
                           start_m, 0, off_h, 0, 0, GROUP, n_q, n_k, LEFT, RIGHT, BLOCK_M, BLOCK_N, STAGES, CAUSAL,
                           PERSISTENT, HAS_LEFT, q_start, k_start)
        else:
            _load_tile(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars, free_bars,
                       start_m, off_z, off_h, 0, 0, GROUP, N_Q, N_K, LEFT, RIGHT, BLOCK_M, BLOCK_N, STAGES, CAUSAL,
                       PERSISTENT, HAS_LEFT)


@gluon.jit
def _sequence(CU_Q, CU_K, off_z):
    """Sequence ``off_z`` of a packed (variable-length) batch: (query start, key start, its query and key
    lengths)."""
    q_start = gl.load(CU_Q + off_z)
    k_start = gl.load(CU_K + off_z)
    return q_start, k_start, gl.load(CU_Q + off_z + 1) - q_start, gl.load(CU_K + off_z + 1) - k_start


@gluon.jit
def _store_rows(ptr, x, row0, n_rows, stride_m, NARROW: gl.constexpr = False):
    """Rows ``row0`` to ``row0 + n_rows`` (at most x's) of a packed tensor from the register tile ``x``, row by row
    (where the copy engine would write past a sequence's end, over the next one's rows); ``ptr`` points at the head's
    first element, rows ``stride_m`` apart, the columns contiguous. NARROW: the offsets inside the tile in 32 bits
    (the tile's first row's in 64), which cut the d128 dK/dV kernel's spills with a window and packing from 408 to
    244 bytes and made it 1.20x faster there (benchmarks/results/h100-2026-11-27-tail); in the d256 split-role kernel
    the same form spilled 1.2 KB, where 64-bit offsets spill none."""
    # Stored from the registers' own (wgmma) layout: a layout conversion would take shared memory, of which the
    # kernels with 3 stages have none left.
    rows = gl.arange(0, x.shape[0], layout=gl.SliceLayout(1, x.type.layout))
    cols = gl.arange(0, x.shape[1], layout=gl.SliceLayout(0, x.type.layout))
    if NARROW:
        ptr += row0.to(gl.int64) * stride_m
        gl.store(ptr + (rows[:, None] * stride_m + cols[None, :]), x, mask=rows[:, None] < n_rows)
    else:
        offs = (row0 + rows).to(gl.int64)[:, None] * stride_m + cols[None, :]
        gl.store(ptr + offs, x, mask=rows[:, None] < n_rows)


@gluon.jit
def _load_tile(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars, free_bars, start_m,
               off_z, off_h, j, kv, GROUP, N_Q, N_K, LEFT, RIGHT, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
               STAGES: gl.constexpr, CAUSAL: gl.constexpr, PERSISTENT: gl.constexpr, HAS_LEFT: gl.constexpr,
               q_start=0, k_start=0, key_lo=0, key_hi=0, KEY_RANGE: gl.constexpr = False):
    """Query tile ``start_m`` of head ``off_h`` (the program's ``j``-th): its Q and, from ring position ``kv`` on, its
    K and V tiles (those its rows see: from the first of its first row's window, HAS_LEFT). Persistent, its first
    keys load before its Q, which waits until each warpgroup's output of the tile before has left its Q buffer
    (``q_free``). Returns the ring position after the tile's keys. Packed sequences: Q and K rows start at ``q_start``
    and ``k_start``."""
    K_FREE: gl.constexpr = free_bars.shape[0] == 2 * STAGES  # (attn_fwd_ws_kernel's K_FREE)
    off_hk = off_h // GROUP
    m0 = start_m * BLOCK_M
    if KEY_RANGE:  # a part of the tile's keys: tiles key_lo to key_hi (_tail_part)
        lo = key_lo
        n_tiles = key_hi - key_lo
    else:
        lo = _first_key_tile(m0, N_K - N_Q - LEFT, BLOCK_N, HAS_LEFT)
        n_tiles = gl.maximum(_key_tiles(m0 + BLOCK_M, N_K - N_Q + RIGHT, N_K, BLOCK_N, CAUSAL) - lo, 0)
    if not PERSISTENT:
        _load_q(q_desc, q_smem, q_bars, q_free, j, off_z, off_h, q_start + m0, PERSISTENT)
    for i in range(kv, kv + n_tiles):
        if PERSISTENT:
            if i == kv + 1:
                _load_q(q_desc, q_smem, q_bars, q_free, j, off_z, off_h, m0, PERSISTENT)
        s = i % STAGES
        # A fresh barrier counts as having completed the phase before its first: the first round does not wait.
        phase = ((i // STAGES) & 1) ^ 1
        start_n = k_start + (i - kv + lo) * BLOCK_N
        if K_FREE:  # K's buffer comes free on its own, once the q.k products have read it
            mbarrier.wait(free_bars.index(STAGES + s), phase)
        else:
            mbarrier.wait(free_bars.index(s), phase)
        mbarrier.expect(k_bars.index(s), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [off_z, off_hk, start_n, 0], k_bars.index(s), k_smem.index(s))
        if K_FREE:
            mbarrier.wait(free_bars.index(s), phase)
        mbarrier.expect(v_bars.index(s), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [off_z, off_hk, start_n, 0], v_bars.index(s), v_smem.index(s))
    if PERSISTENT:
        if n_tiles < 2:
            _load_q(q_desc, q_smem, q_bars, q_free, j, off_z, off_h, m0, PERSISTENT)
    return kv + n_tiles


@gluon.jit
def _load_q(q_desc, q_smem, q_bars, q_free, j, off_z, off_h, m0, PERSISTENT: gl.constexpr):
    """The ``j``-th query tile of a program, each warpgroup's rows into its buffer (persistent: once it is free)."""
    NUM_WG: gl.constexpr = q_smem.shape[0]
    WG_M: gl.constexpr = q_desc.block_type.shape[2]
    for w in gl.static_range(NUM_WG):
        if PERSISTENT:
            mbarrier.wait(q_free.index(w), (j & 1) ^ 1)
        mbarrier.expect(q_bars.index(w), q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [off_z, off_h, m0 + w * WG_M, 0], q_bars.index(w), q_smem.index(w))


@gluon.jit
def _next_tile(COUNTER, step, total):
    """The next query tile of a DYNAMIC forward's program: ``step`` (the programs, which start with tiles 0 to step -
    1) past a draw from the launch's counter, so that the tiles go out in launch order to whichever program is free.
    Each program draws until a tile lies past the last one: ``total`` draws in all, the last of them ``total - 1``;
    the program that draws it sets the counter back to zero for the next launch on the stream."""
    drawn = gl.atomic_add(COUNTER, 1, sem="relaxed")
    if drawn == total - 1:
        gl.atomic_xchg(COUNTER, 0, sem="relaxed")
    return step + drawn


@gluon.jit
def _put_tile_id(ids, j, tile):
    """The loading warp hands the program's ``j``-th tile index to the warpgroups (slot j % 2 of ``ids``; they read
    it once the tile's Q barrier completes)."""
    ids.index(j % 2).store(gl.full([1], tile, gl.int32, gl.BlockedLayout([1], [32], [1], [0])))


@gluon.jit
def _get_tile_id(ids, j):
    """A computing warpgroup's read of the program's ``j``-th tile index (``_put_tile_id``)."""
    return gl.max(ids.index(j % 2).load(gl.BlockedLayout([1], [32], [4], [0])), 0)


@gluon.jit
def _key_tiles(rows_end, diag, N_K, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr):
    """The BLOCK_N-key tiles that query rows before ``rows_end`` see: all of them, or, causal, up to the diagonal of
    the last of those rows (``diag`` = N_K - N_Q)."""
    if CAUSAL:
        hi = gl.minimum(gl.maximum(rows_end + diag, 0), N_K)
    else:
        hi = N_K
    return gl.cdiv(hi, BLOCK_N)


@gluon.jit
def _first_key_tile(rows_start, diag_left, BLOCK_N: gl.constexpr, HAS_LEFT: gl.constexpr):
    """The first BLOCK_N-key tile that query rows from ``rows_start`` on see: with a left window bound (key j >= row
    i + ``diag_left``, diag_left = N_K - N_Q - left) the one holding the first row's first key, else 0."""
    if HAS_LEFT:
        return gl.maximum(rows_start + diag_left, 0) // BLOCK_N
    else:
        return 0


@gluon.jit
def _left_masked_tiles(rows_end, diag_left, BLOCK_N: gl.constexpr, HAS_LEFT: gl.constexpr):
    """How many BLOCK_N-key tiles from the first hold a key before the left window bound of some query row before
    ``rows_end`` (0 without a left bound): those need the mask."""
    if HAS_LEFT:
        return gl.cdiv(gl.maximum(rows_end - 1 + diag_left, 0), BLOCK_N)
    else:
        return 0


@gluon.jit
def _tile_masked(i, first_masked, left_masked, HAS_LEFT: gl.constexpr):
    """Whether key tile ``i`` needs the mask: from ``first_masked`` on (the diagonal or the keys' end), and with a
    left window bound before ``left_masked``."""
    if HAS_LEFT:
        return (i >= first_masked) | (i < left_masked)
    else:
        return i >= first_masked


@gluon.jit
def _release_tiles(k_bars, v_bars, free_bars, start, stop, STAGES: gl.constexpr):
    """A causal warpgroup's key tiles ``start`` to ``stop``, wholly past its rows: free their buffers once they have
    landed (arriving before would count towards the buffer's previous use)."""
    K_FREE: gl.constexpr = free_bars.shape[0] == 2 * STAGES  # (attn_fwd_ws_kernel's K_FREE)
    for i in range(start, stop):
        mbarrier.wait(k_bars.index(i % STAGES), (i // STAGES) & 1)
        mbarrier.wait(v_bars.index(i % STAGES), (i // STAGES) & 1)
        mbarrier.arrive(free_bars.index(i % STAGES))
        if K_FREE:
            mbarrier.arrive(free_bars.index(STAGES + i % STAGES))


@gluon.jit
def _softmax(s, m_i, l_i, qk_scale, rows, cols, start_n, N_K, diag, masked, CAUSAL: gl.constexpr,
             ROW_SHARES: gl.constexpr = False, diag_left=0, HAS_LEFT: gl.constexpr = False):
    """One tile's online-softmax step on raw q.k scores (row max ``m_i`` in scaled log2 units, ``qk_scale`` > 0):
    (P, new row max, new row sum, rescale of the old output). P = exp2(s * scale - m), one FMA per score.
    ROW_SHARES: ``l_i`` holds each thread's share of the row sums, [rows, 4] (``_row_shares``). Masked: keys past
    N_K, past ``diag`` from the row (CAUSAL) and before ``diag_left`` from it (HAS_LEFT) are dropped."""
    if masked:
        keep = cols[None, :] + start_n < N_K
        if CAUSAL:
            keep = keep & (cols[None, :] + start_n <= rows[:, None] + diag)
        if HAS_LEFT:
            keep = keep & (cols[None, :] + start_n >= rows[:, None] + diag_left)
        s = gl.where(keep, s, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
        # A row with no visible key so far keeps m = -inf; subtracting 0 instead keeps p = 0, not NaN.
        m_sub = gl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
        m_sub = m_new
    p = gl.exp2(s * qk_scale - m_sub[:, None])
    alpha = gl.exp2(m_i - m_sub)
    if ROW_SHARES:
        l_i = l_i * gl.convert_layout(alpha, gl.SliceLayout(1, l_i.type.layout))[:, None] + _row_shares(p)
    else:
        l_i = l_i * alpha + gl.sum(p, 1)
    return p, m_new, l_i, alpha


@gluon.jit
def _row_shares(x):
    """Each thread's share of the row sums of a wgmma-layout tile, [rows, 4]: the 4 threads of a quad hold
    interleaved pairs of columns (8j + 2t, 8j + 2t + 1), so the sum over j and the pair stays within the thread. The
    quad's shares are added once, after the last key tile, instead of with two shuffles for every tile."""
    return gl.sum(gl.sum(x.reshape([x.shape[0], x.shape[1] // 8, 4, 2]), 3), 1)


@gluon.jit
def _compute_partition(o_desc, LSE, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars, free_bars,
                       first, step, n_mine, n_t, n_h, n_z, N_Q, N_K, LEFT, RIGHT, qk_scale, stride_lz, stride_lh,
                       BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr,
                       CAUSAL: gl.constexpr, INTERLEAVE: gl.constexpr, PERSISTENT: gl.constexpr, WG: gl.constexpr,
                       ids, DYNAMIC: gl.constexpr, o_smem, O_BUF: gl.constexpr, OVERLAP_PV: gl.constexpr,
                       ROW_SHARES: gl.constexpr, HAS_LEFT: gl.constexpr, CU_Q, CU_K, O, stride_oh, stride_om,
                       VARLEN: gl.constexpr, PARTIAL, FLAGS, SPLIT_TAIL: gl.constexpr):
    """One warpgroup's rows of each of the program's query tiles (SPLIT_TAIL: then its parts of the tail's,
    ``_tail_work``)."""
    if DYNAMIC:
        total = n_t * n_h * n_z
        kv = 0  # K/V tiles of the ring used so far
        j = 0
        mbarrier.wait(q_bars.index(WG), 0)
        tile = _get_tile_id(ids, 0)
        while tile < total:
            start_m, off_z, off_h = _tile_coords(tile, n_t, n_h, n_z, CAUSAL, INTERLEAVE)
            kv = _attend_tile(o_desc, LSE, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars, free_bars,
                              start_m, off_z, off_h, j, kv, N_Q, N_K, LEFT, RIGHT, qk_scale, stride_lz, stride_lh,
                              BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL, PERSISTENT, WG, o_smem, O_BUF, OVERLAP_PV,
                              ROW_SHARES, HAS_LEFT)
            j += 1
            mbarrier.wait(q_bars.index(WG), j & 1)
            tile = _get_tile_id(ids, j)
    elif PERSISTENT:
        kv = 0  # K/V tiles of the ring used so far
        for j in range(n_mine):
            start_m, off_z, off_h = _tile_coords(first + j * step, n_t, n_h, n_z, CAUSAL, INTERLEAVE)
            kv = _attend_tile(o_desc, LSE, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars, free_bars,
                              start_m, off_z, off_h, j, kv, N_Q, N_K, LEFT, RIGHT, qk_scale, stride_lz, stride_lh,
                              BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL, PERSISTENT, WG, o_smem, O_BUF, OVERLAP_PV,
                              ROW_SHARES, HAS_LEFT)
        if SPLIT_TAIL:
            full, n_units, tail, lo, hi = _tail_work(n_t * n_h * n_z, N_K, BLOCK_N)
            for s in range(_tail_count(lo, hi, n_units)):
                tile, key_lo, key_hi, writer = _tail_part(s, lo, hi, n_units)
                start_m, off_z, off_h = _tile_coords(full + tile, n_t, n_h, n_z, CAUSAL, INTERLEAVE)
                kv = _attend_tile(o_desc, LSE, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars, free_bars,
                                  start_m, off_z, off_h, n_mine + s, kv, N_Q, N_K, LEFT, RIGHT, qk_scale, stride_lz,
                                  stride_lh, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL, PERSISTENT, WG, o_smem, O_BUF,
                                  OVERLAP_PV, ROW_SHARES, HAS_LEFT, key_lo=key_lo, key_hi=key_hi, writer=writer,
                                  tile_unit=tile * n_units, tail=tail, PARTIAL=PARTIAL, FLAGS=FLAGS, KEY_RANGE=True)
    else:
        start_m, off_z, off_h = _query_program(CAUSAL, INTERLEAVE)
        if VARLEN:
            q_start, k_start, n_q, n_k = _sequence(CU_Q, CU_K, off_z)
            if start_m * BLOCK_M < n_q:
                # The descriptors' one batch item (a tensor, as off_z is elsewhere).
                _attend_tile(o_desc, LSE, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars, free_bars, start_m,
                             off_z * 0, off_h, 0, 0, n_q, n_k, LEFT, RIGHT, qk_scale, stride_lz, stride_lh, BLOCK_M,
                             BLOCK_N, HEAD_DIM, STAGES, CAUSAL, PERSISTENT, WG, o_smem, O_BUF, OVERLAP_PV,
                             ROW_SHARES, HAS_LEFT, q_start, k_start, O, stride_oh, stride_om, VARLEN)
        else:
            _attend_tile(o_desc, LSE, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars, free_bars, start_m,
                         off_z, off_h, 0, 0, N_Q, N_K, LEFT, RIGHT, qk_scale, stride_lz, stride_lh, BLOCK_M, BLOCK_N,
                         HEAD_DIM, STAGES, CAUSAL, PERSISTENT, WG, o_smem, O_BUF, OVERLAP_PV, ROW_SHARES, HAS_LEFT)
    if O_BUF:
        tma.store_wait(0)  # the last output has left the buffer


@gluon.jit
def _attend_tile(o_desc, LSE, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars, free_bars, start_m, off_z, off_h,
                 j, kv, N_Q, N_K, LEFT, RIGHT, qk_scale, stride_lz, stride_lh, BLOCK_M: gl.constexpr,
                 BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr,
                 PERSISTENT: gl.constexpr, WG: gl.constexpr, o_smem, O_BUF: gl.constexpr, OVERLAP_PV: gl.constexpr,
                 ROW_SHARES: gl.constexpr, HAS_LEFT: gl.constexpr, q_start=0, k_start=0, O=None, stride_oh=0,
                 stride_om=0, VARLEN: gl.constexpr = False, key_lo=0, key_hi=0, writer=False, tile_unit=0, tail=0,
                 PARTIAL=None, FLAGS=None, KEY_RANGE: gl.constexpr = False):
    """Query rows ``WG * WG_M`` to ``(WG + 1) * WG_M`` of query tile ``start_m`` of head ``off_h``, the program's
    ``j``-th tile, whose keys start at position ``kv`` of the ring: from the warpgroup's Q buffer to O and LSE.
    Returns the ring position after the tile's keys. VARLEN: the sequence's rows start at ``q_start`` of the packed
    Q, O and LSE; a warpgroup whose rows cross its end stores them one by one into ``O`` (the head at
    ``stride_oh``, rows ``stride_om`` apart), not through the copy engine. KEY_RANGE
    (SPLIT_TAIL, no mask): key tiles ``key_lo`` to ``key_hi`` only; a ``writer`` leaves its unnormalised output in
    ``PARTIAL`` for the program that finishes the tile, which adds those of the programs before it
    (``_merge_partials``: the tile starts at unit ``tile_unit`` of ``tail``)."""
    WG_M: gl.constexpr = 64
    K_FREE: gl.constexpr = free_bars.shape[0] == 2 * STAGES  # (attn_fwd_ws_kernel's K_FREE)
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    dtype: gl.constexpr = q_smem.dtype

    cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    diag = N_K - N_Q + RIGHT  # causal (a right window bound): key j <= row i + diag
    diag_left = N_K - N_Q - LEFT  # HAS_LEFT: key j >= row i + diag_left
    s_init = gl.zeros([WG_M, BLOCK_N], gl.float32, layout=s_layout)
    q = q_smem.index(WG).reshape([WG_M, HEAD_DIM])
    m0 = start_m * BLOCK_M
    m_wg = m0 + WG * WG_M
    rows = m_wg + gl.arange(0, WG_M, layout=row_s)
    # The program loads the keys its rows see, tiles lo to hi; causal, with tiles narrower than the program, the last
    # of them may lie wholly past this warpgroup's rows, and with a left bound the first of them wholly before (both
    # skipped below). Tile i sits at ring position base + i. From tile first_masked on, a tile crosses the diagonal
    # (or the end of the keys) for some row of this warpgroup; before tile left_masked, its left bound.
    n_own = _key_tiles(m_wg + WG_M, diag, N_K, BLOCK_N, CAUSAL)
    if KEY_RANGE:
        n_tiles = key_hi - key_lo
        base = kv - key_lo
        own_lo = key_lo
        own_hi = key_hi
        left_masked = 0
    elif HAS_LEFT:
        lo = _first_key_tile(m0, diag_left, BLOCK_N, HAS_LEFT)
        hi = _key_tiles(m0 + BLOCK_M, diag, N_K, BLOCK_N, CAUSAL)
        n_tiles = gl.maximum(hi - lo, 0)
        base = kv - lo
        own_lo = gl.minimum(_first_key_tile(m_wg, diag_left, BLOCK_N, HAS_LEFT), hi)
        own_hi = gl.maximum(gl.minimum(n_own, hi), own_lo)
        left_masked = _left_masked_tiles(m_wg + WG_M, diag_left, BLOCK_N, HAS_LEFT)
        _release_tiles(k_bars, v_bars, free_bars, kv, base + own_lo, STAGES)
    else:
        n_tiles = _key_tiles(m0 + BLOCK_M, diag, N_K, BLOCK_N, CAUSAL)
        base = kv
        own_lo = 0
        own_hi = n_own
        left_masked = 0
    if CAUSAL:
        first_masked = gl.minimum(gl.maximum(m_wg + diag + 1, 0) // BLOCK_N, N_K // BLOCK_N)
    else:
        first_masked = N_K // BLOCK_N
    m_i = gl.full([WG_M], float("-inf"), gl.float32, layout=row_s)
    if ROW_SHARES:
        l_i = _row_shares(s_init)  # zeros, in the layout of the shares
    else:
        l_i = gl.zeros([WG_M], gl.float32, layout=row_s)
    acc = gl.zeros([WG_M, HEAD_DIM], gl.float32, layout=o_layout)

    # Wait for Q even when no key is visible: its buffer stages the output below.
    mbarrier.wait(q_bars.index(WG), j & 1)
    if own_hi > own_lo:
        g = base + own_lo
        mbarrier.wait(k_bars.index(g % STAGES), (g // STAGES) & 1)
        s = warpgroup_mma(q, k_smem.index(g % STAGES).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)), s_init,
                          use_acc=False, is_async=True)
        s = warpgroup_mma_wait(0, deps=(s,))
        if K_FREE:
            mbarrier.arrive(free_bars.index(STAGES + g % STAGES))
        p, m_i, l_i, alpha = _softmax(s, m_i, l_i, qk_scale, rows, cols, own_lo * BLOCK_N, N_K, diag,
                                      _tile_masked(own_lo, first_masked, left_masked, HAS_LEFT), CAUSAL, ROW_SHARES,
                                      diag_left, HAS_LEFT)
        p = p.to(dtype)
        for i in range(own_lo + 1, own_hi):
            g = base + i
            st = g % STAGES
            prev = (g - 1) % STAGES
            if OVERLAP_PV:
                # Tile i's scores ...
                mbarrier.wait(k_bars.index(st), (g // STAGES) & 1)
                mbarrier.wait(v_bars.index(prev), ((g - 1) // STAGES) & 1)
                s = warpgroup_mma(q, k_smem.index(st).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)), s_init,
                                  use_acc=False, is_async=True)
                # ... then tile i-1's P V, which runs on the tensor cores while this tile's softmax runs.
                acc = warpgroup_mma(gl.convert_layout(p, p_layout),
                                    v_smem.index(prev).reshape([BLOCK_N, HEAD_DIM]), acc, is_async=True)
                s = warpgroup_mma_wait(1, deps=(s,))
            else:
                # Tile i-1's P V to completion, then tile i's scores: one product in flight at a time.
                mbarrier.wait(v_bars.index(prev), ((g - 1) // STAGES) & 1)
                acc = warpgroup_mma(gl.convert_layout(p, p_layout),
                                    v_smem.index(prev).reshape([BLOCK_N, HEAD_DIM]), acc, is_async=True)
                acc = warpgroup_mma_wait(0, deps=(acc,))
                mbarrier.arrive(free_bars.index(prev))
                mbarrier.wait(k_bars.index(st), (g // STAGES) & 1)
                s = warpgroup_mma(q, k_smem.index(st).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)), s_init,
                                  use_acc=False, is_async=True)
                s = warpgroup_mma_wait(0, deps=(s,))
            if K_FREE:
                mbarrier.arrive(free_bars.index(STAGES + st))
            p_f32, m_i, l_i, alpha = _softmax(s, m_i, l_i, qk_scale, rows, cols, i * BLOCK_N, N_K, diag,
                                              _tile_masked(i, first_masked, left_masked, HAS_LEFT), CAUSAL,
                                              ROW_SHARES, diag_left, HAS_LEFT)
            if OVERLAP_PV:
                # P V of tile i-1 has read the last P: this tile's P takes its registers.
                acc = warpgroup_mma_wait(0, deps=(acc,))
                mbarrier.arrive(free_bars.index(prev))
            acc = acc * gl.convert_layout(alpha, row_o)[:, None]
            p = p_f32.to(dtype)
        if O_BUF:
            mbarrier.arrive(q_free.index(WG))  # Q has been read for the last time: the next tile's may load
        last = base + own_hi - 1
        mbarrier.wait(v_bars.index(last % STAGES), (last // STAGES) & 1)
        acc = warpgroup_mma(gl.convert_layout(p, p_layout),
                            v_smem.index(last % STAGES).reshape([BLOCK_N, HEAD_DIM]), acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=(acc,))
        mbarrier.arrive(free_bars.index(last % STAGES))
    elif O_BUF:
        mbarrier.arrive(q_free.index(WG))
    if CAUSAL:
        _release_tiles(k_bars, v_bars, free_bars, base + own_hi, kv + n_tiles, STAGES)

    if ROW_SHARES:
        l_i = gl.convert_layout(gl.sum(l_i, 1), row_s)
    if KEY_RANGE:
        if writer:
            _put_partial(PARTIAL, FLAGS, acc, m_i, l_i, tile_unit, WG, BLOCK_M // WG_M)
            if not O_BUF:
                mbarrier.arrive(q_free.index(WG))  # (as _store_output would)
        else:
            acc, m_i, l_i = _merge_partials(PARTIAL, FLAGS, acc, m_i, l_i, tile_unit, tail, WG, BLOCK_M // WG_M)
            _finish_rows(o_desc, LSE, q_smem, q_free, o_smem, acc, m_i, l_i, off_z, off_h, rows, m_wg, N_Q, stride_lz,
                         stride_lh, q_start, O, stride_oh, stride_om, WG, O_BUF, PERSISTENT, VARLEN)
    else:
        _finish_rows(o_desc, LSE, q_smem, q_free, o_smem, acc, m_i, l_i, off_z, off_h, rows, m_wg, N_Q, stride_lz,
                     stride_lh, q_start, O, stride_oh, stride_om, WG, O_BUF, PERSISTENT, VARLEN)
    return kv + n_tiles


@gluon.jit
def _finish_rows(o_desc, LSE, q_smem, q_free, o_smem, acc, m_i, l_i, off_z, off_h, rows, m_wg, N_Q, stride_lz,
                 stride_lh, q_start, O, stride_oh, stride_om, WG: gl.constexpr, O_BUF: gl.constexpr,
                 PERSISTENT: gl.constexpr, VARLEN: gl.constexpr):
    """A warpgroup's rows of a query tile, from the softmax's running max ``m_i`` (scaled log2 units), row sums
    ``l_i`` and unnormalised output ``acc``: their LSE and, normalised, their output."""
    WG_M: gl.constexpr = acc.shape[0]
    dtype: gl.constexpr = q_smem.dtype
    empty = l_i == 0.0
    acc = acc * gl.convert_layout(1.0 / gl.where(empty, 1.0, l_i), gl.SliceLayout(1, acc.type.layout))[:, None]
    lse = gl.where(empty, float("inf"), (m_i + gl.log2(l_i)) * LN2)
    gl.store(LSE + (off_z.to(gl.int64) * stride_lz + off_h.to(gl.int64) * stride_lh + q_start) + rows, lse,
             mask=rows < N_Q)
    # The copy engine stores the warpgroup's rows of the output (rows past the sequence are clipped), staged in the
    # warpgroup's own output buffer or, without one, in its Q buffer, which it no longer reads.
    if VARLEN:  # rows past a packed sequence's end belong to the next one: its last rows are stored one by one
        if m_wg + WG_M > N_Q:
            _store_rows(O + off_h.to(gl.int64) * stride_oh, acc.to(dtype), q_start + m_wg, N_Q - m_wg, stride_om)
        else:
            _store_output(o_desc, o_smem, q_smem, q_free, acc.to(dtype), off_z, off_h, q_start + m_wg, WG, O_BUF,
                          PERSISTENT)
    else:
        _store_output(o_desc, o_smem, q_smem, q_free, acc.to(dtype), off_z, off_h, m_wg, WG, O_BUF, PERSISTENT)


@gluon.jit
def _tail_work(total, N_K, BLOCK_N: gl.constexpr):
    """SPLIT_TAIL: the query tiles past the grid's last whole round, shared out by keys. Their key tiles (units, in
    tile order) are cut into one even run per program, so that all programs finish at about the same time, where a
    last round of whole tiles would leave some idle. A program's run holds at most two parts of tiles: the end of one
    (a finishing part, ``_merge_partials``) and the start of the next (a writer's part), or one part inside a tile.
    Returns (tiles in whole rounds, key tiles per query tile, tail units, the program's first and last + 1 unit)."""
    n_progs = gl.num_programs(0)
    full = total // n_progs * n_progs
    n_units = gl.cdiv(N_K, BLOCK_N)
    tail = (total - full) * n_units
    p = gl.program_id(0)
    return full, n_units, tail, p * tail // n_progs, (p + 1) * tail // n_progs


@gluon.jit
def _tail_count(lo, hi, n_units):
    """How many parts of tail tiles the units ``lo`` to ``hi`` hold (0 to 2, ``_tail_work``)."""
    end = (lo // n_units + 1) * n_units  # the end of the first unit's tile
    return ((hi > lo) & (hi != end)).to(gl.int32) + ((hi > lo) & (hi >= end)).to(gl.int32)


@gluon.jit
def _tail_part(s, lo, hi, n_units):
    """Part ``s`` of the units ``lo`` to ``hi``: (tail tile, its first and last + 1 key tile, writer). A writer's
    part (a tile's start or middle, which another program finishes) runs first, so that the finishing parts, which
    wait for the writers, rarely wait."""
    first = lo // n_units
    has_writer = (hi > lo) & (hi != (first + 1) * n_units)
    writer = has_writer & (s == 0)
    w_tile = (hi - 1) // n_units  # the tile of the run's last unit
    tile = gl.where(writer, w_tile, first)
    key_lo = gl.where(writer, gl.maximum(lo, w_tile * n_units), lo) - tile * n_units
    key_hi = gl.where(writer, hi - w_tile * n_units, n_units)
    return tile, key_lo, key_hi, writer


@gluon.jit
def _opaque_zero(x):
    """0 for ``x`` >= 0, in a form the compiler cannot fold: the partial slots' offsets, which do not depend on the
    tail's loops, are then computed where they are used rather than hoisted in front of the key loop, across which
    their registers would spill."""
    return x // (x + 1)


@gluon.jit
def _partial_slot(PARTIAL, program, WG: gl.constexpr, NUM_WG: gl.constexpr, HEAD_DIM: gl.constexpr):
    """Where a writer program's warpgroup leaves its part: 64 x HEAD_DIM fp32 output, then 64 row maxima and 64 row
    sums."""
    return PARTIAL + (program * NUM_WG + WG) * (64 * (HEAD_DIM + 2))


@gluon.jit
def _put_partial(PARTIAL, FLAGS, acc, m_i, l_i, tile_unit, WG: gl.constexpr, NUM_WG: gl.constexpr):
    """A writer's part of a tail tile: its unnormalised output, row maxima and row sums into the program's slot, then
    the slot's flag set (release: the program finishing the tile reads the slot once it sees the flag)."""
    WG_M: gl.constexpr = acc.shape[0]
    HEAD_DIM: gl.constexpr = acc.shape[1]
    slot = _partial_slot(PARTIAL, gl.program_id(0), WG, NUM_WG, HEAD_DIM)
    rows = gl.arange(0, WG_M, layout=gl.SliceLayout(1, acc.type.layout)) + _opaque_zero(tile_unit)
    cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, acc.type.layout))
    gl.store(slot + rows[:, None] * HEAD_DIM + cols[None, :], acc)
    rows_s = gl.arange(0, WG_M, layout=m_i.type.layout)
    gl.store(slot + WG_M * HEAD_DIM + rows_s, m_i)
    gl.store(slot + WG_M * (HEAD_DIM + 1) + rows_s, l_i)
    gl.thread_barrier()  # every thread's stores before the flag
    gl.atomic_xchg(FLAGS + gl.program_id(0) * NUM_WG + WG, 1, sem="release", scope="gpu")


@gluon.jit
def _merge_partials(PARTIAL, FLAGS, acc, m_i, l_i, tile_unit, tail, WG: gl.constexpr, NUM_WG: gl.constexpr):
    """The finishing part of a tail tile adds the writers' parts (the programs before this one whose runs end inside
    the tile, which starts at unit ``tile_unit``), nearest first: a fixed order, so the output is the same from run
    to run. It waits for each writer's flag (the persistent grid's programs all run at once)."""
    WG_M: gl.constexpr = acc.shape[0]
    HEAD_DIM: gl.constexpr = acc.shape[1]
    row_o: gl.constexpr = gl.SliceLayout(1, acc.type.layout)
    rows = gl.arange(0, WG_M, layout=row_o) + _opaque_zero(tile_unit)
    cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, acc.type.layout))
    rows_s = gl.arange(0, WG_M, layout=m_i.type.layout)
    n_progs = gl.num_programs(0)
    q = gl.program_id(0) - 1
    while (q + 1) * tail // n_progs > tile_unit:  # program q's run ends inside the tile
        if q * tail // n_progs < (q + 1) * tail // n_progs:  # (an empty run writes nothing)
            flag = FLAGS + q * NUM_WG + WG
            ready = gl.atomic_add(flag, 0, sem="acquire", scope="gpu")
            while ready == 0:
                ready = gl.atomic_add(flag, 0, sem="acquire", scope="gpu")
            slot = _partial_slot(PARTIAL, q, WG, NUM_WG, HEAD_DIM)
            part = gl.load(slot + rows[:, None] * HEAD_DIM + cols[None, :], cache_modifier=".cg")
            m_q = gl.load(slot + WG_M * HEAD_DIM + rows_s, cache_modifier=".cg")
            l_q = gl.load(slot + WG_M * (HEAD_DIM + 1) + rows_s, cache_modifier=".cg")
            m_new = gl.maximum(m_i, m_q)
            a = gl.exp2(m_i - m_new)
            b = gl.exp2(m_q - m_new)
            acc = acc * gl.convert_layout(a, row_o)[:, None] + part * gl.convert_layout(b, row_o)[:, None]
            l_i = l_i * a + l_q * b
            m_i = m_new
        q -= 1
    return acc, m_i, l_i


@gluon.jit
def _store_output(o_desc, o_smem, q_smem, q_free, o, off_z, off_h, row, WG: gl.constexpr, O_BUF: gl.constexpr,
                  PERSISTENT: gl.constexpr):
    """A warpgroup's output tile ``o`` through the copy engine, from row ``row`` of head ``off_h``."""
    if O_BUF:
        # Its own output buffer: free once the copy engine has read the tile before's output.
        tma.store_wait(0)
        o_smem.index(WG).reshape(o.shape).store(o)
        fence_async_shared()
        tma.async_copy_shared_to_global(o_desc, [off_z, off_h, row, 0], o_smem.index(WG))
    else:
        q_smem.index(WG).reshape(o.shape).store(o)
        fence_async_shared()
        tma.async_copy_shared_to_global(o_desc, [off_z, off_h, row, 0], q_smem.index(WG))
        tma.store_wait(0)
        if PERSISTENT:
            mbarrier.arrive(q_free.index(WG))  # the buffer may take this warpgroup's rows of the next tile


@gluon.jit
def attn_fwd_ws_kernel(q_desc, k_desc, v_desc, o_desc, LSE, COUNTER, sm_scale, stride_lz, stride_lh, GROUP, N_HEADS,
                       BATCH, N_Q, N_K, LEFT, RIGHT, CU_Q, CU_K, O, stride_oh, stride_om, PARTIAL,
                       BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                       STAGES: gl.constexpr, CAUSAL: gl.constexpr, REGS: gl.constexpr, INTERLEAVE: gl.constexpr,
                       PERSISTENT: gl.constexpr = False, DYNAMIC: gl.constexpr = False, O_BUF: gl.constexpr = False,
                       K_FREE: gl.constexpr = False, OVERLAP_PV: gl.constexpr = True,
                       ROW_SHARES: gl.constexpr = False, HAS_LEFT: gl.constexpr = False, VARLEN: gl.constexpr = False,
                       SPLIT_TAIL: gl.constexpr = False):
    """O and LSE (natural log, fp32) of dense attention. Grid: (cdiv(N_Q, BLOCK_M), heads, batch), one query tile a
    program; causal grids run their longest query tiles first (``_tile_coords``). PERSISTENT: grid (programs,), each
    program runs query tiles ``program_id(0)``, ``+ programs``, ... of the same order (N_HEADS heads, BATCH batch
    items), and loads a tile's first keys while it finishes the tile before. DYNAMIC (with PERSISTENT): program p
    runs tile p first, then whichever tile the launch's ``COUNTER`` (int32, zero at launch, zero again at exit) hands
    it next, in the same order. ``q_desc`` and ``o_desc`` have 64-row blocks (one per compute warpgroup), ``k_desc``
    and ``v_desc`` BLOCK_N-row blocks; all four are (batch, heads, seqlen, head dim) with head-dim-wide blocks.
    BLOCK_M is 128, 192 or 256; REGS the registers of each computing warpgroup past the first
    (``ws_launch_options``). O_BUF: the output is staged in a buffer of its own (``WS_OUTPUT_BUFFER``), not in each
    warpgroup's Q buffer. K_FREE: each K buffer comes free once the q.k products have read it, apart from its V
    buffer (``ws_k_free``). OVERLAP_PV: each step's P V product runs while the next tile's softmax does; without it
    (two programs per SM), one product is in flight at a time (``ws_launch_options``). ROW_SHARES: each thread sums
    its own share of the row sums, added up across the quad once, after the last key tile (``ws_row_shares``).
    Sliding windows: CAUSAL bounds each row's keys on the right at RIGHT past its diagonal (0: causal), HAS_LEFT on the
    left at LEFT before it (key j visible to row i iff i + N_K - N_Q - LEFT <= j <= i + N_K - N_Q + RIGHT); only the
    key tiles in a tile's band load. VARLEN (one tile a program, grid (cdiv(longest, BLOCK_M), heads, sequences)):
    sequences packed along the descriptors' sequence axis (batch 1), split by CU_Q and CU_K; N_Q and N_K are unused,
    LSE is (heads, total rows), and a sequence's last rows are stored through ``O`` (``_store_rows``). SPLIT_TAIL
    (PERSISTENT, not DYNAMIC, no mask): the tiles past the grid's last whole round are shared out by keys
    (``_tail_work``); COUNTER then holds a flag per program and warpgroup (zeros at launch) and PARTIAL, fp32, a slot
    per program and warpgroup for the parts that another program finishes (``_put_partial``)."""
    gl.static_assert(not (VARLEN and PERSISTENT), "packed sequences run one tile a program")
    gl.static_assert(not SPLIT_TAIL or (PERSISTENT and not DYNAMIC and not CAUSAL and not HAS_LEFT),
                     "the tail is split on the fixed persistent grid, without a mask")
    n_t = gl.cdiv(N_Q, BLOCK_M)
    if PERSISTENT:
        first = gl.program_id(0)
        step = gl.num_programs(0)
        if SPLIT_TAIL:  # the whole rounds; the tiles past them are shared out by keys (_tail_work)
            n_mine = n_t * N_HEADS * BATCH // step
        else:
            n_mine = gl.cdiv(gl.maximum(n_t * N_HEADS * BATCH - first, 0), step)
    else:  # unused: each partition takes its tile from the program ids (_query_program)
        first = 0
        step = 1
        n_mine = 1

    NUM_WG: gl.constexpr = BLOCK_M // 64
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [NUM_WG] + q_desc.block_type.shape, q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    q_bars = gl.allocate_shared_memory(gl.int64, [NUM_WG, 1], mbarrier.MBarrierLayout())
    q_free = gl.allocate_shared_memory(gl.int64, [NUM_WG, 1], mbarrier.MBarrierLayout())
    k_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    # K_FREE: a second row of barriers frees each K buffer apart from its V buffer (``_load_tile``).
    free_bars = gl.allocate_shared_memory(gl.int64, [STAGES * (2 if K_FREE else 1), 1], mbarrier.MBarrierLayout())
    ids = gl.allocate_shared_memory(gl.int32, [2, 1], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    if O_BUF:
        o_smem = gl.allocate_shared_memory(o_desc.dtype, [NUM_WG] + o_desc.block_type.shape, o_desc.layout)
    else:  # the output is staged in each warpgroup's Q buffer
        o_smem = q_smem
    for w in gl.static_range(NUM_WG):
        mbarrier.init(q_bars.index(w), count=1)
        mbarrier.init(q_free.index(w), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_bars.index(i), count=1)
        mbarrier.init(v_bars.index(i), count=1)
        mbarrier.init(free_bars.index(i), count=NUM_WG)  # one arrival per warpgroup
        if K_FREE:
            mbarrier.init(free_bars.index(STAGES + i), count=NUM_WG)

    qk_scale = sm_scale * LOG2E
    # The tuples are spelled out in the calls: built beforehand, their constexprs would turn into tensors.
    gl.static_assert(BLOCK_M == 128 or BLOCK_M == 192 or BLOCK_M == 256,
                     "BLOCK_M is two, three or four warpgroups of 64 rows")
    if BLOCK_M == 128:
        gl.warp_specialize(
            [
                (_compute_partition, (o_desc, LSE, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars,
                                      free_bars, first, step, n_mine, n_t, N_HEADS, BATCH, N_Q, N_K, LEFT, RIGHT,
                                      qk_scale, stride_lz, stride_lh, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL,
                                      INTERLEAVE, PERSISTENT, 0, ids, DYNAMIC, o_smem, O_BUF, OVERLAP_PV,
                                      ROW_SHARES, HAS_LEFT, CU_Q, CU_K, O,
                                      stride_oh, stride_om, VARLEN, PARTIAL, COUNTER, SPLIT_TAIL)),
                (_compute_partition, (o_desc, LSE, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars,
                                      free_bars, first, step, n_mine, n_t, N_HEADS, BATCH, N_Q, N_K, LEFT, RIGHT,
                                      qk_scale, stride_lz, stride_lh, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL,
                                      INTERLEAVE, PERSISTENT, 1, ids, DYNAMIC, o_smem, O_BUF, OVERLAP_PV,
                                      ROW_SHARES, HAS_LEFT, CU_Q, CU_K, O,
                                      stride_oh, stride_om, VARLEN, PARTIAL, COUNTER, SPLIT_TAIL)),
                (_load_partition, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars,
                                   free_bars, first, step, n_mine, n_t, N_HEADS, BATCH, GROUP, N_Q, N_K, LEFT,
                                   RIGHT, BLOCK_M, BLOCK_N, STAGES, CAUSAL, INTERLEAVE, PERSISTENT, ids, COUNTER,
                                   DYNAMIC, HAS_LEFT, CU_Q, CU_K, VARLEN, SPLIT_TAIL)),
            ],
            [4, 1],
            [REGS, 24],
        )
    elif BLOCK_M == 192:
        gl.warp_specialize(
            [
                (_compute_partition, (o_desc, LSE, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars,
                                      free_bars, first, step, n_mine, n_t, N_HEADS, BATCH, N_Q, N_K, LEFT, RIGHT,
                                      qk_scale, stride_lz, stride_lh, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL,
                                      INTERLEAVE, PERSISTENT, 0, ids, DYNAMIC, o_smem, O_BUF, OVERLAP_PV,
                                      ROW_SHARES, HAS_LEFT, CU_Q, CU_K, O,
                                      stride_oh, stride_om, VARLEN, PARTIAL, COUNTER, SPLIT_TAIL)),
                (_compute_partition, (o_desc, LSE, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars,
                                      free_bars, first, step, n_mine, n_t, N_HEADS, BATCH, N_Q, N_K, LEFT, RIGHT,
                                      qk_scale, stride_lz, stride_lh, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL,
                                      INTERLEAVE, PERSISTENT, 1, ids, DYNAMIC, o_smem, O_BUF, OVERLAP_PV,
                                      ROW_SHARES, HAS_LEFT, CU_Q, CU_K, O,
                                      stride_oh, stride_om, VARLEN, PARTIAL, COUNTER, SPLIT_TAIL)),
                (_compute_partition, (o_desc, LSE, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars,
                                      free_bars, first, step, n_mine, n_t, N_HEADS, BATCH, N_Q, N_K, LEFT, RIGHT,
                                      qk_scale, stride_lz, stride_lh, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL,
                                      INTERLEAVE, PERSISTENT, 2, ids, DYNAMIC, o_smem, O_BUF, OVERLAP_PV,
                                      ROW_SHARES, HAS_LEFT, CU_Q, CU_K, O,
                                      stride_oh, stride_om, VARLEN, PARTIAL, COUNTER, SPLIT_TAIL)),
                (_load_partition, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars,
                                   free_bars, first, step, n_mine, n_t, N_HEADS, BATCH, GROUP, N_Q, N_K, LEFT,
                                   RIGHT, BLOCK_M, BLOCK_N, STAGES, CAUSAL, INTERLEAVE, PERSISTENT, ids, COUNTER,
                                   DYNAMIC, HAS_LEFT, CU_Q, CU_K, VARLEN, SPLIT_TAIL)),
            ],
            [4, 4, 1],
            [REGS, REGS, 24],
        )
    else:
        gl.warp_specialize(
            [
                (_compute_partition, (o_desc, LSE, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars,
                                      free_bars, first, step, n_mine, n_t, N_HEADS, BATCH, N_Q, N_K, LEFT, RIGHT,
                                      qk_scale, stride_lz, stride_lh, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL,
                                      INTERLEAVE, PERSISTENT, 0, ids, DYNAMIC, o_smem, O_BUF, OVERLAP_PV,
                                      ROW_SHARES, HAS_LEFT, CU_Q, CU_K, O,
                                      stride_oh, stride_om, VARLEN, PARTIAL, COUNTER, SPLIT_TAIL)),
                (_compute_partition, (o_desc, LSE, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars,
                                      free_bars, first, step, n_mine, n_t, N_HEADS, BATCH, N_Q, N_K, LEFT, RIGHT,
                                      qk_scale, stride_lz, stride_lh, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL,
                                      INTERLEAVE, PERSISTENT, 1, ids, DYNAMIC, o_smem, O_BUF, OVERLAP_PV,
                                      ROW_SHARES, HAS_LEFT, CU_Q, CU_K, O,
                                      stride_oh, stride_om, VARLEN, PARTIAL, COUNTER, SPLIT_TAIL)),
                (_compute_partition, (o_desc, LSE, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars,
                                      free_bars, first, step, n_mine, n_t, N_HEADS, BATCH, N_Q, N_K, LEFT, RIGHT,
                                      qk_scale, stride_lz, stride_lh, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL,
                                      INTERLEAVE, PERSISTENT, 2, ids, DYNAMIC, o_smem, O_BUF, OVERLAP_PV,
                                      ROW_SHARES, HAS_LEFT, CU_Q, CU_K, O,
                                      stride_oh, stride_om, VARLEN, PARTIAL, COUNTER, SPLIT_TAIL)),
                (_compute_partition, (o_desc, LSE, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars,
                                      free_bars, first, step, n_mine, n_t, N_HEADS, BATCH, N_Q, N_K, LEFT, RIGHT,
                                      qk_scale, stride_lz, stride_lh, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL,
                                      INTERLEAVE, PERSISTENT, 3, ids, DYNAMIC, o_smem, O_BUF, OVERLAP_PV,
                                      ROW_SHARES, HAS_LEFT, CU_Q, CU_K, O,
                                      stride_oh, stride_om, VARLEN, PARTIAL, COUNTER, SPLIT_TAIL)),
                (_load_partition, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bars, q_free, k_bars, v_bars,
                                   free_bars, first, step, n_mine, n_t, N_HEADS, BATCH, GROUP, N_Q, N_K, LEFT,
                                   RIGHT, BLOCK_M, BLOCK_N, STAGES, CAUSAL, INTERLEAVE, PERSISTENT, ids, COUNTER,
                                   DYNAMIC, HAS_LEFT, CU_Q, CU_K, VARLEN, SPLIT_TAIL)),
            ],
            [4, 4, 4, 1],
            [REGS, REGS, REGS, 24],
        )


# ---- backward: dK and dV, warp-specialised ----------------------------------------------------------------------------

#: (head dim, causal only, (BLOCK_M, BLOCK_N, STAGES)): the calls the dK/dV kernel below runs, and its tiles:
#: BLOCK_N keys per program (64 per computing warpgroup, two warpgroups), BLOCK_M query rows per step. Timed on an
#: H100 (bf16, 16k tokens, 2026-11-26; benchmarks/results/h100-2026-11-26-wsbwd), the whole deterministic backward
#: against the Triton dK/dV kernel: d128 +5-17% at 1k-16k over two runs (2 stages; 3 stages and keeping each step's
#: dK/dV products in flight across steps were 0-12% slower); d64 +3-9% causal but -7% to +5% without a mask. Since
#: the accumulators start from the row terms (benchmarks/results/h100-2026-11-26-bias), d64 without a mask too: +2-6%
#: from 4k keys, level at 2k, 2-3% slower at 1k (forward+backward level or faster there).
WS_BWD = (
    (64, False, (64, 128, 2)),
    (128, False, (64, 128, 2)),
    (256, False, (64, 64, 2)),  # attn_bwd_dkdv_split_kernel: BLOCK_N keys shared by both warpgroups
)


#: (head dim, causal, shortest seqlen_k): where the sequence-parallel mode adds dQ from this kernel (the copy
#: engine's bulk add, ``ATOMIC_DQ``) instead of running a dQ pass after it. First timed on an H100 (bf16, 16k tokens,
#: 2026-11-26; benchmarks/results/h100-2026-11-26-wsbwd/fused_dq, ws_fused_ab2.json): d128 +6-17% from 4k keys. Since
#: its first warpgroup computes all of dQ, timed again below 4k keys and at d64 (benchmarks/results/
#: h100-2026-11-26-persist/ab6_fused_short.json, forward+backward, CUDA-graph replays, medians of 4 rounds): d128
#: without a mask +2% at 1k and 2k, +6% at 3k; causal 3% slower at 1k, level at 2k, +3% at 3k; d64 without a mask +1%
#: at 1k, +8% at 4k and 16k; causal 4% slower at 1k, +1% at 4k, +9% at 16k. A first form where each warpgroup added
#: its own 64x128 tile (twice the traffic) was 8-31% slower at d128.
WS_FUSED_DQ = ((64, False, 0), (64, True, 4096), (128, False, 0), (128, True, 3072))


#: (head dim, (BLOCK_M, BLOCK_N, STAGES)): where the dQ pass is the warp-specialised ``attn_bwd_dq_ws_kernel``
#: (after a warp-specialised dK/dV kernel) instead of the Triton dQ kernel. Timed on an H100 (bf16, 16k tokens,
#: 2026-11-26; benchmarks/results/h100-2026-11-26-wsbwd/dq), the whole deterministic backward: d256 +40-67% (32-key
#: tiles; 3 stages: 0-10% slower at 4k); d128 +1-8% with 128-key tiles (64-key tiles: 0-8%, less even); d64 causal
#: -7% at 1k, -2% to +8% from 4k (ws_dq64_ab.json), so d64 keeps the Triton dQ kernel.
WS_BWD_DQ = ((128, (128, 128, 2)), (256, (128, 32, 2)))


def ws_dq_tiles(head_dim: int) -> tuple[int, int, int] | None:
    """The warp-specialised dQ kernel's tiles for this head dim, or None where the Triton dQ kernel runs."""
    return next((tiles for dim, tiles in WS_BWD_DQ if dim == head_dim), None)


def ws_fused_dq(head_dim: int, causal: bool, seqlen_k: int) -> bool:
    """Whether the sequence-parallel mode adds dQ from the dK/dV kernel for this call (``WS_FUSED_DQ``)."""
    return any(head_dim == dim and causal == c and seqlen_k >= shortest for dim, c, shortest in WS_FUSED_DQ)


def ws_dq_permuted(head_dim: int) -> bool:
    """Whether the fused backward adds each dQ tile with its rows permuted within groups of 8 (``DQ_PERMUTED``): the
    fp32 accumulator then needs its rows rounded up to a multiple of 8, and the caller undoes the permutation when it
    converts dQ. At d64 the kernel stores dQ^T instead, which has no bank conflicts either. Timed on an H100 (bf16,
    16k tokens, 2026-11-27, benchmarks/results/h100-2026-11-27-dqrows, medians of 5 interleaved rounds), d128
    forward+backward: +3.4% at 4k and +4.8% at 16k keys without a mask, +1.4% at 16k causal, level at 1k and 4k
    causal; a 32-byte swizzle for the buffer instead (conflict-free too, but 16 copy-engine boxes a step) 5-9%
    slower."""
    return head_dim != 64


def ws_bwd_tiles(head_dim: int, causal: bool) -> tuple[int, int, int] | None:
    """The dK/dV kernel's tiles for this call, or None where the backward runs the Triton kernels."""
    for dim, causal_only, tiles in WS_BWD:
        if dim == head_dim and (causal or not causal_only):
            return tiles
    return None


@gluon.jit
def _key_program(BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, N_Q, N_K, LEFT, RIGHT, CAUSAL: gl.constexpr,
                 HAS_LEFT: gl.constexpr, CU_Q=None, CU_K=None, VARLEN: gl.constexpr = False):
    """A dK/dV program's keys and query range: (n0, off_z, off_hk, m_lo, n_m_tiles, q_start, k_start, N_Q, N_K).
    Grid: (cdiv(N_K, BLOCK_N), key/value heads, batch). VARLEN: the sequence's starts and lengths (``_sequence``),
    off_z 0 (the descriptors' one batch item), and no query tiles where the program's keys lie past its end."""
    n0 = gl.program_id(0) * BLOCK_N
    off_hk = gl.program_id(1)
    off_z = gl.program_id(2)
    if VARLEN:
        q_start, k_start, N_Q, N_K = _sequence(CU_Q, CU_K, off_z)
        off_z = 0
        N_Q = gl.where(n0 < N_K, N_Q, 0)
    else:
        q_start = 0
        k_start = 0
    if CAUSAL:
        # Query row i sees key j iff j <= i + N_K - N_Q + RIGHT: rows before this program's first key minus that
        # diagonal see none.
        m_lo = (gl.maximum(n0 - (N_K - N_Q + RIGHT), 0) // BLOCK_M) * BLOCK_M
    else:
        m_lo = 0
    if HAS_LEFT:
        # ... and iff j >= i + N_K - N_Q - LEFT: rows past the program's last key minus that diagonal see none.
        m_hi = gl.minimum(n0 + BLOCK_N - (N_K - N_Q - LEFT), N_Q)
    else:
        m_hi = N_Q
    return n0, off_z, off_hk, m_lo, gl.cdiv(gl.maximum(m_hi - m_lo, 0), BLOCK_M), q_start, k_start, N_Q, N_K


@gluon.jit
def _query_step(it, off_hk, GROUP, m_lo, n_m_tiles, BLOCK_M: gl.constexpr):
    """Step ``it`` of a dK/dV program's loop over the query tiles of every query head of its key head:
    (query head, first row)."""
    return off_hk * GROUP + it // n_m_tiles, m_lo + (it % n_m_tiles) * BLOCK_M


@gluon.jit
def _row_stats(LSE, DELTA, off_z, off_h, rows, N_Q, valid, stride_lz, stride_lh, row0=0):
    """LSE and delta of query rows of one head (a packed sequence's from ``row0``); rows past the sequence (or not
    ``valid``) get inf and 0: P = 0."""
    row_ptr = off_z.to(gl.int64) * stride_lz + off_h.to(gl.int64) * stride_lh + row0 + rows
    mask = (rows < N_Q) & valid
    return gl.load(LSE + row_ptr, mask=mask, other=float("inf")), gl.load(DELTA + row_ptr, mask=mask, other=0.0)


@gluon.jit
def _row_bias(LSE, DELTA, it, total, off_z, off_hk, GROUP, m_lo, n_m_tiles, cols, N_Q, sm_scale, stride_lz,
              stride_lh, BLOCK_M: gl.constexpr, row0=0):
    """The deterministic dK/dV kernel's accumulator starts for step ``it`` (none past ``total``): -LSE / scale for
    S^T and -delta for dP^T, per query row."""
    off_h, start_m = _query_step(it, off_hk, GROUP, m_lo, n_m_tiles, BLOCK_M)
    lse, delta = _row_stats(LSE, DELTA, off_z, off_h, start_m + cols, N_Q, it < total, stride_lz, stride_lh, row0)
    return -lse / sm_scale, -delta


@gluon.jit
def _init_bwd_barriers(kv_bar, q_bars, do_bars, free_bars, STAGES: gl.constexpr):
    mbarrier.init(kv_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(q_bars.index(i), count=1)
        mbarrier.init(do_bars.index(i), count=1)
        mbarrier.init(free_bars.index(i), count=2)  # one arrival per computing warpgroup


@gluon.jit
def _bwd_load_partition(q_desc, k_desc, v_desc, do_desc, q_smem, k_smem, v_smem, do_smem, kv_bar, q_bars, do_bars,
                        free_bars, off_z, off_hk, n0, m_lo, n_m_tiles, GROUP, BLOCK_M: gl.constexpr,
                        STAGES: gl.constexpr, q_start, k_start):
    """The dK/dV kernels' loading warp: the program's keys once (``k_smem.shape[0]`` blocks of K and of V), then Q
    and dO tiles through the ring (a packed sequence's rows from ``q_start`` and ``k_start``)."""
    KV_BLOCKS: gl.constexpr = k_smem.shape[0]
    ROWS: gl.constexpr = k_desc.block_type.shape[2]
    mbarrier.expect(kv_bar, KV_BLOCKS * (k_desc.block_type.nbytes + v_desc.block_type.nbytes))
    for w in gl.static_range(KV_BLOCKS):
        tma.async_copy_global_to_shared(k_desc, [off_z, off_hk, k_start + n0 + w * ROWS, 0], kv_bar, k_smem.index(w))
        tma.async_copy_global_to_shared(v_desc, [off_z, off_hk, k_start + n0 + w * ROWS, 0], kv_bar, v_smem.index(w))
    for it in range(GROUP * n_m_tiles):
        s = it % STAGES
        mbarrier.wait(free_bars.index(s), ((it // STAGES) & 1) ^ 1)
        off_h, start_m = _query_step(it, off_hk, GROUP, m_lo, n_m_tiles, BLOCK_M)
        mbarrier.expect(q_bars.index(s), q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [off_z, off_h, q_start + start_m, 0], q_bars.index(s), q_smem.index(s))
        mbarrier.expect(do_bars.index(s), do_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(do_desc, [off_z, off_h, q_start + start_m, 0], do_bars.index(s),
                                        do_smem.index(s))


@gluon.jit
def _bwd_compute_partition(dk_desc, dv_desc, dq_desc, LSE, DELTA, q_smem, k_smem, v_smem, do_smem, dq_smem, ds_smem,
                           ds_bars, dqd_bars, kv_bar, q_bars, do_bars, free_bars, off_z, off_hk, n0, m_lo, n_m_tiles,
                           GROUP, N_Q, N_K, LEFT, RIGHT, qk_scale, sm_scale, stride_lz, stride_lh,
                           BLOCK_M: gl.constexpr, WG_N: gl.constexpr, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr,
                           CAUSAL: gl.constexpr, ATOMIC_DQ: gl.constexpr, DQ_PERMUTED: gl.constexpr, WG: gl.constexpr,
                           HAS_LEFT: gl.constexpr, q_start, k_start, DK, DV, stride_kh, stride_km,
                           VARLEN: gl.constexpr):
    """One warpgroup's 64 keys: dV = sum P^T dO and dK = scale * sum dS^T Q over the query tiles (of every query head
    of its key head). With ATOMIC_DQ also each query tile's share of dQ, scale * dS K over the program's 128 keys:
    both warpgroups put their dS in shared memory (``ds_bars``: both written), the first (WG 0) multiplies it by K
    for all of dQ (``dqd_bars``: read; at d64 as dQ^T = K^T dS^T, at d128 with its rows permuted, both to avoid bank
    conflicts in its stores) and the copy engine adds that into the fp32 dQ. The second warpgroup does no
    dQ work: it runs ahead into its next step while the first's dQ product holds the tensor cores, which splitting
    dQ's columns over both (each then waiting for the other's dS every step) did not allow."""
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_M, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    dtype: gl.constexpr = q_smem.dtype

    keys = n0 + WG * WG_N + gl.arange(0, WG_N, layout=gl.SliceLayout(1, s_layout))
    cols = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, s_layout))
    diag = N_K - N_Q + RIGHT
    diag_left = N_K - N_Q - LEFT
    dk = gl.zeros([WG_N, HEAD_DIM], gl.float32, layout=o_layout)
    dv = gl.zeros([WG_N, HEAD_DIM], gl.float32, layout=o_layout)
    s_init = gl.zeros([WG_N, BLOCK_M], gl.float32, layout=s_layout)
    k = k_smem.index(WG).reshape([WG_N, HEAD_DIM])
    v = v_smem.index(WG).reshape([WG_N, HEAD_DIM])
    if ATOMIC_DQ:
        dq_buf = dq_smem.reshape([BLOCK_M, HEAD_DIM])
        if HEAD_DIM != 64:
            dq_init = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, layout=o_layout)
        else:
            # dQ^T = K^T dS^T goes in (below): each thread then stores single fp32 values of four rows, whose 128-byte
            # swizzle spreads a warp's stores over all the banks. dQ = dS K would be stored as pairs of one row, and
            # each half-warp's pairs fall on half of the banks (Nsight Compute: 4 wavefronts a store, twice the
            # least). At d128 the two 64-column halves of dQ^T cost spills: dQ stays, stored with its rows permuted
            # (DQ_PERMUTED).
            dq_buf = dq_buf.permute((1, 0))

    total = GROUP * n_m_tiles
    if not ATOMIC_DQ:  # the first step's row terms, while K and V land
        s_bias, dp_bias = _row_bias(LSE, DELTA, 0, total, off_z, off_hk, GROUP, m_lo, n_m_tiles, cols, N_Q, sm_scale,
                                    stride_lz, stride_lh, BLOCK_M, q_start)
    mbarrier.wait(kv_bar, 0)
    for it in range(total):
        st = it % STAGES
        phase = (it // STAGES) & 1
        off_h, start_m = _query_step(it, off_hk, GROUP, m_lo, n_m_tiles, BLOCK_M)
        q = q_smem.index(st).reshape([BLOCK_M, HEAD_DIM])
        do = do_smem.index(st).reshape([BLOCK_M, HEAD_DIM])
        rows = start_m + cols
        if ATOMIC_DQ:
            mbarrier.wait(q_bars.index(st), phase)
            s_t = warpgroup_mma(k, q.permute((1, 0)), s_init, use_acc=False, is_async=True)
            # The query rows' LSE and delta (rows past the sequence get P = 0). Causal, dP^T starts from -delta
            # (+3-8% there; 1-4% slower without a mask at 16k); otherwise both load while the two MMAs run.
            mbarrier.wait(do_bars.index(st), phase)
            if CAUSAL:
                lse, delta = _row_stats(LSE, DELTA, off_z, off_h, rows, N_Q, True, stride_lz, stride_lh, q_start)
                dp_t = warpgroup_mma(v, do.permute((1, 0)), s_init - delta[None, :], is_async=True)
            else:
                dp_t = warpgroup_mma(v, do.permute((1, 0)), s_init, use_acc=False, is_async=True)
                lse, delta = _row_stats(LSE, DELTA, off_z, off_h, rows, N_Q, True, stride_lz, stride_lh, q_start)
            s_t = warpgroup_mma_wait(1, deps=(s_t,))
            p_t = gl.exp2(s_t * qk_scale - lse[None, :] * LOG2E)
        else:
            # The accumulators start from -LSE / scale and -delta, fetched during the step before: S^T is then P^T's
            # exponent over scale * log2(e), and dP^T comes out as dP^T - delta.
            mbarrier.wait(q_bars.index(st), phase)
            s_t = warpgroup_mma(k, q.permute((1, 0)), s_init + s_bias[None, :], is_async=True)
            mbarrier.wait(do_bars.index(st), phase)
            dp_t = warpgroup_mma(v, do.permute((1, 0)), s_init + dp_bias[None, :], is_async=True)
            s_t = warpgroup_mma_wait(1, deps=(s_t,))
            p_t = gl.exp2(s_t * qk_scale)
        if CAUSAL:
            if start_m + diag < n0 + 2 * WG_N - 1:  # some key of this program lies past some row's diagonal
                p_t = gl.where(keys[:, None] <= rows[None, :] + diag, p_t, 0.0)
        if HAS_LEFT:
            if start_m + BLOCK_M - 1 + diag_left > n0:  # some key of this program lies before some row's window
                p_t = gl.where(keys[:, None] >= rows[None, :] + diag_left, p_t, 0.0)
        if VARLEN:  # keys past a packed sequence are the next one's, not zeros
            if n0 + 2 * WG_N > N_K:
                p_t = gl.where(keys[:, None] < N_K, p_t, 0.0)
        dv = warpgroup_mma(gl.convert_layout(p_t.to(dtype), a_layout), do, dv, is_async=True)
        dp_t = warpgroup_mma_wait(1, deps=(dp_t,))
        if ATOMIC_DQ and not CAUSAL:
            ds_t = (p_t * (dp_t - delta[None, :])).to(dtype)
        else:
            ds_t = (p_t * dp_t).to(dtype)
        dk = warpgroup_mma(gl.convert_layout(ds_t, a_layout), q, dk, is_async=True)
        if ATOMIC_DQ:
            # Both warpgroups' dS go to shared memory; the first then computes dQ over all 128 keys.
            par = it % 2
            use = (it // 2) & 1
            mbarrier.wait(dqd_bars.index(par), use ^ 1)  # the dQ product of two steps ago has read this buffer
            ds_buf = ds_smem.index(par)
            ds_buf.slice(WG * WG_N, WG_N, dim=0).store(ds_t)
            fence_async_shared()
            mbarrier.arrive(ds_bars.index(par))
            dk, dv = warpgroup_mma_wait(0, deps=(dk, dv))  # frees P^T's and dS^T's registers for dQ's
            mbarrier.arrive(free_bars.index(st))
            if WG == 0:
                mbarrier.wait(ds_bars.index(par), use)
                if HEAD_DIM == 64:  # dQ^T (``dq_buf``)
                    dq = warpgroup_mma(k_smem.index(0).reshape([WG_N, HEAD_DIM]).permute((1, 0)),
                                       ds_buf.slice(0, WG_N, dim=0), s_init, use_acc=False, is_async=True)
                    dq = warpgroup_mma(k_smem.index(1).reshape([WG_N, HEAD_DIM]).permute((1, 0)),
                                       ds_buf.slice(WG_N, WG_N, dim=0), dq, is_async=True)
                else:
                    dq = warpgroup_mma(ds_buf.slice(0, WG_N, dim=0).permute((1, 0)), k_smem.index(0).reshape(
                        [WG_N, HEAD_DIM]), dq_init, use_acc=False, is_async=True)
                    dq = warpgroup_mma(ds_buf.slice(WG_N, WG_N, dim=0).permute((1, 0)), k_smem.index(1).reshape(
                        [WG_N, HEAD_DIM]), dq, is_async=True)
                dq = warpgroup_mma_wait(0, deps=(dq,))
                mbarrier.arrive(dqd_bars.index(par))
                tma.store_wait(0)  # the last step's dQ has left the buffer
                dq = dq * sm_scale
                if DQ_PERMUTED:
                    # Row 8a + 4b + c goes to row 8a + 2c + b (a relabelling of registers, no data moves): each
                    # half-warp's four rows then have swizzle phases 0, 2, 4, 6, and its pairs cover all the banks.
                    dq = dq.reshape([BLOCK_M // 8, 2, 4, HEAD_DIM]).permute((0, 2, 1, 3)).reshape([BLOCK_M, HEAD_DIM])
                dq_buf.store(dq)
                fence_async_shared()
                _tma_reduce_add(dq_desc, [off_z, off_h, start_m, 0], dq_smem)
        else:
            s_bias, dp_bias = _row_bias(LSE, DELTA, it + 1, total, off_z, off_hk, GROUP, m_lo, n_m_tiles, cols,
                                        N_Q, sm_scale, stride_lz, stride_lh, BLOCK_M, q_start)
            dk, dv = warpgroup_mma_wait(0, deps=(dk, dv))
            mbarrier.arrive(free_bars.index(st))

    if ATOMIC_DQ:
        last = GROUP * n_m_tiles - 1
        if last >= 0 and WG == 1:  # the first warpgroup's last dQ product reads this warpgroup's K too
            mbarrier.wait(dqd_bars.index(last % 2), (last // 2) & 1)
    # This warpgroup's K and V buffers stage its dK and dV for the copy engine (rows past the keys are clipped); the
    # last keys of a packed sequence are stored one by one (the next rows are the next sequence's).
    dk = (dk * sm_scale).to(dtype)
    dv = dv.to(dtype)
    if VARLEN:
        if n0 + (WG + 1) * WG_N > N_K:
            k_row = k_start + n0 + WG * WG_N
            n_rows = N_K - n0 - WG * WG_N
            _store_rows(DK + off_hk.to(gl.int64) * stride_kh, dk, k_row, n_rows, stride_km, True)
            _store_rows(DV + off_hk.to(gl.int64) * stride_kh, dv, k_row, n_rows, stride_km, True)
        else:
            _store_tile(dk_desc, k_smem, dk, off_z, off_hk, k_start + n0 + WG * WG_N, WG)
            _store_tile(dv_desc, v_smem, dv, off_z, off_hk, k_start + n0 + WG * WG_N, WG)
    else:
        _store_tile(dk_desc, k_smem, dk, off_z, off_hk, n0 + WG * WG_N, WG)
        _store_tile(dv_desc, v_smem, dv, off_z, off_hk, n0 + WG * WG_N, WG)


@gluon.jit
def _store_tile(desc, smem, x, off_z, off_hk, row, index: gl.constexpr):
    """A tile ``x`` (dK, dV, or dQ) through the copy engine, staged in buffer ``index`` of ``smem`` (rows past the
    tensor are clipped), from row ``row`` of head ``off_hk``."""
    smem.index(index).reshape(x.shape).store(x)
    fence_async_shared()
    tma.async_copy_shared_to_global(desc, [off_z, off_hk, row, 0], smem.index(index))
    tma.store_wait(0)


@gluon.jit
def attn_bwd_dkdv_ws_kernel(q_desc, k_desc, v_desc, do_desc, dk_desc, dv_desc, dq_desc, LSE, DELTA, sm_scale,
                            stride_lz, stride_lh, GROUP, N_Q, N_K, LEFT, RIGHT, CU_Q, CU_K, DK, DV, stride_kh,
                            stride_km, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                            STAGES: gl.constexpr, CAUSAL: gl.constexpr, ATOMIC_DQ: gl.constexpr,
                            DQ_PERMUTED: gl.constexpr = False, HAS_LEFT: gl.constexpr = False,
                            VARLEN: gl.constexpr = False):
    """dK and dV of dense attention (each program owns BLOCK_N keys of one key head: no atomics). With ATOMIC_DQ (the
    sequence-parallel mode) also dQ, added into ``dq_desc`` (fp32, (batch, heads, seqlen_q, head dim), blocks of
    BLOCK_M rows and HEAD_DIM columns, zeroed by the caller) by the copy engine; without it ``dq_desc`` is
    unused. With DQ_PERMUTED (``ws_dq_permuted``) row 8a + 4b + c of dQ lands in row 8a + 2c + b, and ``dq_desc``
    needs seqlen_q rounded up to a multiple of 8 rows.
    Grid: (cdiv(N_K, BLOCK_N), key/value heads, batch). ``q_desc``/``do_desc`` have BLOCK_M-row blocks, ``k_desc``,
    ``v_desc``, ``dk_desc``, ``dv_desc`` BLOCK_N / 2-row blocks (one per computing warpgroup); DELTA = rowsum(O * dO),
    laid out like LSE. Sliding windows: CAUSAL and HAS_LEFT bound each row's keys at RIGHT past its diagonal and LEFT
    before it (``attn_fwd_ws_kernel``); a program visits only the query tiles that see its keys. VARLEN (not with
    ATOMIC_DQ): packed sequences as ``attn_fwd_ws_kernel``'s, grid (cdiv(longest, BLOCK_N), key heads, sequences);
    a sequence's last keys store their dK and dV into ``DK`` and ``DV`` (head stride ``stride_kh``, rows
    ``stride_km`` apart) one by one."""
    WG_N: gl.constexpr = BLOCK_N // 2
    gl.static_assert(not (VARLEN and ATOMIC_DQ), "packed sequences take the dQ pass")
    n0, off_z, off_hk, m_lo, n_m_tiles, q_start, k_start, N_Q, N_K = _key_program(
        BLOCK_N, BLOCK_M, N_Q, N_K, LEFT, RIGHT, CAUSAL, HAS_LEFT, CU_Q, CU_K, VARLEN)

    q_smem = gl.allocate_shared_memory(q_desc.dtype, [STAGES] + q_desc.block_type.shape, q_desc.layout)
    do_smem = gl.allocate_shared_memory(do_desc.dtype, [STAGES] + do_desc.block_type.shape, do_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [2] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [2] + v_desc.block_type.shape, v_desc.layout)
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    do_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    free_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    if ATOMIC_DQ:
        # An fp32 staging buffer for the first warpgroup's dQ tile, and both warpgroups' dS, two steps deep.
        dq_smem = gl.allocate_shared_memory(dq_desc.dtype, dq_desc.block_type.shape, dq_desc.layout)
        ds_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_M], q_desc.dtype)
        ds_smem = gl.allocate_shared_memory(q_desc.dtype, [2, BLOCK_N, BLOCK_M], ds_layout)
        ds_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        dqd_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(2):
            mbarrier.init(ds_bars.index(i), count=2)
            mbarrier.init(dqd_bars.index(i), count=1)
    else:  # unused
        dq_smem = q_smem
        ds_smem = q_smem
        ds_bars = q_bars
        dqd_bars = q_bars
    _init_bwd_barriers(kv_bar, q_bars, do_bars, free_bars, STAGES)

    qk_scale = sm_scale * LOG2E
    gl.warp_specialize(
        [
            (_bwd_compute_partition, (dk_desc, dv_desc, dq_desc, LSE, DELTA, q_smem, k_smem, v_smem, do_smem,
                                      dq_smem, ds_smem, ds_bars, dqd_bars, kv_bar, q_bars, do_bars, free_bars, off_z,
                                      off_hk, n0, m_lo, n_m_tiles, GROUP, N_Q, N_K, LEFT, RIGHT, qk_scale,
                                      sm_scale, stride_lz, stride_lh, BLOCK_M, WG_N, HEAD_DIM, STAGES, CAUSAL,
                                      ATOMIC_DQ, DQ_PERMUTED, 0, HAS_LEFT, q_start, k_start, DK, DV, stride_kh,
                                      stride_km, VARLEN)),
            (_bwd_compute_partition, (dk_desc, dv_desc, dq_desc, LSE, DELTA, q_smem, k_smem, v_smem, do_smem,
                                      dq_smem, ds_smem, ds_bars, dqd_bars, kv_bar, q_bars, do_bars, free_bars, off_z,
                                      off_hk, n0, m_lo, n_m_tiles, GROUP, N_Q, N_K, LEFT, RIGHT, qk_scale,
                                      sm_scale, stride_lz, stride_lh, BLOCK_M, WG_N, HEAD_DIM, STAGES, CAUSAL,
                                      ATOMIC_DQ, DQ_PERMUTED, 1, HAS_LEFT, q_start, k_start, DK, DV, stride_kh,
                                      stride_km, VARLEN)),
            (_bwd_load_partition, (q_desc, k_desc, v_desc, do_desc, q_smem, k_smem, v_smem, do_smem, kv_bar, q_bars,
                                   do_bars, free_bars, off_z, off_hk, n0, m_lo, n_m_tiles, GROUP, BLOCK_M, STAGES,
                                   q_start, k_start)),
        ],
        [4, 1],
        [240, 24],
    )


# ---- backward at d256: dK and dV by two warpgroups with different roles --------------------------------------------
#
# At d256 one warpgroup cannot hold both 64x256 fp32 accumulators (dK and dV: 256 registers a thread). Here both
# computing warpgroups work on the same 64 keys: the "P" warpgroup computes S^T = K Q^T, P^T and dV += P^T dO and
# hands P^T to the "dS" warpgroup through shared memory, which computes dP^T = V dO^T, dS^T and dK += dS^T Q.


@gluon.jit
def _split_p_partition(dv_desc, LSE, q_smem, k_smem, v_smem, do_smem, p_smem, kv_bar, q_bars, do_bars, free_bars,
                       p_bars, pfree_bars, off_z, off_hk, n0, m_lo, n_m_tiles, GROUP, N_Q, N_K, LEFT, RIGHT, qk_scale,
                       stride_lz, stride_lh, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                       STAGES: gl.constexpr, CAUSAL: gl.constexpr, HAS_LEFT: gl.constexpr, q_start, k_start, DV,
                       stride_kh, stride_km, VARLEN: gl.constexpr):
    """S^T = K Q^T, P^T (to shared memory for the dS warpgroup), dV += P^T dO; then stores dV."""
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_M, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    dtype: gl.constexpr = q_smem.dtype
    keys = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, s_layout))
    cols = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, s_layout))
    diag = N_K - N_Q + RIGHT
    diag_left = N_K - N_Q - LEFT
    dv = gl.zeros([BLOCK_N, HEAD_DIM], gl.float32, layout=o_layout)
    s_init = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, layout=s_layout)
    k = k_smem.index(0).reshape([BLOCK_N, HEAD_DIM])

    mbarrier.wait(kv_bar, 0)
    for it in range(GROUP * n_m_tiles):
        st = it % STAGES
        phase = (it // STAGES) & 1
        par = it % 2
        use = (it // 2) & 1
        off_h, start_m = _query_step(it, off_hk, GROUP, m_lo, n_m_tiles, BLOCK_M)
        q = q_smem.index(st).reshape([BLOCK_M, HEAD_DIM])
        do = do_smem.index(st).reshape([BLOCK_M, HEAD_DIM])
        mbarrier.wait(q_bars.index(st), phase)
        s_t = warpgroup_mma(k, q.permute((1, 0)), s_init, use_acc=False, is_async=True)
        rows = start_m + cols
        row_ptr = off_z.to(gl.int64) * stride_lz + off_h.to(gl.int64) * stride_lh + q_start + rows
        lse = gl.load(LSE + row_ptr, mask=rows < N_Q, other=float("inf")) * LOG2E
        s_t = warpgroup_mma_wait(0, deps=(s_t,))
        p_t = gl.exp2(s_t * qk_scale - lse[None, :])
        if CAUSAL:
            if start_m + diag < n0 + BLOCK_N - 1:  # some key of this program lies past some row's diagonal
                p_t = gl.where(keys[:, None] <= rows[None, :] + diag, p_t, 0.0)
        if HAS_LEFT:
            if start_m + BLOCK_M - 1 + diag_left > n0:  # some key of this program lies before some row's window
                p_t = gl.where(keys[:, None] >= rows[None, :] + diag_left, p_t, 0.0)
        if VARLEN:  # keys past a packed sequence are the next one's, not zeros (P^T = 0 makes dS^T 0 too)
            if n0 + BLOCK_N > N_K:
                p_t = gl.where(keys[:, None] < N_K, p_t, 0.0)
        p_t = p_t.to(dtype)
        mbarrier.wait(pfree_bars.index(par), use ^ 1)  # the dS warpgroup has read this buffer two steps ago
        p_smem.index(par).store(p_t)
        fence_async_shared()
        mbarrier.arrive(p_bars.index(par))
        mbarrier.wait(do_bars.index(st), phase)
        dv = warpgroup_mma(gl.convert_layout(p_t, a_layout), do, dv, is_async=True)
        dv = warpgroup_mma_wait(0, deps=(dv,))
        mbarrier.arrive(free_bars.index(st))

    last = GROUP * n_m_tiles - 1
    if last >= 0:  # the dS warpgroup's last dP^T = V dO^T has read V
        mbarrier.wait(pfree_bars.index(last % 2), (last // 2) & 1)
    _store_keys(dv_desc, v_smem, dv.to(dtype), off_z, off_hk, n0, k_start, N_K, DV, stride_kh, stride_km, VARLEN)


@gluon.jit
def _split_ds_partition(dk_desc, DELTA, q_smem, k_smem, v_smem, do_smem, p_smem, kv_bar, q_bars, do_bars, free_bars,
                        p_bars, pfree_bars, off_z, off_hk, n0, m_lo, n_m_tiles, GROUP, N_Q, N_K, sm_scale, stride_lz,
                        stride_lh, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                        STAGES: gl.constexpr, q_start, k_start, DK, stride_kh, stride_km, VARLEN: gl.constexpr):
    """dP^T = V dO^T, dS^T = P^T (dP^T - delta), dK += dS^T Q; then stores dK."""
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_M, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    dtype: gl.constexpr = q_smem.dtype
    cols = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, s_layout))
    dk = gl.zeros([BLOCK_N, HEAD_DIM], gl.float32, layout=o_layout)
    s_init = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, layout=s_layout)
    v = v_smem.index(0).reshape([BLOCK_N, HEAD_DIM])

    mbarrier.wait(kv_bar, 0)
    for it in range(GROUP * n_m_tiles):
        st = it % STAGES
        phase = (it // STAGES) & 1
        par = it % 2
        use = (it // 2) & 1
        off_h, start_m = _query_step(it, off_hk, GROUP, m_lo, n_m_tiles, BLOCK_M)
        q = q_smem.index(st).reshape([BLOCK_M, HEAD_DIM])
        do = do_smem.index(st).reshape([BLOCK_M, HEAD_DIM])
        mbarrier.wait(do_bars.index(st), phase)
        dp_t = warpgroup_mma(v, do.permute((1, 0)), s_init, use_acc=False, is_async=True)
        rows = start_m + cols
        row_ptr = off_z.to(gl.int64) * stride_lz + off_h.to(gl.int64) * stride_lh + q_start + rows
        delta = gl.load(DELTA + row_ptr, mask=rows < N_Q, other=0.0)
        dp_t = warpgroup_mma_wait(0, deps=(dp_t,))
        mbarrier.wait(p_bars.index(par), use)
        p_t = p_smem.index(par).load(s_layout).to(gl.float32)
        mbarrier.arrive(pfree_bars.index(par))
        ds_t = (p_t * (dp_t - delta[None, :])).to(dtype)
        mbarrier.wait(q_bars.index(st), phase)
        dk = warpgroup_mma(gl.convert_layout(ds_t, a_layout), q, dk, is_async=True)
        dk = warpgroup_mma_wait(0, deps=(dk,))
        mbarrier.arrive(free_bars.index(st))

    # The P warpgroup's last S^T = K Q^T has read K: its last P^T is in (this warpgroup waited for it).
    _store_keys(dk_desc, k_smem, (dk * sm_scale).to(dtype), off_z, off_hk, n0, k_start, N_K, DK, stride_kh, stride_km,
                VARLEN)


@gluon.jit
def _store_keys(desc, smem, x, off_z, off_hk, n0, k_start, N_K, ptr, stride_kh, stride_km, VARLEN: gl.constexpr):
    """The split-role kernel's dK or dV tile ``x``: staged in its K or V buffer for the copy engine (rows past the keys
    are clipped), or, for the last keys of a packed sequence, stored one by one (``_store_rows``)."""
    if VARLEN:
        if n0 + x.shape[0] > N_K:
            _store_rows(ptr + off_hk.to(gl.int64) * stride_kh, x, k_start + n0, N_K - n0, stride_km)
        else:
            _store_tile(desc, smem, x, off_z, off_hk, k_start + n0, 0)
    else:
        _store_tile(desc, smem, x, off_z, off_hk, n0, 0)


@gluon.jit
def attn_bwd_dkdv_split_kernel(q_desc, k_desc, v_desc, do_desc, dk_desc, dv_desc, LSE, DELTA, sm_scale,
                               stride_lz, stride_lh, GROUP, N_Q, N_K, LEFT, RIGHT, CU_Q, CU_K, DK, DV, stride_kh,
                               stride_km, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                               STAGES: gl.constexpr, CAUSAL: gl.constexpr, HAS_LEFT: gl.constexpr = False,
                               VARLEN: gl.constexpr = False):
    """dK and dV of dense attention for large head dims, deterministic (each program owns BLOCK_N keys of one key
    head). Grid: (cdiv(N_K, BLOCK_N), key/value heads, batch). ``q_desc``/``do_desc`` have BLOCK_M-row blocks, the
    others BLOCK_N-row blocks; DELTA = rowsum(O * dO), laid out like LSE. Sliding windows as
    ``attn_bwd_dkdv_ws_kernel``, packed sequences (VARLEN) too."""
    n0, off_z, off_hk, m_lo, n_m_tiles, q_start, k_start, N_Q, N_K = _key_program(
        BLOCK_N, BLOCK_M, N_Q, N_K, LEFT, RIGHT, CAUSAL, HAS_LEFT, CU_Q, CU_K, VARLEN)

    q_smem = gl.allocate_shared_memory(q_desc.dtype, [STAGES] + q_desc.block_type.shape, q_desc.layout)
    do_smem = gl.allocate_shared_memory(do_desc.dtype, [STAGES] + do_desc.block_type.shape, do_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [1] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [1] + v_desc.block_type.shape, v_desc.layout)
    p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_M], q_desc.dtype)
    p_smem = gl.allocate_shared_memory(q_desc.dtype, [2, BLOCK_N, BLOCK_M], p_layout)
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    do_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    free_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    p_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    pfree_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    _init_bwd_barriers(kv_bar, q_bars, do_bars, free_bars, STAGES)
    for i in gl.static_range(2):
        mbarrier.init(p_bars.index(i), count=1)
        mbarrier.init(pfree_bars.index(i), count=1)

    gl.warp_specialize(
        [
            (_split_p_partition, (dv_desc, LSE, q_smem, k_smem, v_smem, do_smem, p_smem, kv_bar, q_bars, do_bars,
                                  free_bars, p_bars, pfree_bars, off_z, off_hk, n0, m_lo, n_m_tiles, GROUP, N_Q, N_K,
                                  LEFT, RIGHT, sm_scale * LOG2E, stride_lz, stride_lh, BLOCK_M, BLOCK_N, HEAD_DIM,
                                  STAGES, CAUSAL, HAS_LEFT, q_start, k_start, DV, stride_kh, stride_km, VARLEN)),
            (_split_ds_partition, (dk_desc, DELTA, q_smem, k_smem, v_smem, do_smem, p_smem, kv_bar, q_bars, do_bars,
                                   free_bars, p_bars, pfree_bars, off_z, off_hk, n0, m_lo, n_m_tiles, GROUP, N_Q,
                                   N_K, sm_scale, stride_lz, stride_lh, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, q_start,
                                   k_start, DK, stride_kh, stride_km, VARLEN)),
            (_bwd_load_partition, (q_desc, k_desc, v_desc, do_desc, q_smem, k_smem, v_smem, do_smem, kv_bar, q_bars,
                                   do_bars, free_bars, off_z, off_hk, n0, m_lo, n_m_tiles, GROUP, BLOCK_M, STAGES,
                                   q_start, k_start)),
        ],
        [4, 1],
        [240, 24],
    )


# ---- backward: dQ, warp-specialised (large head dims) ----------------------------------------------------------------


@gluon.jit
def _dq_load_partition(q_desc, k_desc, v_desc, do_desc, q_smem, k_smem, v_smem, do_smem, qdo_bar, k_bars, v_bars,
                       free_bars, off_z, off_h, off_hk, m0, lo, n_tiles, BLOCK_N: gl.constexpr,
                       STAGES: gl.constexpr, q_start, k_start):
    """The dQ kernel's loading warp: the program's Q and dO once, then key tiles ``lo`` to ``lo + n_tiles`` through
    the ring (a packed sequence's rows from ``q_start`` and ``k_start``)."""
    WG_M: gl.constexpr = q_desc.block_type.shape[2]
    mbarrier.expect(qdo_bar, 2 * q_desc.block_type.nbytes + 2 * do_desc.block_type.nbytes)
    for w in gl.static_range(2):
        tma.async_copy_global_to_shared(q_desc, [off_z, off_h, q_start + m0 + w * WG_M, 0], qdo_bar, q_smem.index(w))
        tma.async_copy_global_to_shared(do_desc, [off_z, off_h, q_start + m0 + w * WG_M, 0], qdo_bar,
                                        do_smem.index(w))
    for j in range(n_tiles):
        s = j % STAGES
        mbarrier.wait(free_bars.index(s), ((j // STAGES) & 1) ^ 1)
        mbarrier.expect(k_bars.index(s), k_desc.block_type.nbytes)
        start_n = k_start + (lo + j) * BLOCK_N
        tma.async_copy_global_to_shared(k_desc, [off_z, off_hk, start_n, 0], k_bars.index(s), k_smem.index(s))
        mbarrier.expect(v_bars.index(s), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [off_z, off_hk, start_n, 0], v_bars.index(s), v_smem.index(s))


@gluon.jit
def _dq_compute_partition(dq_desc, LSE, DELTA, q_smem, k_smem, v_smem, do_smem, qdo_bar, k_bars, v_bars, free_bars,
                          off_z, off_h, m0, lo, n_tiles, N_Q, N_K, LEFT, RIGHT, qk_scale, sm_scale, stride_lz,
                          stride_lh, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr,
                          CAUSAL: gl.constexpr, WG: gl.constexpr, HAS_LEFT: gl.constexpr, q_start, DQ, stride_qh,
                          stride_qm, VARLEN: gl.constexpr):
    """One warpgroup's 64 query rows: dQ = scale * sum over key tiles of dS K, dS = P (dO V^T - delta)."""
    WG_M: gl.constexpr = q_smem.shape[3]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    dtype: gl.constexpr = q_smem.dtype
    rows = m0 + WG * WG_M + gl.arange(0, WG_M, layout=gl.SliceLayout(1, s_layout))
    cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    lse, delta = _row_stats(LSE, DELTA, off_z, off_h, rows, N_Q, True, stride_lz, stride_lh, q_start)
    lse = lse * LOG2E
    diag = N_K - N_Q + RIGHT
    diag_left = N_K - N_Q - LEFT
    m_wg = m0 + WG * WG_M
    # Key tile j sits at ring position j - lo. The key tiles wholly past this warpgroup's rows (causal) or wholly
    # before them (a left window bound) are skipped, as in the forward.
    n_own = _key_tiles(m_wg + WG_M, diag, N_K, BLOCK_N, CAUSAL)
    if HAS_LEFT:
        own_lo = gl.minimum(_first_key_tile(m_wg, diag_left, BLOCK_N, HAS_LEFT), lo + n_tiles)
        own_hi = gl.maximum(gl.minimum(n_own, lo + n_tiles), own_lo)
        left_masked = _left_masked_tiles(m_wg + WG_M, diag_left, BLOCK_N, HAS_LEFT)
        _release_tiles(k_bars, v_bars, free_bars, 0, own_lo - lo, STAGES)
    else:
        own_lo = 0
        own_hi = n_own
    dq = gl.zeros([WG_M, HEAD_DIM], gl.float32, layout=o_layout)
    s_init = gl.zeros([WG_M, BLOCK_N], gl.float32, layout=s_layout)
    q = q_smem.index(WG).reshape([WG_M, HEAD_DIM])
    do = do_smem.index(WG).reshape([WG_M, HEAD_DIM])

    mbarrier.wait(qdo_bar, 0)
    for j in range(own_lo, own_hi):
        st = (j - lo) % STAGES
        phase = ((j - lo) // STAGES) & 1
        k = k_smem.index(st).reshape([BLOCK_N, HEAD_DIM])
        v = v_smem.index(st).reshape([BLOCK_N, HEAD_DIM])
        mbarrier.wait(k_bars.index(st), phase)
        s = warpgroup_mma(q, k.permute((1, 0)), s_init, use_acc=False, is_async=True)
        mbarrier.wait(v_bars.index(st), phase)
        dp = warpgroup_mma(do, v.permute((1, 0)), s_init, use_acc=False, is_async=True)
        s = warpgroup_mma_wait(1, deps=(s,))
        p = gl.exp2(s * qk_scale - lse[:, None])
        if CAUSAL:
            if (j + 1) * BLOCK_N - 1 > m_wg + diag:  # some key of this tile lies past some row's diagonal
                p = gl.where(j * BLOCK_N + cols[None, :] <= rows[:, None] + diag, p, 0.0)
        if HAS_LEFT:
            if j < left_masked:  # some key of this tile lies before some row's window
                p = gl.where(j * BLOCK_N + cols[None, :] >= rows[:, None] + diag_left, p, 0.0)
        if VARLEN:  # keys past a packed sequence are the next one's, not zeros
            if (j + 1) * BLOCK_N > N_K:
                p = gl.where(j * BLOCK_N + cols[None, :] < N_K, p, 0.0)
        dp = warpgroup_mma_wait(0, deps=(dp,))
        ds = (p * (dp - delta[:, None])).to(dtype)
        dq = warpgroup_mma(gl.convert_layout(ds, a_layout), k, dq, is_async=True)
        dq = warpgroup_mma_wait(0, deps=(dq,))
        mbarrier.arrive(free_bars.index(st))
    if CAUSAL:
        _release_tiles(k_bars, v_bars, free_bars, own_hi - lo, n_tiles, STAGES)

    # This warpgroup's Q buffer stages its dQ for the copy engine (rows past the sequence are clipped); the last rows
    # of a packed sequence are stored one by one.
    dq = (dq * sm_scale).to(dtype)
    if VARLEN:
        if m_wg + WG_M > N_Q:
            _store_rows(DQ + off_h.to(gl.int64) * stride_qh, dq, q_start + m_wg, N_Q - m_wg, stride_qm)
        else:
            _store_tile(dq_desc, q_smem, dq, off_z, off_h, q_start + m_wg, WG)
    else:
        _store_tile(dq_desc, q_smem, dq, off_z, off_h, m_wg, WG)


@gluon.jit
def attn_bwd_dq_ws_kernel(q_desc, k_desc, v_desc, do_desc, dq_desc, LSE, DELTA, sm_scale, stride_lz, stride_lh,
                          GROUP, N_Q, N_K, LEFT, RIGHT, CU_Q, CU_K, DQ, stride_qh, stride_qm, BLOCK_M: gl.constexpr,
                          BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr,
                          HAS_LEFT: gl.constexpr = False, VARLEN: gl.constexpr = False):
    """dQ of dense attention, deterministic: each program owns BLOCK_M query rows of one head (64 per computing
    warpgroup) and loops over the key tiles. Grid: (cdiv(N_Q, BLOCK_M), heads, batch). ``q_desc``, ``do_desc`` and
    ``dq_desc`` have BLOCK_M / 2-row blocks, ``k_desc``/``v_desc`` BLOCK_N-row blocks. Causal grids run a head's
    longest (last) query tiles first. Sliding windows as ``attn_fwd_ws_kernel``: the program's key tiles run from
    ``lo``, its first row's first, to its last row's last. VARLEN: packed sequences as ``attn_fwd_ws_kernel``'s (a
    sequence's last rows store their dQ into ``DQ``, head stride ``stride_qh``, rows ``stride_qm`` apart)."""
    start_m, off_z, off_h = _query_program(CAUSAL)
    m0 = start_m * BLOCK_M
    off_hk = off_h // GROUP
    if VARLEN:
        q_start, k_start, N_Q, N_K = _sequence(CU_Q, CU_K, off_z)
        off_z = 0
        N_K = gl.where(m0 < N_Q, N_K, 0)  # a program past the sequence's rows loads and computes nothing
    else:
        q_start = 0
        k_start = 0
    lo = _first_key_tile(m0, N_K - N_Q - LEFT, BLOCK_N, HAS_LEFT)
    n_tiles = gl.maximum(_key_tiles(m0 + BLOCK_M, N_K - N_Q + RIGHT, N_K, BLOCK_N, CAUSAL) - lo, 0)

    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2] + q_desc.block_type.shape, q_desc.layout)
    do_smem = gl.allocate_shared_memory(do_desc.dtype, [2] + do_desc.block_type.shape, do_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    qdo_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    free_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(qdo_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_bars.index(i), count=1)
        mbarrier.init(v_bars.index(i), count=1)
        mbarrier.init(free_bars.index(i), count=2)  # one arrival per computing warpgroup

    qk_scale = sm_scale * LOG2E
    gl.warp_specialize(
        [
            (_dq_compute_partition, (dq_desc, LSE, DELTA, q_smem, k_smem, v_smem, do_smem, qdo_bar, k_bars, v_bars,
                                     free_bars, off_z, off_h, m0, lo, n_tiles, N_Q, N_K, LEFT, RIGHT, qk_scale,
                                     sm_scale, stride_lz, stride_lh, BLOCK_N, HEAD_DIM, STAGES, CAUSAL, 0,
                                     HAS_LEFT, q_start, DQ, stride_qh, stride_qm, VARLEN)),
            (_dq_compute_partition, (dq_desc, LSE, DELTA, q_smem, k_smem, v_smem, do_smem, qdo_bar, k_bars, v_bars,
                                     free_bars, off_z, off_h, m0, lo, n_tiles, N_Q, N_K, LEFT, RIGHT, qk_scale,
                                     sm_scale, stride_lz, stride_lh, BLOCK_N, HEAD_DIM, STAGES, CAUSAL, 1,
                                     HAS_LEFT, q_start, DQ, stride_qh, stride_qm, VARLEN)),
            (_dq_load_partition, (q_desc, k_desc, v_desc, do_desc, q_smem, k_smem, v_smem, do_smem, qdo_bar, k_bars,
                                  v_bars, free_bars, off_z, off_h, off_hk, m0, lo, n_tiles, BLOCK_N, STAGES, q_start,
                                  k_start)),
        ],
        [4, 1],
        [240, 24],
    )
