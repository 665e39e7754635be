"""One scaling analysis, as data and as text: the parametric fit (Approach 3) with bootstrap
intervals, the compute-optimal N and D at the asked budgets, and the IsoFLOP minima
(Approach 2) where the points hold iso-FLOP groups.

    from pretrainlab.scaling import analyse, load_points
    result = analyse(load_points("points.csv"), flops=[1e21], num_bootstrap=1000)
    print(render_text(result))
"""

from __future__ import annotations

import math
import re

import numpy as np

from ..errors import UserError
from . import isoflop, law
from .points import Points, check_points, distinct_pairs

DEFAULT_BOOTSTRAP = 1000
DEFAULT_LEVEL = 0.95
EXTRAPOLATION_WARN = 10.0  # a budget this many times beyond the largest run's compute is an extrapolation worth flagging
E_COLLAPSED = 0.01  # a fitted E below this share of the lowest loss: the points do not pin the irreducible loss
LOOSE_RATIO = 100.0  # a bootstrap interval of E, A or B spanning more than this factor: the parameter is not determined
LOOSE_EXPONENT = 1.0  # ... of alpha or beta wider than this
MAX_BUDGET_LINES = 12  # IsoFLOP budgets listed in the text; --json has them all
PF_DAY = 1e15 * 86400  # FLOPs in a petaflop/s-day (Kaplan et al.'s unit)
SI = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15, "e": 1e18, "z": 1e21}


def parse_flops(text: str | float) -> float:
    """A compute budget: 1e21, 3.2e18flops, 5 ZFLOPs, 100 pf-days."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9.]+(?:e[+-]?\d+)?)\s*(pf-?days?|[kmgtpez]?(?:flops?)?)\s*", str(text), re.IGNORECASE)
        if not m:
            raise UserError(f"--flops {text!r}: give a compute budget in FLOPs, e.g. 1e21, 3e18flops, 5ZFLOPs or 100pf-days")
        unit = m.group(2).lower()
        value = float(m.group(1)) * (PF_DAY if unit.startswith("pf") else SI[unit.removesuffix("s").removesuffix("flop")])
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"--flops {text!r}: a compute budget must be a positive number of FLOPs")
    return value


def default_budgets(points: Points) -> list[float]:
    """The power of ten at or below the largest run's compute, and 10x and 100x that."""
    top = 10.0 ** math.floor(math.log10(points.flops().max()))
    return [top, 10 * top, 100 * top]


def analyse(points: Points, flops: list[float] | None = None, num_bootstrap: int = DEFAULT_BOOTSTRAP, level: float = DEFAULT_LEVEL,
            num_starts: int | None = law.DEFAULT_STARTS, optimizer: str = "bfgs", seed: int = 0) -> dict:
    """The full analysis as a JSON-ready dict (see render_text for how it reads)."""
    check_points(points)
    if not 0 < level < 1:
        raise UserError(f"--level {level}: the interval's coverage must be between 0 and 1, e.g. 0.95")
    if num_bootstrap < 0:
        raise UserError(f"--bootstrap {num_bootstrap}: give a number of resamples >= 0 (0: no intervals)")
    if num_starts is not None and num_starts < 1:
        raise UserError(f"--starts {num_starts}: give at least 1 start, or 'all' for the 4,500-point grid")
    if seed < 0:
        raise UserError(f"--seed {seed}: give a seed >= 0 for the bootstrap's resamples")
    if optimizer not in law.OPTIMIZERS:
        raise UserError(f"--optimizer {optimizer!r}: use one of {', '.join(law.OPTIMIZERS)}")
    budgets = [parse_flops(c) for c in flops] if flops else default_budgets(points)
    rng = np.random.default_rng(seed)
    n, d, loss = points.n, points.d, points.loss

    # 1. the point fit, 2. the bootstrap
    fit = law.fit_law(n, d, loss, num_starts=num_starts, optimizer=optimizer)
    thetas = law.bootstrap_law(n, d, loss, fit, num_bootstrap, rng, optimizer=optimizer) if num_bootstrap else np.zeros((0, 5))
    named = law.theta_to_params(thetas)
    intervals = {k: law.percentile_interval(v, level) for k, v in named.items()} if len(thetas) else {}
    for k, j in (("A", 0), ("B", 1), ("E", 2)):  # on the log scale, where a refit whose coefficient overflows stays a number
        if len(thetas):
            intervals[k] = law.coefficient_interval(thetas[:, j], level)

    # 3. the compute-optimal allocation at each budget, with the bootstrap's spread
    c_max = float(points.flops().max())
    n_opt, d_opt, l_opt = law.optimal_allocation(fit.theta[None, :], np.array(budgets))
    bn, bd, bl = law.optimal_allocation(thetas, np.array(budgets)) if len(thetas) else (np.zeros((0, len(budgets))),) * 3
    allocation = []
    for j, c in enumerate(budgets):
        ci = lambda arr: law.percentile_interval(arr[:, j], level) if len(arr) else None  # noqa: E731
        allocation.append({
            "C": c, "N_opt": _num(n_opt[0, j]), "N_opt_ci": ci(bn), "D_opt": _num(d_opt[0, j]), "D_opt_ci": ci(bd),
            "tokens_per_param": _num(d_opt[0, j] / n_opt[0, j]), "tokens_per_param_ci": ci(bd / bn) if len(thetas) else None,
            "loss": _num(l_opt[0, j]), "loss_ci": ci(bl), "times_largest_run": c / c_max})

    # 4. IsoFLOP minima (Approach 2), where the points hold groups at equal compute
    iso = isoflop.fit_isoflop(n, d, loss, points.budget, num_bootstrap, rng)
    iso_dict = iso.to_dict()
    if iso.a is not None:
        iso_dict["a_ci"] = law.percentile_interval(iso.samples[:, 0], level) if len(iso.samples) else None
        iso_dict["b_ci"] = tuple(sorted(1 - v for v in iso_dict["a_ci"])) if iso_dict["a_ci"] else None
        iso_dict["allocation"] = []
        for c in budgets:
            n_c = float(iso.n_opt(c))
            spread = np.exp(iso.samples[:, 1] + iso.samples[:, 0] * math.log(c)) if len(iso.samples) else np.zeros(0)
            ci = law.percentile_interval(spread, level) if len(spread) else None
            iso_dict["allocation"].append({"C": c, "N_opt": n_c, "N_opt_ci": ci, "D_opt": c / (6 * n_c),
                                           "D_opt_ci": (c / (6 * ci[1]), c / (6 * ci[0])) if ci else None})

    # the frontier on a grid of budgets, for plots: N_opt and D_opt with the bootstrap's band
    grid = np.geomspace(float(points.flops().min()), max(budgets + [c_max]), 40)
    gn, gd, gl = law.optimal_allocation(fit.theta[None, :], grid)
    frontier = []
    if len(thetas):
        fn, fd, _ = law.optimal_allocation(thetas, grid)
    for j, c in enumerate(grid):
        row = {"C": float(c), "N_opt": _num(gn[0, j]), "D_opt": _num(gd[0, j]), "loss": _num(gl[0, j])}
        if len(thetas):
            row.update(N_opt_ci=law.percentile_interval(fn[:, j], level), D_opt_ci=law.percentile_interval(fd[:, j], level))
        frontier.append(row)

    warnings = _warnings(points, fit, thetas, num_bootstrap, allocation, iso, intervals)
    predicted = fit.predict(n, d)
    return {
        "data": points.describe(),
        "method": {"law": "L(N, D) = E + A / N^alpha + B / D^beta",
                   "fit": (f"Hoffmann et al. (2022) Approach 3: Huber (delta={fit.delta:g}) on log-loss residuals, {optimizer.upper()} from "
                           f"{fit.num_starts} of the 4,500-point initialisation grid, best objective kept"),
                   "bootstrap": f"{len(thetas)} of {num_bootstrap} resamples of the points refitted; {level:.0%} percentile intervals",
                   "compute": "C = 6 N D FLOPs", "level": level, "seed": seed, "num_bootstrap": len(thetas),
                   "num_starts": fit.num_starts, "optimizer": optimizer},
        "fit": fit.to_dict(),
        "intervals": intervals,
        "allocation": allocation,
        "isoflop": iso_dict,
        "frontier": frontier,
        "warnings": warnings,
        "points": [{"label": lab, "N": float(a), "D": float(b), "C": float(6 * a * b), "loss": float(y), "predicted": float(p)}
                   for lab, a, b, y, p in zip(points.labels, n, d, loss, predicted)],
    }


def _times(ratio: float) -> str:
    return f"{ratio:.0f}x" if ratio < 1e6 else f"{ratio:.2g}x"


def _num(v) -> float | None:
    return float(v) if np.isfinite(v) else None


def _warnings(points: Points, fit: law.LawFit, thetas, num_bootstrap: int, allocation: list[dict], iso, intervals: dict) -> list[str]:
    out = []
    if fit.E < E_COLLAPSED * points.loss.min():
        out.append(f"E = {fit.E:.3g}, next to nothing: these points do not pin the irreducible loss (over their range the loss "
                   "still falls as a pure power law), and the allocation leans on that; train longer runs (a wider token range) "
                   "before trusting the exponents")
    loose = [k for k in ("E", "A", "B") if intervals.get(k) and intervals[k][0] > 0 and intervals[k][1] / intervals[k][0] > LOOSE_RATIO]
    if loose:
        spans = ", ".join(f"{k} [{intervals[k][0]:.3g}, {intervals[k][1]:.3g}]" for k in loose)
        out.append(f"not determined by these points (bootstrap intervals): {spans}; more sizes and token budgets, over a wider "
                   "range, pin them down")
    undetermined = law.undetermined_exponents(fit, intervals)  # a degenerate optimum, or an interval over a decade wide
    for said in undetermined:
        out.append(f"{said}; more sizes and token budgets, over a wider range, pin it down")
    wide = [k for k in ("alpha", "beta") if intervals.get(k) and intervals[k][1] - intervals[k][0] > LOOSE_EXPONENT
            and not any(u.startswith(k) for u in undetermined)]
    if wide:
        spans = ", ".join(f"{k} [{intervals[k][0]:.3g}, {intervals[k][1]:.3g}]" for k in wide)
        out.append(f"loosely determined by these points (bootstrap intervals): {spans}; more sizes and token budgets pin them down")
    if not fit.converged:
        out.append("the best descent did not converge (its gradient is not near zero): try --starts all or --optimizer l-bfgs-b")
    if fit.exponents() is None:
        out.append(f"the fit has alpha={fit.alpha:.3g}, beta={fit.beta:.3g}: loss does not fall with both size and data over these "
                   "points, so there is no compute-optimal allocation; widen the ladder's sizes and token budgets")
    pairs = distinct_pairs(points)
    if pairs < 10:
        what = f"{pairs} distinct (N, D) points" + (f" ({len(points)} rows)" if pairs < len(points) else "")
        out.append(f"{what} for 5 parameters: the fit nearly interpolates them and the intervals are rough; "
                   "a 4 x 4 ladder or more gives a law worth extrapolating")
    if num_bootstrap and len(thetas) < 0.9 * num_bootstrap:
        out.append(f"only {len(thetas)} of {num_bootstrap} bootstrap refits were kept (a resample with fewer than 3 distinct "
                   "sizes or token budgets is dropped, and some refits fail): the intervals rest on fewer resamples")
    for a in allocation:
        if a["times_largest_run"] > EXTRAPOLATION_WARN:
            out.append(f"C={a['C']:.3g} is {_times(a['times_largest_run'])} the largest run's compute: the allocation there is an "
                       "extrapolation of the law, trust its interval more than its point")
            break
    if iso.a is not None and num_bootstrap and len(iso.samples) < 0.5 * num_bootstrap:
        out.append(f"IsoFLOP: only {len(iso.samples)} of {num_bootstrap} resamples kept a minimum at two budgets or more "
                   "(too few runs per budget): its interval is unreliable; train more sizes per budget")
    return out


# ---- text -------------------------------------------------------------------------------------------


def _si(v: float | None, unit: str = "") -> str:
    if v is None or not math.isfinite(v):
        return "-"
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}{unit}"
    return f"{v:.3g}{unit}"


def _ci(pair, fmt) -> str:
    return f"[{fmt(pair[0])}, {fmt(pair[1])}]" if pair else ""


def render_text(result: dict) -> str:
    """The analysis as a researcher reads it: data and units, parameters with intervals, the
    allocation per budget, the IsoFLOP cross-check, and the warnings."""
    data, fit, iv, m = result["data"], result["fit"], result["intervals"], result["method"]
    level = f"{m['level']:.0%}"
    lines = [f"points: {data['num_points']} from {data['source']}  (N = {data['N']}; D = {data['D']}; loss = {data['loss']})",
             f"  N {_si(data['N_range'][0])}..{_si(data['N_range'][1])} ({data['num_sizes']} sizes), "
             f"D {_si(data['D_range'][0])}..{_si(data['D_range'][1])} ({data['num_token_counts']} token counts), "
             f"C = 6ND {data['C_range'][0]:.3g}..{data['C_range'][1]:.3g} FLOPs"]
    lines += [f"  left out: {s}" for s in data["skipped"][:5]]
    if len(data["skipped"]) > 5:
        lines.append(f"  ... and {len(data['skipped']) - 5} more")
    lines += ["", f"fit: {m['law']}", f"  {m['fit']}", f"  {m['bootstrap']}", "",
              f"  {'param':<6} {'estimate':>12}   {level} interval"]
    fmts = {"E": lambda v: f"{v:.4g}", "A": lambda v: f"{v:.4g}", "B": lambda v: f"{v:.4g}", "alpha": lambda v: f"{v:.4f}",
            "beta": lambda v: f"{v:.4f}", "a": lambda v: f"{v:.4f}", "b": lambda v: f"{v:.4f}"}
    notes = {"E": "irreducible loss", "a": "N_opt ∝ C^a, a = beta/(alpha+beta)", "b": "D_opt ∝ C^b, b = alpha/(alpha+beta)"}
    for k in ("E", "A", "alpha", "B", "beta", "a", "b"):
        v = fit.get(k)
        lines.append(f"  {k:<6} {fmts[k](v) if v is not None else '-':>12}   {_ci(iv.get(k), fmts[k]):<24} {notes.get(k, '')}".rstrip())
    lines.append(f"  objective {fit['objective']:.6g} (sum of Huber losses); rms log-residual {fit['rms_log_residual']:.4f}, max "
                 f"{fit['max_abs_log_residual']:.4f}; {fit['starts_within_1pct']} of {fit['num_starts']} starts ended within 1% of the best objective")
    lines += ["", f"compute-optimal allocation (C = 6ND; {level} intervals from the bootstrap):",
              f"  {'C (FLOPs)':>10}  {'N_opt':>8} {'interval':<20} {'D_opt':>8} {'interval':<20} {'D/N':>6} {'loss':>7}"]
    for a in result["allocation"]:
        lines.append(f"  {a['C']:>10.3g}  {_si(a['N_opt']):>8} {_ci(a['N_opt_ci'], _si):<20} {_si(a['D_opt']):>8} "
                     f"{_ci(a['D_opt_ci'], _si):<20} {_fmt(a['tokens_per_param'], '.1f'):>6} {_fmt(a['loss'], '.4f'):>7}"
                     + (f"  ({_times(a['times_largest_run'])} the largest run)" if a["times_largest_run"] > 1.5 else ""))
    iso = result["isoflop"]
    lines += ["", "IsoFLOP minima (Hoffmann et al. Approach 2):"]
    shown = [b for b in iso["budgets"] if len(b["sizes"]) >= isoflop.MIN_SIZES]
    for b in shown[:MAX_BUDGET_LINES]:
        if b["used"]:
            lines.append(f"  C {b['C']:.3g}: {b['num_runs']} runs, {len(b['sizes'])} sizes -> N_opt {_si(b['N_opt'])}, "
                         f"D_opt {_si(b['D_opt'])}, loss {b['loss_opt']:.4f}")
        else:
            lines.append(f"  C {b['C']:.3g}: {b['num_runs']} runs, not used: {b['why_not']}")
    if len(shown) > MAX_BUDGET_LINES:
        rest = shown[MAX_BUDGET_LINES:]
        lines.append(f"  ... {len(rest)} more budgets ({sum(b['used'] for b in rest)} used); --json lists them all")
    if iso["a"] is None:
        lines.append(f"  no exponent: {iso['reason']}")
    else:
        lines.append(f"  N_opt ∝ C^{iso['a']:.3f} {_ci(iso.get('a_ci'), lambda v: f'{v:.3f}')}, "
                     f"D_opt ∝ C^{iso['b']:.3f} {_ci(iso.get('b_ci'), lambda v: f'{v:.3f}')}")
        for a in iso["allocation"]:
            lines.append(f"  at C {a['C']:.3g}: N_opt {_si(a['N_opt'])} {_ci(a['N_opt_ci'], _si)}, D_opt {_si(a['D_opt'])}")
    if result["warnings"]:
        lines.append("")
        lines += [f"warning: {w}" for w in result["warnings"]]
    return "\n".join(lines)


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)
