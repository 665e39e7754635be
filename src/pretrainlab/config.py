"""Typed run configuration: one dataclass per component, gathered in a `Recipe`.

Each component owns its config (model/ reads `ModelConfig`, the optimizer `OptimConfig`,
...). Every field has a type, a default and a one-line doc (the `doc` metadata), which
doubles as help text in `pretrainlab recipes --fields`. Validation lives in
`__post_init__` and raises `ValueError` naming the field to change.

`apply_overrides(recipe, ["model.n_layer=6", ...])` is how `--set` works: dotted keys,
values parsed by the field's declared type, unknown keys rejected with a suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import functools
import typing
from dataclasses import dataclass, field
from typing import Any


def doc(text: str, default: Any = dataclasses.MISSING, **kw) -> Any:
    """A dataclass field with a one-line doc string stored in its metadata."""
    if isinstance(default, (dict, list)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"doc": text}, **kw)
    return field(default=default, metadata={"doc": text}, **kw)


@dataclass
class ModelConfig:
    vocab_size: int | None = doc("token vocabulary; None = the corpus tokenizer's", None)
    seq_len: int = doc("context length in tokens (training and evaluation)", 256)
    n_layer: int = doc("number of transformer blocks", 4)
    n_embd: int = doc("residual stream width", 128)
    n_head: int = doc("query heads; head_dim = n_embd / n_head", 4)
    n_kv_head: int | None = doc("key/value heads for GQA; None = n_head (plain MHA)", None)
    mlp_ratio: float = doc("MLP hidden width as a multiple of n_embd", 4.0)
    rope_base: float = doc("RoPE base frequency", 10000.0)
    qk_norm: bool = doc("RMS-normalise queries and keys before attention", True)
    logit_softcap: float = doc("tanh soft-cap on output logits (as in Gemma 2); 0 = off", 15.0)
    value_embeds: bool = doc("add per-layer value embeddings on alternating layers", False)
    residual_dtype: str = doc("the residual stream's dtype under bf16 autocast: 'float32' (autocast's own: fp32 "
                              "embeddings, norms and residual adds) or 'bfloat16' (half the bytes in the memory-bound "
                              "elementwise work); no effect in fp32 training. Under train.parallel=fsdp with bf16 the blocks' inputs are "
                              "cast to bf16 by FSDP's mixed-precision policy either way", "float32")

    def __post_init__(self):
        for name in ("seq_len", "n_layer", "n_embd", "n_head"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}: "
                f"pick n_head among {_divisors(self.n_embd)}"
            )
        if (self.n_embd // self.n_head) % 2:
            raise ValueError(
                f"head_dim = model.n_embd/model.n_head = {self.n_embd // self.n_head} must be "
                "even for RoPE: change model.n_head or model.n_embd"
            )
        kv = self.n_kv_head or self.n_head
        if kv < 1 or self.n_head % kv:
            raise ValueError(
                f"model.n_kv_head={self.n_kv_head} must divide model.n_head={self.n_head}: "
                f"pick among {_divisors(self.n_head)}"
            )
        if self.vocab_size is not None and self.vocab_size < 2:
            raise ValueError(f"model.vocab_size must be >= 2 or none, got {self.vocab_size}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"model.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.logit_softcap < 0:
            raise ValueError(f"model.logit_softcap must be >= 0 (0 = off), got {self.logit_softcap}")
        if self.residual_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"model.residual_dtype must be float32 or bfloat16, got {self.residual_dtype!r}")


@dataclass
class OptimConfig:
    name: str = doc("'muon' (Muon for hidden matrices + AdamW for the rest) or 'adamw'", "muon")
    lr: float = doc("AdamW learning rate (all params for 'adamw'; embeddings/head/scalars for 'muon')", 3e-3)
    muon_lr: float = doc("Muon learning rate for hidden weight matrices", 0.02)
    muon_momentum: float = doc("Muon Nesterov momentum", 0.95)
    weight_decay: float = doc("decoupled weight decay on matrices (AdamW and Muon)", 0.0)
    beta1: float = doc("AdamW beta1", 0.9)
    beta2: float = doc("AdamW beta2", 0.95)
    eps: float = doc("AdamW epsilon", 1e-8)
    grad_clip: float = doc("clip the global grad-norm to this value; 0 = off", 1.0)
    schedule: str = doc("LR schedule: 'wsd' (warmup, constant, linear warmdown) or 'cosine'", "wsd")
    warmup_frac: float = doc("share of the budget spent warming up linearly from 0", 0.02)
    warmdown_frac: float = doc("share of the budget spent decaying at the end (wsd only)", 0.4)
    final_lr_frac: float = doc("LR at the end of training as a fraction of the peak", 0.0)

    def __post_init__(self):
        if self.name not in ("muon", "adamw"):
            raise ValueError(f"optim.name must be 'muon' or 'adamw', got {self.name!r}")
        if self.schedule not in ("wsd", "cosine"):
            raise ValueError(f"optim.schedule must be 'wsd' or 'cosine', got {self.schedule!r}")
        for name in ("lr", "muon_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"optim.{name} must be > 0, got {getattr(self, name)}")
        for name in ("warmup_frac", "warmdown_frac", "final_lr_frac", "beta1", "beta2", "muon_momentum"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"optim.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.warmup_frac + (self.warmdown_frac if self.schedule == "wsd" else 0) > 1:
            raise ValueError("optim.warmup_frac + optim.warmdown_frac must be <= 1")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("optim.grad_clip and optim.weight_decay must be >= 0")


@dataclass
class DataConfig:
    corpus: str = doc("'builtin' or the path of a corpus made by `pretrainlab data prepare`", "builtin")
    tokenizer: str = doc("tokenizer of the builtin corpus: 'byte' or 'bpe:VOCAB'", "byte")
    weights: dict[str, float] | None = doc("domain sampling weights, e.g. code:1,docs:1,literature:2; none = by size", None)

    def __post_init__(self):
        if not self.corpus:
            raise ValueError("data.corpus is empty: use 'builtin' or a prepared corpus path")
        if self.tokenizer != "byte" and not _is_bpe_spec(self.tokenizer):
            raise ValueError(f"data.tokenizer must be 'byte' or 'bpe:VOCAB' (e.g. bpe:8192), got {self.tokenizer!r}")
        if self.weights is not None:
            if any((not math.isfinite(w)) or w < 0 for w in self.weights.values()):
                raise ValueError(f"data.weights must be finite and >= 0, got {self.weights}")
            if not any(w > 0 for w in self.weights.values()):
                raise ValueError("data.weights are all zero: give at least one domain a positive weight")


@dataclass
class TrainConfig:
    batch_tokens: int = doc("global batch in tokens per optimizer step (identical on 1 or N processes)", 4096)
    micro_batch_rows: int = doc("sequences per forward pass per process; gradient accumulation makes up the rest", 16)
    device: str = doc("'auto' (cuda if available), 'cpu' or 'cuda'", "auto")
    dtype: str = doc("'auto' (bf16 autocast on GPU, fp32 on CPU), 'float32' or 'bfloat16'", "auto")
    compile: str = doc("torch.compile the model (and Muon's Newton-Schulz): 'auto' (on CUDA; on one CPU process when the "
                       "budget left after the first step repays compile's warm-up, see train/compiling.py), 'on' or 'off'", "auto")
    compile_mode: str = doc("how torch.compile tunes: 'default', or 'max-autotune' (inductor benchmarks Triton matmul templates "
                            "against cuBLAS and fuses elementwise work into the winners; minutes of warm-up, no CUDA graphs)",
                            "default")
    parallel: str = doc("across processes: 'ddp' (a full replica per process) or 'fsdp' (FSDP2: parameters, grads and "
                        "optimizer state sharded; sharded checkpoints that resume on any number of processes)", "ddp")
    num_threads: int = doc("CPU threads for this process; 0 = torch's default (split across processes)", 0)
    attention: str = doc("the attention kernel on CUDA: 'auto' (cuDNN on Hopper GPUs, else torch's order; model/gpt.py), 'flash', 'cudnn', "
                         "'efficient' or 'math'; each falls back to torch's next kernel where it cannot run", "auto")
    kernels: str = doc("hand-written Triton kernels on CUDA: 'auto' (QK-norm + RoPE fused, and the soft-capped cross-entropy, "
                       "forward and backward; model/kernels.py) or 'torch' (the plain ops, compiled as the rest)", "auto")
    log_every: int = doc("flush telemetry every N steps; each step still gets its own row", 1)
    eval_every: int = doc("evaluate val_bpb every N steps; 0 = only at the end", 0)
    eval_every_frac: float = doc("also evaluate each time this share of the budget is used (e.g. 0.25); 0 = off", 0.0)
    eval_at_start: bool = doc("evaluate the untrained model at step 0 (each domain's starting point)", False)
    ckpt_every: int = doc("write an atomic checkpoint every N steps (and at the end); 0 = none, except on SIGTERM or Ctrl-C", 0)
    ckpt_keep: int = doc("how many checkpoints to keep", 2)
    diverge_ratio: float = doc("stop as diverged when loss exceeds this multiple of its best EMA", 2.5)
    diverge_patience: int = doc("...for this many consecutive steps (NaN/Inf stop at once)", 10)

    def __post_init__(self):
        for name in ("batch_tokens", "micro_batch_rows", "log_every", "ckpt_keep", "diverge_patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "ckpt_every", "num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"train.device must be auto, cpu or cuda, got {self.device!r}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"train.dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        self.compile = {"true": "on", "yes": "on", "1": "on", "false": "off", "no": "off", "0": "off"}.get(self.compile.lower(), self.compile.lower())
        if self.compile not in ("auto", "on", "off"):
            raise ValueError(f"train.compile must be auto, on or off, got {self.compile!r}")
        if self.compile_mode not in ("default", "max-autotune"):
            raise ValueError(f"train.compile_mode must be default or max-autotune, got {self.compile_mode!r}")
        if self.attention not in ("auto", "flash", "cudnn", "efficient", "math"):
            raise ValueError(f"train.attention must be auto, flash, cudnn, efficient or math, got {self.attention!r}")
        if self.kernels not in ("auto", "torch"):
            raise ValueError(f"train.kernels must be auto or torch, got {self.kernels!r}")
        if self.parallel not in ("ddp", "fsdp"):
            raise ValueError(f"train.parallel must be 'ddp' or 'fsdp', got {self.parallel!r}")
        if not 0 <= self.eval_every_frac < 1:
            raise ValueError(f"train.eval_every_frac must be in [0, 1), got {self.eval_every_frac}")
        if self.diverge_ratio <= 1:
            raise ValueError(f"train.diverge_ratio must be > 1, got {self.diverge_ratio}")


@dataclass
class BudgetConfig:
    tokens: int = doc("stop after this many training tokens; 0 = no token budget", 0)
    seconds: float = doc("stop after this many seconds of training (excludes warm-up/compile, eval, checkpoints)", 60.0)
    flops: float = doc("stop after this many training FLOPs (6N per token + attention); 0 = none", 0.0)
    wall_limit_s: float = doc("hard wall-clock cap for the whole run; ends with status 'timeout'", 0.0)

    def __post_init__(self):
        if min(self.tokens, self.seconds, self.flops, self.wall_limit_s) < 0:
            raise ValueError("budget.* must be >= 0")
        if not (self.tokens or self.seconds or self.flops):
            raise ValueError("no budget: set budget.tokens, budget.seconds or budget.flops (e.g. --set budget.seconds=60)")


@dataclass
class EvalConfig:
    tokens_per_domain: int = doc("validation tokens per domain; the same tokens every time", 32768)
    batch_rows: int = doc("sequences per evaluation forward pass", 16)

    def __post_init__(self):
        if self.tokens_per_domain < 1 or self.batch_rows < 1:
            raise ValueError("eval.tokens_per_domain and eval.batch_rows must be >= 1")


@dataclass
class FaultConfig:
    """Deliberate faults, off by default: they exist so the run doctor's detectors can be
    tested against the real trainer (tests/test_doctor_faults.py)."""

    data_sleep_s: float = doc("sleep this long in the data loader every step (a stalled input pipeline)", 0.0)
    nan_at_step: int = doc("make the loss NaN at this step (0 = never)", 0)
    replay_on_resume: bool = doc("on --resume, rewind the data loader to the start (replays seen data)", False)
    mixture_bias: str = doc("draw every other batch row from this domain, ignoring data.weights", "")
    slow_rank: int = doc("under DDP, this rank sleeps faults.slow_rank_s in its forward pass every step (a straggler; -1 = none)", -1)
    slow_rank_s: float = doc("the straggler's extra time per step", 0.0)

    def __post_init__(self):
        if self.data_sleep_s < 0 or self.nan_at_step < 0 or self.slow_rank_s < 0:
            raise ValueError("faults.data_sleep_s, faults.nan_at_step and faults.slow_rank_s must be >= 0")


@dataclass
class Recipe:
    name: str = doc("recipe name", "custom")
    seed: int = doc("random seed for init and data order", 0)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Short content hash of the resolved config (name excluded). Only values that differ from
        _HASH_BASE (the fields' defaults, frozen) enter it, so a field added later leaves every
        earlier recipe's hash as it was."""
        d = _hash_fields(self, _HASH_BASE)
        d.pop("name", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        if not isinstance(d, dict):
            raise ValueError(f"a recipe is a JSON object of sections (model, optim, data, train, budget, eval), not a "
                             f"{type(d).__name__}")
        train = d.get("train")
        if isinstance(train, dict) and isinstance(train.get("compile"), bool):  # recipe.json from before auto|on|off
            d = {**d, "train": {**train, "compile": "on" if train["compile"] else "off"}}
        return _build(cls, d, prefix="")


# The values Recipe.hash() leaves out: every field's default when hashes took this form, frozen. A field added
# later gets the value that keeps the old behaviour (its default, as a rule), so earlier recipes keep their
# hashes; a default changed later stays here at its old value, so runs at the new default hash apart from runs
# at the old one. tests/test_config.py checks that every field has its entry.
_HASH_BASE: dict = {
    "seed": 0,
    "model": {"vocab_size": None, "seq_len": 256, "n_layer": 4, "n_embd": 128, "n_head": 4, "n_kv_head": None,
        "mlp_ratio": 4.0, "rope_base": 10000.0, "qk_norm": True, "logit_softcap": 15.0, "value_embeds": False,
        "residual_dtype": "float32"},
    "optim": {"name": "muon", "lr": 0.003, "muon_lr": 0.02, "muon_momentum": 0.95, "weight_decay": 0.0, "beta1": 0.9,
        "beta2": 0.95, "eps": 1e-08, "grad_clip": 1.0, "schedule": "wsd", "warmup_frac": 0.02, "warmdown_frac": 0.4,
        "final_lr_frac": 0.0},
    "data": {"corpus": "builtin", "tokenizer": "byte", "weights": None},
    "train": {"batch_tokens": 4096, "micro_batch_rows": 16, "device": "auto", "dtype": "auto", "compile": "auto",
        "compile_mode": "default", "parallel": "ddp", "num_threads": 0, "attention": "auto", "kernels": "auto", "log_every": 1, "eval_every": 0, "eval_every_frac": 0.0,
        "eval_at_start": False, "ckpt_every": 0, "ckpt_keep": 2, "diverge_ratio": 2.5, "diverge_patience": 10},
    "budget": {"tokens": 0, "seconds": 60.0, "flops": 0.0, "wall_limit_s": 0.0},
    "eval": {"tokens_per_domain": 32768, "batch_rows": 16},
    "faults": {"data_sleep_s": 0.0, "nan_at_step": 0, "replay_on_resume": False, "mixture_bias": "", "slow_rank": -1,
        "slow_rank_s": 0.0},
}


def _hash_fields(obj, base: dict) -> dict:
    """The fields of a (nested) config dataclass whose values differ from `base`."""
    out = {}
    for f in dataclasses.fields(obj):
        value, ref = getattr(obj, f.name), base.get(f.name, _NO_BASE)
        if dataclasses.is_dataclass(value):
            if sub := _hash_fields(value, ref if isinstance(ref, dict) else {}):
                out[f.name] = sub
        elif value != ref or type(value) is not type(ref):
            out[f.name] = value
    return out


_NO_BASE = object()


@functools.lru_cache(maxsize=4096)
def _resolved_recipe_json(text: str) -> str | None:
    try:
        return json.dumps(Recipe.from_dict(json.loads(text)).to_dict())
    except Exception:  # anything this version cannot read (overflowing numbers too) stays as it was
        return None


def resolved_recipe(d: dict) -> dict:
    """A stored recipe.json as this version reads it: every field present, those added since it was
    written at their defaults, so that runs of the same recipe compare and filter alike whichever
    version wrote them. A dict this version cannot read (keys from a newer version, bad values)
    comes back as it was."""
    if not isinstance(d, dict):
        return d
    if _same_keys(d, _recipe_keys()) and isinstance((d.get("train") or {}).get("compile"), str):
        return d  # written by this version (the common case): as it is, without parsing it again
    text = _resolved_recipe_json(json.dumps(d, sort_keys=True))
    return json.loads(text) if text is not None else d


@functools.cache
def _recipe_keys() -> dict:
    """A default Recipe's keys, nested as its sections are."""
    def keys(obj) -> dict:
        return {f.name: keys(getattr(obj, f.name)) if dataclasses.is_dataclass(getattr(obj, f.name)) else None
                for f in dataclasses.fields(obj)}
    return keys(Recipe())


def _same_keys(d: dict, keys: dict) -> bool:
    return d.keys() == keys.keys() and all(sub is None or (isinstance(d[k], dict) and _same_keys(d[k], sub)) for k, sub in keys.items())


def recipe_hash(d: dict) -> str | None:
    """Recipe.hash() of a stored recipe.json; None when this version cannot read it."""
    try:
        return Recipe.from_dict(d).hash()
    except Exception:
        return None


# --- overrides -------------------------------------------------------------------------


BUDGET_KINDS = ("tokens", "seconds", "flops")


def apply_overrides(recipe: Recipe, assignments: list[str]) -> Recipe:
    """Return a new recipe with `key=value` assignments applied (dotted keys).

    Setting one budget kind (budget.tokens, budget.seconds or budget.flops) replaces the
    recipe's budget: the kinds not set on the same command line are cleared.
    """
    d = recipe.to_dict()
    budget_keys = {a.split("=", 1)[0].strip() for a in assignments} & {f"budget.{k}" for k in BUDGET_KINDS}
    if budget_keys:
        for kind in BUDGET_KINDS:
            d["budget"][kind] = 0
    for item in assignments:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value, e.g. --set budget.seconds=60")
        key, raw = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        cls: Any = Recipe
        node = d
        for i, part in enumerate(parts):
            hints = _hints(cls)
            if part not in hints:
                prefix = ".".join(parts[:i])
                known = [f"{prefix}.{k}" if prefix else k for k in hints]
                close = difflib.get_close_matches(key, known, n=1) or difflib.get_close_matches(part, list(hints), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(known)}"
                raise ValueError(f"unknown config key {key!r}{hint}")
            ftype = hints[part]
            if dataclasses.is_dataclass(ftype):
                if i == len(parts) - 1:
                    raise ValueError(f"{key!r} is a section; set one of its fields, e.g. {key}.{next(iter(_hints(ftype)))}=...")
                cls, node = ftype, node[part]
                continue
            if i != len(parts) - 1:
                raise ValueError(f"unknown config key {key!r}: {'.'.join(parts[: i + 1])} is not a section")
            node[part] = parse_value(key, raw.strip(), ftype)
    return Recipe.from_dict(d)


def parse_value(key: str, raw: str, ftype: Any) -> Any:
    """Parse a command-line string as the field's declared type."""
    args = typing.get_args(ftype)
    optional = type(None) in args
    if optional:
        if raw.lower() in ("none", "null", ""):
            return None
        ftype = next(a for a in args if a is not type(None))
    origin = typing.get_origin(ftype)
    try:
        if ftype is bool:
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if ftype is int:
            value = float(raw)  # accept 1e6 and 2_000_000
            if value != int(value):
                raise ValueError
            return int(value)
        if ftype is float:
            value = float(raw)
            if not math.isfinite(value):  # nan passes every `x < 0` check; a NaN budget trained 0 steps and reported ok
                raise ValueError
            return value
        if ftype is str:
            return raw
        if origin is dict:
            if raw.startswith("{"):
                parsed = json.loads(raw)
            else:
                parsed = {}
                for pair in raw.split(","):
                    name, value = pair.split(":")
                    parsed[name.strip()] = value
            return {str(k): float(v) for k, v in parsed.items()}
    except (ValueError, OverflowError, json.JSONDecodeError):
        pass
    else:
        raise AssertionError(f"unsupported field type {ftype} for {key}")
    expected = {bool: "true/false", int: "an integer", float: "a finite number"}.get(ftype, "name:weight,name:weight")
    raise ValueError(f"{key} expects {expected}{' or none' if optional else ''}, got {raw!r}")


@functools.cache
def _hints(cls) -> dict[str, Any]:
    """A config dataclass's field types (resolved once: typing.get_type_hints is slow)."""
    return typing.get_type_hints(cls)


def _build(cls, d: dict, prefix: str):
    """Build a (nested) dataclass from a dict, rejecting unknown keys by name."""
    hints = _hints(cls)
    if not isinstance(d, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'the recipe'} must be an object of settings, got {d!r:.60}")
    unknown = set(d) - set(hints)
    if unknown:
        raise ValueError(f"unknown config key {prefix + sorted(unknown)[0]!r} in recipe")
    kwargs = {}
    for name, value in d.items():
        ftype = hints[name]
        if dataclasses.is_dataclass(ftype):
            kwargs[name] = _build(ftype, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(f"{prefix}{name}", value, ftype)
    return cls(**kwargs)


def _check_type(key: str, value: Any, ftype: Any) -> Any:
    args = typing.get_args(ftype)
    if value is None and type(None) in args:
        return None
    if type(None) in args:
        ftype = next(a for a in args if a is not type(None))
    if ftype is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ValueError(f"{key} must be a finite number, got an integer of {len(str(abs(value)))} digits") from None
    if ftype is float and isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value}")
    base = typing.get_origin(ftype) or ftype
    if isinstance(base, types.UnionType) or not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ValueError(f"{key} must be {getattr(base, '__name__', base)}, got {value!r}")
    return value


def field_docs(cls=Recipe, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(key, type, default, doc) for every leaf field, for help text."""
    rows = []
    defaults = cls()
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            rows += field_docs(type(value), f"{prefix}{f.name}.")
        else:
            hint = typing.get_type_hints(cls)[f.name]
            tname = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")  # int, not <class 'int'>
            rows.append((prefix + f.name, tname, value, f.metadata.get("doc", "")))
    return rows


def _divisors(n: int) -> list[int]:
    """The smallest 12 divisors of n, for an error message: pairs up to sqrt(n), at most a million tries."""
    found = set()
    d = 1
    while d * d <= n and d <= 1_000_000:
        if n % d == 0:
            found.update((d, n // d))
        d += 1
    return sorted(found)[:12]


def _is_bpe_spec(spec: str) -> bool:
    name, _, vocab = spec.partition(":")
    return name == "bpe" and vocab.isdigit() and int(vocab) > 257  # 256 bytes + end-of-text, plus merges
