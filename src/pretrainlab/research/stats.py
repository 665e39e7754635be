"""Noise-aware decisions: is a candidate really better than the incumbent?

The metric (val_bpb) is lower-is-better and noisy across seeds: at tiny scale the seed
noise is often larger than the effect of a change. So a change is called an improvement
only when seed replicates of it beat seed replicates of the incumbent beyond that noise:

    effect = mean(candidate) - mean(incumbent)          (negative = better)
    Welch's t-test, two-sided at level alpha / looks: "improvement" when the candidate is
    lower with one-sided p < alpha / 2 / looks, "regression" when higher likewise
    95% confidence interval for the effect (Welch-Satterthwaite t interval)

With common random numbers — the candidate runs on the same seeds as the incumbent, so
both see the same initialisation draws and the same batches in the same order — most seed
noise cancels in the per-seed differences, and the paired t-test on them (`compare(...,
paired=True)`) detects far smaller effects than Welch at the same number of runs:

    d_i = candidate(seed i) - incumbent(seed i),  effect = mean(d),  t = mean(d) / (sd(d)/sqrt(n)),  n-1 df

`looks` is how many times the same candidate has been tested (sequential re-testing:
a promising candidate gets more seeds and is tested again). Dividing alpha by the number
of looks (Bonferroni over looks) keeps the chance of a false verdict under alpha however
often a candidate is re-tested. An A/A comparison (incumbent against itself) comes out
"no effect" at least 1 - alpha of the time; tests/test_research_stats.py checks it.

The autoresearch rule (one seed each, keep if lower) is `greedy_single_seed`, kept as the
baseline that benches/research compares against.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np


def _special():
    """scipy.special, imported on first use (a bad flag is reported before). Student's t through its
    functions directly: scipy.stats' distribution objects cost ~200 us a call in argument checks,
    which campaigns and the calibration checks make by the ten thousand; the values are the same."""
    from scipy import special

    return special


def t_cdf(t: float, df: float) -> float:
    return float(_special().stdtr(df, t))


def t_sf(t: float, df: float) -> float:
    return float(_special().stdtr(df, -t))


def t_ppf(q: float, df: float) -> float:
    return float(_special().stdtrit(df, q))


IMPROVEMENT, REGRESSION, NO_EFFECT, INCONCLUSIVE = "improvement", "regression", "no effect", "inconclusive"


@dataclass(frozen=True)
class Comparison:
    """Candidate vs incumbent on a lower-is-better metric."""

    n_incumbent: int
    n_candidate: int
    mean_incumbent: float
    mean_candidate: float
    effect: float  # mean(candidate) - mean(incumbent); negative = better
    ci_low: float  # 95% two-sided interval for the effect
    ci_high: float
    p_improvement: float  # one-sided Welch p-value for "candidate is lower"
    p_regression: float  # one-sided Welch p-value for "candidate is higher"
    alpha: float  # the one-sided level each verdict used (alpha / 2 / looks)
    verdict: str

    def to_dict(self) -> dict:
        return asdict(self)

    paired: bool = False  # the paired t-test on seed-matched runs (else Welch)

    def summary(self) -> str:
        n = f"{self.n_candidate} seed-matched pairs" if self.paired else f"n={self.n_candidate} vs {self.n_incumbent}"
        # the p printed is the one-sided p the verdict was decided on, with the level it had to pass: a
        # one-sided p of 0.036 beside a two-sided 95% interval that crosses zero reads as a contradiction otherwise
        side = self.p_regression if self.verdict == REGRESSION else self.p_improvement
        which = "worse" if self.verdict == REGRESSION else "better"
        # NO_EFFECT means the test did not reject "no difference", not that the difference is shown to be zero: an
        # effect of -0.29 with an interval of -0.72 .. +0.13 is not "no effect"
        said = "no significant difference" if self.verdict == NO_EFFECT else self.verdict
        if self.alpha == 0.0:  # gatekept: never tested
            return (f"not tested, the claim it depends on having not held: effect {self.effect:+.4f} (95% CI {self.ci_low:+.4f} .. "
                    f"{self.ci_high:+.4f}), {n}")
        return (f"{said}: effect {self.effect:+.4f} (95% CI {self.ci_low:+.4f} .. {self.ci_high:+.4f}), "
                f"one-sided p({which})={side:.3g} against {self.alpha:.3g}, {n}")


def welch(incumbent: list[float], candidate: list[float]) -> tuple[float, float, float, float, float]:
    """(effect, ci_low, ci_high, p_lower, p_higher) by Welch's unequal-variance t-test."""
    a, b = np.asarray(incumbent, float), np.asarray(candidate, float)
    assert len(a) >= 2 and len(b) >= 2, "Welch's test needs at least two replicates on each side"
    effect = float(b.mean() - a.mean())
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:  # identical replicates (e.g. a deterministic CPU run repeated): no noise at all
        p_lower = 0.0 if effect < 0 else 1.0
        p_higher = 0.0 if effect > 0 else 1.0
        return effect, effect, effect, p_lower, p_higher
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t = effect / se
    half = t_ppf(0.975, df) * se
    return effect, effect - half, effect + half, t_cdf(t, df), t_sf(t, df)


def paired_t(incumbent: list[float], candidate: list[float]) -> tuple[float, float, float, float, float]:
    """(effect, ci_low, ci_high, p_lower, p_higher) by the paired t-test; element i of both
    lists comes from the same seed."""
    d = np.asarray(candidate, float) - np.asarray(incumbent, float)
    assert len(d) >= 2, "the paired test needs at least two pairs"
    effect = float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(len(d))
    if se == 0.0:  # every pair differs by the same amount (e.g. identical recipes: 0)
        return effect, effect, effect, 0.0 if effect < 0 else 1.0, 0.0 if effect > 0 else 1.0
    df = len(d) - 1
    t = effect / se
    half = t_ppf(0.975, df) * se
    return effect, effect - half, effect + half, t_cdf(t, df), t_sf(t, df)


def compare(incumbent: list[float], candidate: list[float], alpha: float = 0.05, looks: int = 1, min_effect: float = 0.0,
            paired: bool = False) -> Comparison:
    """Verdict on candidate vs incumbent. `min_effect` (>= 0, metric units) additionally
    requires the gain to be practically meaningful, not just statistically detectable.
    `paired`: the lists are seed-matched (same length, same seed at each index)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if paired and len(incumbent) != len(candidate):
        raise ValueError(f"a paired comparison needs seed-matched lists, got {len(incumbent)} and {len(candidate)} values")
    level = alpha / 2 / max(1, looks)  # per side
    if len(incumbent) < 2 or len(candidate) < 2:
        a, b = np.asarray(incumbent, float), np.asarray(candidate, float)
        effect = float(b.mean() - a.mean()) if len(a) and len(b) else float("nan")
        return Comparison(len(a), len(b), float(a.mean()) if len(a) else float("nan"), float(b.mean()) if len(b) else float("nan"),
                          effect, float("-inf"), float("inf"), 1.0, 1.0, level, INCONCLUSIVE)
    effect, lo, hi, p_lower, p_higher = (paired_t if paired else welch)(incumbent, candidate)
    if p_lower < level and -effect > min_effect:
        verdict = IMPROVEMENT
    elif p_higher < level:
        verdict = REGRESSION
    else:
        verdict = NO_EFFECT
    return Comparison(len(incumbent), len(candidate), float(np.mean(incumbent)), float(np.mean(candidate)),
                      effect, lo, hi, p_lower, p_higher, level, verdict, paired)


def pooled_paired(runs: dict[str, dict[int, float]], comparisons: dict[str, tuple[str, str]], alpha: float = 0.05) -> dict[str, Comparison]:
    """Paired comparisons of several recipes run on the same few seeds, tested with one
    noise estimate from all of their runs. runs: {recipe: {seed: value}}; comparisons:
    {name: (reference recipe, candidate recipe)}.

    The runs are fitted by the two-way additive model value = recipe + seed + noise (the
    seed term is what pairing cancels); its residual variance has (recipes - 1) x (seeds - 1)
    degrees of freedom, where a paired t-test of one comparison on 2 seeds has 1. Each
    comparison's effect is its mean per-seed difference, with standard error
    sqrt(2 s^2 / seeds) and a t distribution on those degrees of freedom: exact for normal
    noise of the same size in every run, however many comparisons share a recipe's runs.
    Only seeds every recipe ran on are used; with fewer than 2 of them (or only one
    recipe) nothing can be tested and the result is empty."""
    names = sorted({n for pair in comparisons.values() for n in pair})
    fit = _two_way(runs, names)
    if fit is None:
        return {}
    y, seeds, var, df = fit
    se = math.sqrt(2 * var / len(seeds))
    level = alpha / 2
    out = {}
    for key, (ref_name, cand_name) in comparisons.items():
        ref, cand = y[names.index(ref_name)], y[names.index(cand_name)]
        effect = float((cand - ref).mean())
        if se == 0.0:
            p_lower, p_higher, half = (0.0 if effect < 0 else 1.0), (0.0 if effect > 0 else 1.0), 0.0
        else:
            t = effect / se
            p_lower, p_higher, half = t_cdf(t, df), t_sf(t, df), t_ppf(0.975, df) * se
        verdict = IMPROVEMENT if p_lower < level else REGRESSION if p_higher < level else NO_EFFECT
        out[key] = Comparison(len(seeds), len(seeds), float(ref.mean()), float(cand.mean()), effect, effect - half, effect + half,
                              p_lower, p_higher, level, verdict, paired=True)
    return out


def gatekept(results: dict[str, Comparison], first: str) -> dict[str, Comparison]:
    """A campaign's claims as one family, its chance of any false claim held to the level of one: the claim `first` (the
    final recipe against the baseline) at its own level; the others (what each changed group carries) only when it
    holds, by Holm's step-down over them at that same level, and otherwise left at no effect ("not tested"). Each
    claim's `alpha` becomes the one-sided level it had to pass. Serial gatekeeping: under no real effect anywhere, the
    family errs only when `first` does."""
    if first not in results:
        return results
    out = dict(results)
    head = out[first]
    rest = sorted((k for k in out if k != first), key=lambda k: min(out[k].p_improvement, out[k].p_regression))
    if head.verdict == NO_EFFECT:  # the gate stays shut
        return {k: (c if k == first else replace(c, verdict=NO_EFFECT, alpha=0.0)) for k, c in out.items()}
    level, shut = head.alpha, False
    for i, k in enumerate(rest):
        c = out[k]
        step = level / (len(rest) - i)
        p_lower, p_higher = c.p_improvement, c.p_regression
        verdict = NO_EFFECT if shut else IMPROVEMENT if p_lower < step else REGRESSION if p_higher < step else NO_EFFECT
        shut = shut or verdict == NO_EFFECT  # Holm stops at its first claim that does not hold
        out[k] = replace(c, verdict=verdict, alpha=step)
    return out


def _two_way(runs: dict[str, dict[int, float]], names: list[str]):
    """(values [recipes x seeds], seeds, residual variance, its degrees of freedom) of the additive fit value = recipe +
    seed + noise over the seeds every recipe in `names` ran on; None without a degree of freedom."""
    seeds = sorted(set.intersection(*(set(runs.get(n, {})) for n in names))) if names else []
    df = (len(names) - 1) * (len(seeds) - 1)
    if df < 1:
        return None
    y = np.array([[runs[n][s] for s in seeds] for n in names], float)  # recipes x seeds
    resid = y - y.mean(1, keepdims=True) - y.mean(0, keepdims=True) + y.mean()
    return y, seeds, float((resid**2).sum()) / df, df


def paired_noise(runs: dict[str, dict[int, float]], names: list[str], assumed: float | None = None) -> dict | None:
    """The std of a seed-matched difference between two of these recipes' runs, as pooled_paired measures it
    (sqrt(2 s^2) of the two-way fit), with a 90% interval for the true std (chi-square on its degrees of freedom) and, given
    the std `assumed` before (the screens' prior), one-sided p-values that the truth is larger / smaller. None without a
    degree of freedom."""
    fit = _two_way(runs, sorted(names))
    if fit is None:
        return None
    _, seeds, var, df = fit
    sp = _special()
    std = math.sqrt(2 * var)
    out = {"std": std, "df": df, "seeds": len(seeds), "recipes": len(names),
           "low": std * math.sqrt(df / float(sp.chdtri(df, 0.05))), "high": std * math.sqrt(df / float(sp.chdtri(df, 0.95)))}
    if assumed:
        x = df * std**2 / assumed**2  # ~ chi-square(df) if the assumed std is the truth
        out.update(assumed=assumed, ratio=std / assumed, p_larger=float(sp.chdtrc(df, x)), p_smaller=float(sp.chdtr(df, x)))
    return out


def describe_paired_noise(noise: dict, alpha: float = 0.01) -> str | None:
    """A sentence when the measured paired noise is significantly (one-sided `alpha`: advice heard at every close, so
    wrong only 1 in 100 times when the prior is right) larger or smaller than the screens' prior, naming the flag to
    change; None when the prior is consistent with what was measured."""
    if noise.get("assumed") is None:
        return None
    measured = (f"the confirmation measured a seed-matched difference's noise at {noise['std']:.4f} bpb (90% interval "
                f"{noise['low']:.4f} .. {noise['high']:.4f}, {noise['df']} degrees of freedom), {noise['ratio']:.1f}x the "
                f"{noise['assumed']:g} the screens assumed")
    if noise["p_larger"] < alpha:
        return (f"{measured}: the screens adopted changes on less evidence than they took it to be (p={noise['p_larger']:.2g}). "
                f"At this scale, run the next campaign with --screen-noise {noise['std']:.3g}")
    if noise["p_smaller"] < alpha:
        return (f"{measured}: the screens were more cautious than needed (p={noise['p_smaller']:.2g}). At this scale, "
                f"--screen-noise {noise['std']:.3g} lets them adopt on less")
    return None


def bootstrap_ci(incumbent: list[float], candidate: list[float], num_resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval for mean(candidate) - mean(incumbent); a
    distribution-free cross-check of the Welch interval."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(incumbent, float), np.asarray(candidate, float)
    ma = a[rng.integers(0, len(a), (num_resamples, len(a)))].mean(1)
    mb = b[rng.integers(0, len(b), (num_resamples, len(b)))].mean(1)
    lo, hi = np.percentile(mb - ma, [2.5, 97.5])
    return float(lo), float(hi)


def noise_floor(replicates: list[float]) -> dict:
    """Seed noise of the incumbent: std, and the smallest effect a k-vs-k comparison at
    alpha=0.05 (one-sided) detects with 80% power, for k = the number of replicates."""
    x = np.asarray(replicates, float)
    if len(x) < 2:
        return {"n": len(x), "mean": float(x[0]) if len(x) else None, "std": None, "min_detectable_effect": None}
    k = len(x)
    std = float(x.std(ddof=1))
    df = 2 * k - 2
    mde = (t_ppf(0.95, df) + t_ppf(0.80, df)) * std * math.sqrt(2 / k)
    return {"n": k, "mean": float(x.mean()), "std": std, "min_detectable_effect": mde}


def describe_noise_floor(nf: dict) -> str:
    """noise_floor's figures as a line for people."""
    if not nf.get("n"):
        return "no usable run"
    if nf.get("std") is None:
        return f"val_bpb {nf['mean']:.4f} on 1 seed (no seed noise measured)"
    k = nf["n"]
    return (f"mean val_bpb {nf['mean']:.4f}, seed std {nf['std']:.4f} over {k} seeds; "
            f"{k} vs {k} seeds detect an effect of {nf['min_detectable_effect']:.4f} (80% power, one-sided 5%)")


def greedy_single_seed(incumbent: float, candidate: float) -> str:
    """The autoresearch rule: keep the change if its single run scored lower."""
    return IMPROVEMENT if candidate < incumbent else NO_EFFECT
