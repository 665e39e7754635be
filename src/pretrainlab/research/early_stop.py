"""Early stopping of runs that are clearly worse than the incumbent (successive halving).

Runs evaluate val_bpb at rungs: each time a share `frac` of their budget is used
(train.eval_every_frac), so runs with different batch sizes or speeds are compared at
equal shares of equal compute. At each rung a candidate is stopped when its val_bpb is
worse than the incumbent replicates' mean there by more than a margin — `num_std` times
their seed std plus a floor — so only clear losers are cut. Runs that are merely not
better go on to the end: the final decision belongs to the statistics.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from .. import rundir


def eval_curve(run_dir: Path, frac: float) -> dict[int, float]:
    """{rung: val_bpb} from a run's eval rows so far; rung k = the k-th multiple of frac
    (the final evaluation is rung round(1/frac)). Reads a live run: a torn last line is skipped."""
    curve = {}
    for row in rundir.iter_metrics(Path(run_dir) / rundir.METRICS, only="eval"):  # polled often: parses eval lines only
        if row.get("val_bpb") is not None and row.get("progress") is not None and row.get("step"):
            curve[math.floor(row["progress"] / frac + 1e-9)] = row["val_bpb"]
    return curve


def rung_reference(incumbent_curves: list[dict[int, float]]) -> dict[int, tuple[float, float]]:
    """{rung: (mean, std)} of the incumbent's replicates at each rung they all reached."""
    if not incumbent_curves:
        return {}
    rungs = set.intersection(*(set(c) for c in incumbent_curves))
    ref = {}
    for rung in rungs:
        values = [c[rung] for c in incumbent_curves]
        ref[rung] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    return ref


def should_stop(candidate: dict[int, float], reference: dict[int, tuple[float, float]], num_std: float = 4.0,
                floor: float = 0.02) -> tuple[bool, str]:
    """(stop?, reason) for a candidate's curve so far against the incumbent's rungs."""
    for rung in sorted(set(candidate) & set(reference)):
        mean, std = reference[rung]
        margin = num_std * std + floor
        if candidate[rung] > mean + margin:
            return True, (f"val_bpb {candidate[rung]:.4f} at rung {rung} is worse than the incumbent's {mean:.4f} "
                          f"by more than {margin:.4f} ({num_std:g} x seed std {std:.4f} + {floor:g})")
    return False, ""
