"""A modern small GPT in the nanoGPT / modded-nanogpt / nanochat lineage.

    tokens [B, T] -> embedding -> RMSNorm -> n_layer x Block -> RMSNorm -> lm_head -> softcap
    Block: x + Attn(RMSNorm(x)), then x + MLP(RMSNorm(x))

- RoPE positions (rotate half), applied to queries and keys.
- RMSNorm without learned gain (F.rms_norm), pre-norm, plus a norm on the embedding output.
  (Eager fp32 training on CPU runs it, and ReLU^2, as autograd Functions with hand-written
  backwards: the same math in fewer passes; see `_eager_cpu_training`.)
- QK-norm: queries and keys are RMS-normalised after RoPE, which bounds attention logits
  and removes a common source of loss spikes (as in OLMo 2 / modded-nanogpt).
- ReLU^2 MLP (Primer), no biases anywhere.
- Untied input embedding and output head.
- Logit soft-cap: cap * tanh(logits / cap) (Gemma 2); keeps early logits bounded.
- Optional GQA (n_kv_head < n_head) through SDPA's enable_gqa.
- Optional value embeddings (modded-nanogpt / nanochat): on alternating layers, a second
  token embedding is mixed into the attention values, v = a * v + b * ve[token], with
  learned per-layer scalars (a, b) initialised to (1, 1).
Attention goes through F.scaled_dot_product_attention (flash kernels on GPU). On CUDA, QK-norm +
RoPE and the soft-capped cross-entropy run in model/kernels.py's Triton kernels (train.kernels=auto;
the same math, faster: docs/benchmarks.md), elsewhere as the plain ops below.

Initialisation (see `GPT.reset_parameters`):
- token and value embeddings: N(0, 1) (they are RMS-normalised / scaled by learned gates);
- q, k, v and MLP input matrices: U(-a, a) with a = sqrt(3 / n_embd), i.e. std 1/sqrt(n_embd);
- attention and MLP output projections: zeros, so every block starts as the identity and
  the residual stream is the embedding (as nanochat / modded-nanogpt);
- lm_head: N(0, 0.001^2), so initial predictions are near uniform (loss ~ ln vocab).
The embedding tables are padded to a multiple of 64 rows for kernel efficiency; logits
are sliced back to `vocab_size`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..config import ModelConfig
from . import kernels


_SDPA = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
         "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


def auto_attention_kernel() -> str | None:
    """train.attention=auto: cuDNN's kernel on a Hopper GPU or newer, where it ran causal bf16
    attention 1.8x faster than flash attention 2 (docs/benchmarks.md, GPU); elsewhere None,
    torch's own order (unmeasured here)."""
    if torch.cuda.is_available() and torch.backends.cudnn.is_available() and torch.cuda.get_device_capability() >= (9, 0):
        return "cudnn"
    return None


def attention_kernel_used(name: str, device_type: str) -> str:
    """What train.attention=`name` runs on a device of this type, for the run's provenance."""
    if device_type != "cuda":
        return "cpu"
    return (auto_attention_kernel() if name == "auto" else name) or "torch's order"


@contextmanager
def attention_kernels(name: str):
    """A context in which scaled_dot_product_attention tries kernel `name` first (train.attention),
    then the others in torch's order; a kernel that cannot run an input passes it on.

    The kernel is fixed when a model is traced, so compile inside the context. torch.compile's
    on-disk caches do not key on it: the context tags their keys with the kernel, or a model
    compiled before with another kernel would come back from the cache with that one."""
    name = auto_attention_kernel() if name == "auto" else name
    if name is None:
        yield
        return
    first = _SDPA[name]
    config = torch.compiler.config
    tagged = config.patch(cache_key_tag=f"{config.cache_key_tag}|sdpa={name}") if hasattr(config, "cache_key_tag") else nullcontext()
    with sdpa_kernel([first, *(b for b in _SDPA.values() if b != first)], set_priority=True), tagged:
        yield


def _eager_cpu_training(x: torch.Tensor) -> bool:
    """Whether `x` is a CPU activation of an eager training step: where the hand-written
    backwards below pay (torch.compile fuses the plain ops itself; CUDA has a fused RMSNorm
    backward; without grad only the forward runs, and the plain forward is one kernel)."""
    return (x.is_cpu and x.dtype == torch.float32 and x.requires_grad and torch.is_grad_enabled()
            and not torch.compiler.is_compiling())


class _RMSNorm(torch.autograd.Function):
    """RMSNorm with its backward in five passes: dx = rstd * (g - y * mean(g * y)). Autograd's
    own backward of F.rms_norm on CPU runs about 30 small ops; this one 5."""

    @staticmethod
    def forward(ctx, x):
        rstd = torch.rsqrt(x.square().mean(-1, keepdim=True).add_(torch.finfo(x.dtype).eps))
        y = x * rstd
        ctx.save_for_backward(y, rstd)
        return y

    @staticmethod
    @once_differentiable  # a second derivative through it raises instead of coming out wrong
    def backward(ctx, g):
        y, rstd = ctx.saved_tensors
        return (g - y * (g * y).mean(-1, keepdim=True)).mul_(rstd)


class _ReluSquared(torch.autograd.Function):
    """relu(x)^2 keeping relu(x) for a backward of two passes, 2 * relu(x) * g (autograd's own
    runs four over the MLP's widest activation)."""

    @staticmethod
    def forward(ctx, x):
        r = torch.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    @once_differentiable  # a second derivative through it raises instead of coming out wrong
    def backward(ctx, g):
        (r,) = ctx.saved_tensors
        return g.mul(r).mul_(2.0)


class _RopeNorm(torch.autograd.Function):
    """RMSNorm(RoPE(x)) for queries and keys, forward and backward each in a few whole-tensor
    passes (autograd's runs about 20 ops on half-width slices). The backward undoes the norm,
    then rotates back: RoPE's inverse is its transpose."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        d = x.size(-1) // 2
        x1, x2 = x[..., :d], x[..., d:]
        y = torch.empty_like(x)
        y1, y2 = y[..., :d], y[..., d:]
        torch.mul(x1, cos, out=y1).addcmul_(x2, sin)
        torch.mul(x2, cos, out=y2).addcmul_(x1, sin, value=-1.0)
        rstd = torch.rsqrt(y.square().mean(-1, keepdim=True).add_(torch.finfo(x.dtype).eps))
        y.mul_(rstd)
        ctx.save_for_backward(y, rstd, cos, sin)
        return y

    @staticmethod
    @once_differentiable  # a second derivative through it raises instead of coming out wrong
    def backward(ctx, g):
        y, rstd, cos, sin = ctx.saved_tensors
        gn = (g - y * (g * y).mean(-1, keepdim=True)).mul_(rstd)
        d = gn.size(-1) // 2
        g1, g2 = gn[..., :d], gn[..., d:]
        dx = torch.empty_like(gn)
        torch.mul(g1, cos, out=dx[..., :d]).addcmul_(g2, sin, value=-1.0)
        torch.mul(g2, cos, out=dx[..., d:]).addcmul_(g1, sin)
        return dx, None, None


def norm(x: torch.Tensor) -> torch.Tensor:
    return _RMSNorm.apply(x) if _eager_cpu_training(x) else F.rms_norm(x, (x.size(-1),))


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    return _ReluSquared.apply(x) if _eager_cpu_training(x) else F.relu(x).square()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [B, T, H, D]; cos/sin: [1, T, 1, D/2]
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


def has_value_embed(layer_idx: int, n_layer: int) -> bool:
    """Alternating layers, always including the last one."""
    return layer_idx % 2 == (n_layer - 1) % 2


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.n_head = cfg.n_head
        self.n_kv_head = cfg.n_kv_head or cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.qk_norm = cfg.qk_norm
        kv_dim = self.n_kv_head * self.head_dim
        self.c_q = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.c_k = nn.Linear(cfg.n_embd, kv_dim, bias=False)
        self.c_v = nn.Linear(cfg.n_embd, kv_dim, bias=False)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.ve_lambdas = nn.Parameter(torch.ones(2)) if cfg.value_embeds and has_value_embed(layer_idx, cfg.n_layer) else None
        self.fused = True  # QK-norm + RoPE through model/kernels.py where it can run (GPT.use_kernels)

    def forward(self, x, cos, sin, ve=None):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:
            v = self.ve_lambdas[0] * v + self.ve_lambdas[1] * ve.view_as(v)
        if self.qk_norm and self.fused and kernels.available(q, cos, sin) and kernels.available(k, cos, sin):
            q, k = kernels.rope_norm(q, cos, sin), kernels.rope_norm(k, cos, sin)
        elif self.qk_norm and _eager_cpu_training(q) and not (cos.requires_grad or sin.requires_grad):  # no grads for the tables
            q, k = _RopeNorm.apply(q, cos, sin), _RopeNorm.apply(k, cos, sin)
        else:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            if self.qk_norm:
                q, k = norm(q), norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv_head != self.n_head)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = int(cfg.mlp_ratio * cfg.n_embd)
        self.c_fc = nn.Linear(cfg.n_embd, hidden, bias=False)
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(relu_squared(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn = CausalSelfAttention(cfg, layer_idx)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, ve=None):
        x = x + self.attn(norm(x), cos, sin, ve)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.vocab_size is not None, "resolve model.vocab_size from the corpus first"
        self.cfg = cfg
        self.padded_vocab = math.ceil(cfg.vocab_size / 64) * 64
        kv_dim = (cfg.n_kv_head or cfg.n_head) * (cfg.n_embd // cfg.n_head)
        self.wte = nn.Embedding(self.padded_vocab, cfg.n_embd)
        self.value_embeds = nn.ModuleDict(
            {str(i): nn.Embedding(self.padded_vocab, kv_dim) for i in range(cfg.n_layer) if cfg.value_embeds and has_value_embed(i, cfg.n_layer)}
        )
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.lm_head = nn.Linear(cfg.n_embd, self.padded_vocab, bias=False)
        cos, sin = self._rope_tables(cfg.seq_len)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.fused_loss = True  # the loss through model/kernels.py where it can run (use_kernels)
        self.reset_parameters()

    def _rope_tables(self, seq_len: int):
        head_dim = self.cfg.n_embd // self.cfg.n_head
        inv_freq = self.cfg.rope_base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
        return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]

    def use_kernels(self, name: str) -> None:
        """train.kernels: 'auto' runs model/kernels.py's fused QK-norm + RoPE and soft-capped cross-entropy on CUDA,
        'torch' the plain ops."""
        self.fused_loss = name == "auto"
        for block in self.blocks:
            block.attn.fused = name == "auto"

    @torch.no_grad()
    def reset_parameters(self):
        bound = math.sqrt(3.0 / self.cfg.n_embd)
        nn.init.normal_(self.wte.weight, std=1.0)
        for emb in self.value_embeds.values():
            nn.init.normal_(emb.weight, std=1.0)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_lambdas is not None:
                block.attn.ve_lambdas.fill_(1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, per_row: bool = False) -> torch.Tensor:
        """idx [B, T] -> logits [B, T, vocab_size] (fp32); with targets, the mean loss, or
        each row's mean loss [B] if `per_row` (the trainer's per-domain train loss)."""
        T = idx.size(1)
        assert T <= self.cos.size(1), f"sequence of {T} tokens exceeds model.seq_len={self.cos.size(1)}"
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = norm(self.wte(idx))
        if (self.cfg.residual_dtype == "bfloat16" and torch.is_autocast_enabled(x.device.type)
                and torch.get_autocast_dtype(x.device.type) == torch.bfloat16):
            x = x.to(torch.bfloat16)  # each block's output then stays in it (fp16 autocast keeps fp32: its range is too narrow)
        for i, block in enumerate(self.blocks):
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, cos, sin, ve)
        head = self.lm_head(norm(x))
        if targets is not None and self.fused_loss and kernels.ce_available(flat := head.view(-1, head.size(-1))):
            losses = kernels.softcap_cross_entropy(flat, targets, self.cfg.vocab_size, self.cfg.logit_softcap)
            return losses.view(targets.shape).mean(1) if per_row else losses.mean()
        logits = head[..., : self.cfg.vocab_size].float()
        if self.cfg.logit_softcap:
            cap = self.cfg.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        if targets is None:
            return logits
        if per_row:
            return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none").view(targets.shape).mean(1)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))

    # --- accounting ----------------------------------------------------------------

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def num_embedding_params(self) -> int:
        return self.wte.weight.numel() + sum(e.weight.numel() for e in self.value_embeds.values())

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 x non-embedding params + causal attention.

        Embedding lookups are not matmuls, so their params are excluded (the lm_head is a
        matmul and counts). Attention scores and values: 12 * n_layer * n_embd * seq_len
        FLOPs per token (forward 4*L*d*T, x3 for backward) as in PaLM appendix B, counted
        for full (non-causal-halved) attention like nanoGPT/nanochat so MFU is comparable.
        """
        c = self.cfg
        return 6 * (self.num_params() - self.num_embedding_params()) + 12 * c.n_layer * c.n_embd * c.seq_len
