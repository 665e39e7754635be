"""The (N, D, loss) points a fit reads: from a CSV or JSON file, or from the lab's runs.

    N     model size in parameters: total (Hoffmann et al.'s convention; the ledger's `params`,
          counted on the built model) or non-embedding (Kaplan et al.'s: total minus the token
          and value embedding tables; the untied lm_head stays, it is a matmul)
    D     training tokens (the lab's byte tokenizer: one token = one UTF-8 byte)
    loss  as the source gives it: the lab's val_bpb (bits per byte, on the decision split,
          as the lab scored it); the Chinchilla data's loss (nats per token)

A file is CSV with a header row (lines starting with # are comments) or JSON (a list of
objects, or {"points": [...]}); column names are matched case-insensitively:
    N:     n, params, parameters, num_params, model size, model_size
    D:     d, tokens, num_tokens, training tokens, training_tokens
    loss:  loss, val_bpb, val_loss, l
    FLOPs: flops, c, compute, training flop, training flops, training_flop
When D is missing it is C / (6 N), as Besiroglu et al. derive it from Hoffmann et al.'s
FLOPs. Bad input (too few points, a non-positive size, a NaN loss) is a UserError naming
the row and the fix.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError

COLUMNS = {
    "n": ("n", "params", "parameters", "num_params", "model size", "model_size"),
    "d": ("d", "tokens", "num_tokens", "training tokens", "training_tokens"),
    "loss": ("loss", "val_bpb", "val_loss", "l"),
    "flops": ("flops", "c", "compute", "training flop", "training flops", "training_flop"),
}
NUM_PARAMS = 5  # E, A, alpha, B, beta
PARAM_COUNTS = ("total", "non-embedding")
LOSS_UNITS = {"val_bpb": "bits per byte", "val_loss": "nats per token"}


@dataclass
class Points:
    n: np.ndarray  # parameters
    d: np.ndarray  # training tokens
    loss: np.ndarray
    labels: list[str]  # where each point came from: "row 3" of a file, a run id
    source: str  # the file, or which runs
    n_kind: str = "as given"  # "total", "non-embedding" or "as given" (a file)
    loss_name: str = "loss"  # the column or metric
    loss_unit: str = "as given"
    budget: np.ndarray | None = None  # nominal compute budget per point (an iso-FLOP ladder's design), NaN where none
    skipped: list[str] = field(default_factory=list)  # runs left out and why

    def __len__(self) -> int:
        return len(self.n)

    def flops(self) -> np.ndarray:
        """C = 6 N D per point (Kaplan et al.; the forward and backward matmuls, attention left out)."""
        return 6.0 * self.n * self.d

    def subset(self, keep: np.ndarray) -> Points:
        idx = np.flatnonzero(keep)
        return Points(self.n[idx], self.d[idx], self.loss[idx], [self.labels[i] for i in idx], self.source, self.n_kind,
                      self.loss_name, self.loss_unit, None if self.budget is None else self.budget[idx], list(self.skipped))

    def describe(self) -> dict:
        return {"source": self.source, "num_points": len(self), "N": f"parameters ({self.n_kind})", "D": "training tokens",
                "loss": f"{self.loss_name} ({self.loss_unit})",
                "N_range": [float(self.n.min()), float(self.n.max())] if len(self) else None,
                "D_range": [float(self.d.min()), float(self.d.max())] if len(self) else None,
                "C_range": [float(self.flops().min()), float(self.flops().max())] if len(self) else None,
                "num_sizes": len(np.unique(self.n)), "num_token_counts": len(np.unique(self.d)), "skipped": self.skipped}


def check_points(p: Points) -> None:
    """Every point usable and enough of them for the five parameters; else a one-line UserError."""
    for name, values in (("N (parameters)", p.n), ("D (tokens)", p.d), ("loss", p.loss)):
        for label, v in zip(p.labels, values):
            if not math.isfinite(v):
                raise UserError(f"{p.source}: {label}: {name} is {v}: give every point a finite value, or drop that point")
            if v <= 0:
                raise UserError(f"{p.source}: {label}: {name} is {v:g}, not positive: sizes, token counts and losses must be > 0 "
                                "(the law is fitted on their logarithms)")
    with np.errstate(over="ignore"):
        if not np.isfinite(6.0 * p.n * p.d).all():
            raise UserError(f"{p.source}: 6 N D (the training FLOPs) is beyond float range for some points: give N and D in "
                            "parameters and tokens (no more than about 1e150 each)")
    pairs = distinct_pairs(p)
    if pairs <= NUM_PARAMS:
        repeats = f" ({len(p)} rows, repeated (N, D) pairs counted once)" if pairs < len(p) else ""
        raise UserError(f"{p.source}: {pairs} distinct (N, D) points{repeats} for the law's {NUM_PARAMS} parameters (E, A, alpha, "
                        f"B, beta): give at least {NUM_PARAMS + 1}, e.g. a ladder of 3 model sizes x 3 token budgets")
    for name, values, fix in (("model sizes (N)", p.n, "train another model size"),
                              ("token counts (D)", p.d, "train to another token budget")):
        distinct = len(np.unique(values))
        if distinct < 3:
            raise UserError(f"{p.source}: the points have {distinct} distinct {name}: the law needs at least 3 to separate each "
                            f"power law from the irreducible loss E; {fix}")


def distinct_pairs(p: Points) -> int:
    """How many different (N, D) the points have: repeated runs of one size and budget (seeds) are one point's worth of
    information about the law's shape, however many rows they take."""
    return len({(float(n), float(d)) for n, d in zip(p.n, p.d)})


def _column(header: list[str], kind: str) -> str | None:
    lowered = {h.strip().lower(): h for h in header}
    return next((lowered[name] for name in COLUMNS[kind] if name in lowered), None)


def load_points(path: str | Path, drop_highest: int = 0) -> Points:
    """Points from a CSV or JSON file (see the module docstring), without the `drop_highest`
    highest losses (Besiroglu et al. drop Hoffmann et al.'s 5 worst runs as outliers)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's CSV often starts with a byte-order mark
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror or e}); pass a CSV or JSON file of (N, D, loss) points") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); pass a CSV or JSON file of (N, D, loss) points") from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); give a list of objects with N, D and loss") from None
        except RecursionError:
            raise UserError(f"{path}: JSON nested too deeply to read; give a flat list of objects with N, D and loss") from None
        except ValueError as e:  # an integer of more digits than Python converts
            raise UserError(f"{path}: not JSON this lab reads ({str(e).splitlines()[0][:100]}); give N, D and loss as plain numbers") from None
        rows = data.get("points") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise UserError(f"{path}: expected a JSON list of objects (or {{\"points\": [...]}}), each with N, D and loss")
        header = list(dict.fromkeys(k for r in rows for k in r))
        labels = [f"point {i}" for i in range(len(rows))]
    else:
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        reader = csv.DictReader(io.StringIO("\n".join(lines)))
        try:
            header = list(reader.fieldnames or [])
            rows = list(reader)
        except csv.Error as e:  # a field over the csv module's size limit, a NUL byte
            raise UserError(f"{path}: not a CSV file this lab reads (line {reader.line_num}: {e}); give one (N, D, loss) point per row") from None
        labels = [f"row {i + 1}" for i in range(len(rows))]
        repeated = sorted({h for h in header if [x.strip().lower() for x in header].count(h.strip().lower()) > 1})
        if repeated:
            raise UserError(f"{path}: the header names {', '.join(repeated)} more than once; give each column one name")
        long = next((lab for r, lab in zip(rows, labels) if None in r), None)  # csv puts fields past the header under None
        if long is not None:
            raise UserError(f"{path}: {long} has more fields than the header ({len(header)}); quote a field that holds a "
                            "comma, or fix that row")
    cols = {kind: _column(header, kind) for kind in COLUMNS}
    if cols["n"] is None or cols["loss"] is None or (cols["d"] is None and cols["flops"] is None):
        missing = [what for what, ok in (("N (e.g. params)", cols["n"]), ("D (e.g. tokens) or FLOPs", cols["d"] or cols["flops"]),
                                         ("loss (e.g. loss or val_bpb)", cols["loss"])) if ok is None]
        raise UserError(f"{path}: no column for {' and '.join(missing)} among {', '.join(header) or 'no columns'}; "
                        f"name them e.g. N, D, loss (see `pretrainlab scaling fit --help`)")

    def number(row: dict, col: str, label: str) -> float:
        raw = row.get(col)
        if isinstance(raw, bool):  # JSON true is no count of parameters or tokens, though Python reads it as 1
            raise UserError(f"{path}: {label}: {col} is {json.dumps(raw)}, not a number: fix or drop that row")
        try:
            return float(raw) if raw is not None and str(raw).strip() != "" else math.nan
        except OverflowError:
            raise UserError(f"{path}: {label}: {col} is a {len(str(raw))}-digit number, too large for a float: fix or drop that row") from None
        except (TypeError, ValueError):
            shown = repr(raw) if len(repr(raw)) <= 60 else repr(raw)[:60] + "..."
            raise UserError(f"{path}: {label}: {col} is {shown}, not a number: fix or drop that row") from None

    n = np.array([number(r, cols["n"], lab) for r, lab in zip(rows, labels)], float)
    loss = np.array([number(r, cols["loss"], lab) for r, lab in zip(rows, labels)], float)
    if cols["d"] is not None:
        d = np.array([number(r, cols["d"], lab) for r, lab in zip(rows, labels)], float)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.array([number(r, cols["flops"], lab) for r, lab in zip(rows, labels)], float) / (6.0 * n)
    name = cols["loss"].strip()
    points = Points(n, d, loss, labels, str(path), "as given", name, LOSS_UNITS.get(name.lower(), "as given"))
    return drop_highest_losses(points, drop_highest)


def drop_highest_losses(points: Points, count: int) -> Points:
    if count < 0:
        raise UserError(f"--drop-highest {count}: give a count >= 0 of highest-loss points to leave out")
    if count == 0:
        return points
    if count >= len(points):
        raise UserError(f"--drop-highest {count} leaves none of the {len(points)} points: drop fewer")
    order = np.argsort(-np.nan_to_num(points.loss, nan=np.inf), kind="stable")
    keep = np.ones(len(points), bool)
    keep[order[:count]] = False
    out = points.subset(keep)
    out.skipped.append(f"the {count} highest-loss points ({', '.join(points.labels[i] for i in sorted(order[:count]))}): --drop-highest")
    return out


def non_embedding(total: float, recipe: dict) -> float:
    """Total parameters minus the embedding tables, for a run's resolved recipe (a dict)."""
    from ..config import Recipe
    from ..recipes import embedding_params

    return total - embedding_params(Recipe.from_dict(recipe))


def points_from_runs(rows: list[dict], source: str, params: str = "total", budgets: dict[str, float] | None = None) -> Points:
    """Points from ledger rows (run_id, status, params, tokens, val_bpb, recipe): runs that
    finished (ok or timeout) with a finite val_bpb; the others are listed in `skipped`.
    budgets: {run_id: the compute budget an iso-FLOP ladder designed it for}."""
    if params not in PARAM_COUNTS:
        raise UserError(f"--params {params!r}: use one of {', '.join(PARAM_COUNTS)}")
    n, d, loss, labels, skipped, budget = [], [], [], [], [], []
    for r in rows:
        why = None
        if r.get("status") not in ("ok", "timeout"):
            why = f"status {r.get('status')}"
        elif not _finite(r.get("val_bpb")):
            why = "no val_bpb"
        elif not _finite(r.get("params")) or not _finite(r.get("tokens")):
            why = "no params or tokens recorded"
        elif params == "non-embedding" and not isinstance(r.get("recipe"), dict):
            why = "no recipe recorded to count its embedding parameters"
        if why:
            skipped.append(f"{r['run_id']}: {why}")
            continue
        count = float(r["params"]) if params == "total" else non_embedding(float(r["params"]), r["recipe"])
        n.append(count)
        d.append(float(r["tokens"]))
        loss.append(float(r["val_bpb"]))
        labels.append(f"run {r['run_id']}")
        budget.append((budgets or {}).get(r["run_id"], math.nan))
    b = np.array(budget, float)
    return Points(np.array(n, float), np.array(d, float), np.array(loss, float), labels, source, params, "val_bpb", "bits per byte",
                  b if np.isfinite(b).any() else None, skipped)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
