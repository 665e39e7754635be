"""Hand-written Triton kernels for the CUDA training step, where torch.compile's own are slow.

Two so far. RMSNorm(RoPE(x)) for the queries and keys (QK-norm after rotary positions), forward and
backward. Compiled by inductor, that pair was the step's largest generated kernel on an H100
(autoresearch-50m: 32 ms of a 346 ms step for the backward and 12 ms for the forward, several times
what its bytes cost at the GPU's memory bandwidth; docs/benchmarks.md, GPU). Here each row of
`head_dim` values is read once and written once: the forward computes the rotation and the norm in
fp32 registers; the backward recomputes both from the saved input (nothing else is kept) and applies
the norm's backward, then the rotation's transpose.

The rotation preserves each row's length, so the norm's scale is computed from x itself:
rms(RoPE(x)) = rms(x).

And the loss: cross-entropy over soft-capped logits, cap * tanh(z / cap). Compiled, the forward
wrote the capped logits in fp32 for the backward to read (at autoresearch-50m's 131,072 tokens a
micro-batch and 8,192 classes, 4.3 GB each way a micro-batch). Here the forward reads the bf16 logits
once and keeps one log-sum-exp per row; the backward reads them again and writes their gradient.

The ops are `torch.library.triton_op`s, so torch.compile traces around them
and keeps the kernels as they are. They run only on CUDA tensors (`available`); everywhere else the
model's plain ops run. `train.kernels=torch` turns them off.
"""

from __future__ import annotations

import os

import torch

triton = None
if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":  # a CPU process never imports it (its tests run
    try:  # Triton's interpreter on CPU tensors: tests/test_kernels.py). Triton comes with CUDA builds of torch.
        import triton
        import triton.language as tl
    except ImportError:  # pragma: no cover - depends on the install
        triton = None

ROWS_PER_PROGRAM = 32


def used(setting: str, device_type: str) -> str:
    """What train.kernels=`setting` runs on a device of this type, for the run's provenance: 'triton' (the loss, and
    QK-norm + RoPE where the model has QK-norm and a power-of-two head dimension, in these kernels) or 'torch'."""
    return "triton" if setting == "auto" and device_type == "cuda" and triton is not None else "torch"


def available(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Whether the fused kernel can take queries or keys `x` [B, T, H, D] with tables `cos`, `sin` [1, T, 1, D/2]:
    a CUDA tensor, Triton present, a power-of-two head dimension of at least 16 with unit stride (the other
    dimensions may have any strides), tables that need no gradient (the kernel gives them none)."""
    d = x.size(-1)
    return (triton is not None and x.is_cuda and x.dim() == 4 and d >= 16 and d & (d - 1) == 0 and x.stride(-1) == 1
            and x.dtype in (torch.bfloat16, torch.float16, torch.float32) and not (cos.requires_grad or sin.requires_grad))


if triton is not None:

    @triton.jit
    def _rows(pid, n_rows, T, H, ROWS: tl.constexpr):
        rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)  # int64 before the product: past 2^31 rows too
        return rows, rows < n_rows, rows // (H * T), (rows // H) % T, rows % H

    @triton.jit
    def _rotate_and_norm(x_ptr, cos_ptr, sin_ptr, xo, t, cols, m, HALF: tl.constexpr, EPS: tl.constexpr):
        """Rows of x at offsets `xo` (first halves; the second halves HALF further), rotated by position t and
        RMS-normalised, in fp32: (y1, y2, rstd, cos, sin)."""
        x1 = tl.load(x_ptr + xo, mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(x_ptr + xo + HALF, mask=m, other=0.0).to(tl.float32)
        to = t[:, None] * HALF + cols
        c = tl.load(cos_ptr + to, mask=m, other=0.0)
        s = tl.load(sin_ptr + to, mask=m, other=0.0)
        rstd = tl.rsqrt(tl.sum(x1 * x1 + x2 * x2, axis=1) / (2 * HALF) + EPS)[:, None]
        return (x1 * c + x2 * s) * rstd, (x2 * c - x1 * s) * rstd, rstd, c, s

    @triton.jit
    def _rope_norm_fwd(x_ptr, cos_ptr, sin_ptr, y_ptr, n_rows, T, H, sxb, sxt, sxh, syb, syt, syh, EPS: tl.constexpr,
                       HALF: tl.constexpr, ROWS: tl.constexpr):
        rows, live, b, t, h = _rows(tl.program_id(0), n_rows, T, H, ROWS)
        cols = tl.arange(0, HALF)[None, :]
        m = live[:, None]
        y1, y2, _, _, _ = _rotate_and_norm(x_ptr, cos_ptr, sin_ptr, (b * sxb + t * sxt + h * sxh)[:, None] + cols, t, cols, m, HALF, EPS)
        yo = (b * syb + t * syt + h * syh)[:, None] + cols
        tl.store(y_ptr + yo, y1.to(y_ptr.dtype.element_ty), mask=m)
        tl.store(y_ptr + yo + HALF, y2.to(y_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _rope_norm_bwd(g_ptr, x_ptr, cos_ptr, sin_ptr, dx_ptr, n_rows, T, H, sgb, sgt, sgh, sxb, sxt, sxh, sdb, sdt, sdh,
                       EPS: tl.constexpr,
                       HALF: tl.constexpr, ROWS: tl.constexpr):
        rows, live, b, t, h = _rows(tl.program_id(0), n_rows, T, H, ROWS)
        cols = tl.arange(0, HALF)[None, :]
        m = live[:, None]
        xo = (b * sxb + t * sxt + h * sxh)[:, None] + cols
        y1, y2, rstd, c, s = _rotate_and_norm(x_ptr, cos_ptr, sin_ptr, xo, t, cols, m, HALF, EPS)  # recomputed, not saved
        go = (b * sgb + t * sgt + h * sgh)[:, None] + cols
        g1 = tl.load(g_ptr + go, mask=m, other=0.0).to(tl.float32)
        g2 = tl.load(g_ptr + go + HALF, mask=m, other=0.0).to(tl.float32)
        dot = (tl.sum(g1 * y1 + g2 * y2, axis=1) / (2 * HALF))[:, None]
        dz1 = (g1 - y1 * dot) * rstd  # the norm's backward
        dz2 = (g2 - y2 * dot) * rstd
        do = (b * sdb + t * sdt + h * sdh)[:, None] + cols  # dx's own layout, which need not be x's
        tl.store(dx_ptr + do, (dz1 * c - dz2 * s).to(dx_ptr.dtype.element_ty), mask=m)  # the rotation's transpose
        tl.store(dx_ptr + do + HALF, (dz1 * s + dz2 * c).to(dx_ptr.dtype.element_ty), mask=m)

    def _launch_shape(x: torch.Tensor):
        B, T, H, D = x.shape
        n_rows = B * T * H
        return n_rows, T, H, D // 2, (triton.cdiv(n_rows, ROWS_PER_PROGRAM),)

    @torch.library.triton_op("pretrainlab::rope_norm", mutates_args=())
    def _rope_norm_op(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float) -> torch.Tensor:
        n_rows, T, H, half, grid = _launch_shape(x)
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        torch.library.wrap_triton(_rope_norm_fwd)[grid](
            x, cos, sin, y, n_rows, T, H, x.stride(0), x.stride(1), x.stride(2), y.stride(0), y.stride(1), y.stride(2), EPS=eps,
            HALF=half, ROWS=ROWS_PER_PROGRAM, num_warps=4)
        return y

    @torch.library.triton_op("pretrainlab::rope_norm_backward", mutates_args=())
    def _rope_norm_backward_op(g: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float) -> torch.Tensor:
        n_rows, T, H, half, grid = _launch_shape(x)
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        torch.library.wrap_triton(_rope_norm_bwd)[grid](
            g, x, cos, sin, dx, n_rows, T, H, g.stride(0), g.stride(1), g.stride(2), x.stride(0), x.stride(1), x.stride(2),
            dx.stride(0), dx.stride(1), dx.stride(2), EPS=eps,
            HALF=half, ROWS=ROWS_PER_PROGRAM, num_warps=4)
        return dx

    def _setup(ctx, inputs, output):
        x, cos, sin, eps = inputs
        ctx.save_for_backward(x, cos, sin)
        ctx.eps = eps

    def _backward(ctx, g):
        x, cos, sin = ctx.saved_tensors
        if g.stride(-1) != 1:
            g = g.contiguous()
        return torch.ops.pretrainlab.rope_norm_backward(g, x, cos, sin, ctx.eps), None, None, None

    _rope_norm_op.register_autograd(_backward, setup_context=_setup)


if triton is not None:

    @triton.jit
    def _capped(z, CAP: tl.constexpr):
        if CAP > 0:
            return CAP * (2.0 * tl.sigmoid(2.0 * z / CAP) - 1.0)  # CAP * tanh(z / CAP), in z's fp32
        return z

    @triton.jit
    def _softcap_ce_fwd(z_ptr, y_ptr, loss_ptr, lse_ptr, stride, V: tl.constexpr, CAP: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        base = z_ptr + row * stride
        m = tl.full((BLOCK,), float("-inf"), tl.float32)  # a running max and sum per lane, merged at the end
        acc = tl.zeros((BLOCK,), tl.float32)
        for start in range(0, V, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            s = _capped(tl.load(base + cols, mask=cols < V, other=0.0).to(tl.float32), CAP)
            s = tl.where(cols < V, s, float("-inf"))
            m_new = tl.maximum(m, s)
            empty = m_new == float("-inf")  # a lane that has seen only padding so far (exp(-inf - -inf) would be NaN)
            acc = tl.where(empty, 0.0, acc * tl.exp(m - m_new) + tl.exp(s - m_new))
            m = m_new
        mx = tl.max(m, axis=0)
        lse = mx + tl.log(tl.sum(tl.where(m == float("-inf"), 0.0, acc * tl.exp(m - mx)), axis=0))
        y = tl.load(y_ptr + row)
        ok = (y >= 0) & (y < V)
        s_y = _capped(tl.load(base + tl.where(ok, y, 0)).to(tl.float32), CAP)
        tl.store(lse_ptr + row, lse)
        tl.store(loss_ptr + row, tl.where(ok, lse - s_y, float("nan")))  # a target outside the vocabulary: NaN, not a read out of bounds

    @triton.jit
    def _softcap_ce_bwd(z_ptr, y_ptr, lse_ptr, dloss_ptr, dz_ptr, stride, dstride, V: tl.constexpr, V_PAD: tl.constexpr,
                        CAP: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        base = z_ptr + row * stride
        lse = tl.load(lse_ptr + row)
        dl = tl.load(dloss_ptr + row)
        y = tl.load(y_ptr + row)
        for start in range(0, V_PAD, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            live = cols < V
            z = tl.load(base + cols, mask=live, other=0.0).to(tl.float32)
            s = _capped(z, CAP)
            g = tl.exp(s - lse) - tl.where(cols == y, 1.0, 0.0)
            if CAP > 0:
                t = s / CAP
                g = g * (1.0 - t * t)
            tl.store(dz_ptr + row * dstride + cols, tl.where(live, g * dl, 0.0).to(dz_ptr.dtype.element_ty), mask=cols < V_PAD)

    CE_BLOCK = 1024

    @torch.library.triton_op("pretrainlab::softcap_ce", mutates_args=())
    def _softcap_ce_op(z: torch.Tensor, y: torch.Tensor, vocab: int, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
        n = z.size(0)
        loss = torch.empty(n, dtype=torch.float32, device=z.device)
        lse = torch.empty(n, dtype=torch.float32, device=z.device)
        torch.library.wrap_triton(_softcap_ce_fwd)[(n,)](z, y, loss, lse, z.stride(0), V=vocab, CAP=cap, BLOCK=CE_BLOCK, num_warps=4)
        return loss, lse

    @torch.library.triton_op("pretrainlab::softcap_ce_backward", mutates_args=())
    def _softcap_ce_backward_op(dloss: torch.Tensor, z: torch.Tensor, y: torch.Tensor, lse: torch.Tensor, vocab: int, cap: float) -> torch.Tensor:
        n = z.size(0)
        dz = torch.empty(z.shape, dtype=z.dtype, device=z.device)
        torch.library.wrap_triton(_softcap_ce_bwd)[(n,)](z, y, lse, dloss, dz, z.stride(0), dz.stride(0), V=vocab,
                                                          V_PAD=z.size(1), CAP=cap, BLOCK=CE_BLOCK, num_warps=4)
        return dz

    def _ce_setup(ctx, inputs, output):
        z, y, vocab, cap = inputs
        ctx.save_for_backward(z, y, output[1])
        ctx.vocab, ctx.cap = vocab, cap

    def _ce_backward(ctx, dloss, _dlse):
        z, y, lse = ctx.saved_tensors
        return torch.ops.pretrainlab.softcap_ce_backward(dloss.contiguous(), z, y, lse, ctx.vocab, ctx.cap), None, None, None

    _softcap_ce_op.register_autograd(_ce_backward, setup_context=_ce_setup)


def ce_available(z: torch.Tensor) -> bool:
    """Whether `softcap_cross_entropy` can take logits `z` [N, padded vocab]: CUDA, Triton, unit stride along the vocabulary."""
    return triton is not None and z.is_cuda and z.dim() == 2 and z.stride(-1) == 1 and z.dtype in (torch.bfloat16, torch.float16, torch.float32)


def softcap_cross_entropy(z: torch.Tensor, y: torch.Tensor, vocab: int, cap: float | None) -> torch.Tensor:
    """Each row's cross-entropy [N] (fp32) of logits `z` [N, >= vocab] (the columns past `vocab` are padding, left
    out and given zero gradient) soft-capped as cap * tanh(z / cap) (no cap: None or 0), against targets `y` [N]."""
    return torch.ops.pretrainlab.softcap_ce(z, y.reshape(-1).contiguous(), vocab, float(cap or 0.0))[0]


def rope_norm(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RMSNorm(RoPE(x)) in one kernel each way (see `available` for what it takes). `x` [B, T, H, D];
    `cos`, `sin` [1, T, 1, D/2] fp32. The norm's epsilon is fp32's, as F.rms_norm uses on the
    plain path's fp32 rotation output."""
    half = x.size(-1) // 2
    cos, sin = (t.reshape(-1, half).float().contiguous() for t in (cos, sin))
    return torch.ops.pretrainlab.rope_norm(x, cos, sin, torch.finfo(torch.float32).eps)
