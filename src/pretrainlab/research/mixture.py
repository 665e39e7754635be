"""Mixture design by regression, in the style of RegMix (Liu et al., 2024): train many small
proxy runs on sampled domain mixtures, fit a model from the weights to the metric, and take
the mixture the model predicts best. Pure functions on numpy arrays (rows are mixtures, one
column per domain, each row summing to 1); the campaign that runs the proxies and confirms
the result is research/mixture_campaign.py.

    natural = normalise(np.array([5.8e6, 0.8e6, 5.5e6]))          # train tokens per domain
    X = sample_mixtures(natural, 24, rng)                          # the natural and uniform mixtures, then 22 draws
    y = ...                                                        # the target metric of each proxy run
    d = design(X, y, natural, rng)                                 # model chosen by leave-one-out error, best mixture,
    d.recommended, d.weights_low, d.weights_high                   # and its spread over bootstrap resamples of the proxies

Sampling: Dirichlet draws around the natural mixture, tempered toward uniform (the centre is
natural**tau, tau uniform in [0, 1]) with a total concentration drawn log-uniformly, so the
proxies cover both what the corpus gives by size and the uniform mixture, the two mixtures
the recommendation is confirmed against.
Models: ridge regressions with an unpenalised intercept on standardised features of the
weights (Scheffe's linear and quadratic mixture polynomials, and the log-shares); the
candidate with the lowest leave-one-out RMSE (exact for a linear smoother: e_i / (1 - H_ii))
is used, ties going to the simpler one.
Search: the mean of the `top` best-predicted mixtures among draws from the same distribution
as the proxies (RegMix's averaging of the top predictions, steadier than a single arg-min),
kept to a trust region: no farther from the nearest proxy than proxies are from each other
(their median nearest-neighbour distance). A regression fitted on a few dozen proxies is not
to be believed far from them. On simulated landscapes (`python bench/mixture.py`,
docs/benchmarks.md "Mixture design"), with 12 proxies the region cut the mean regret from
0.0108 to 0.0015 bpb where the best mixture is inside the simplex, and cost 0.0088 -> 0.0119
where it sits at an edge far from every proxy; at 24 proxies the two agree within 0.001.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .config import CONCENTRATION, NUM_RESAMPLES, POOL_SIZE, TOP_MIXTURES  # noqa: F401 (the search's defaults, also the flags')


def _sps():
    """scipy.stats, imported on first use (it takes most of a second; a bad flag is reported before)."""
    from scipy import stats

    return stats


LOG_EPS = 1e-3  # log-share features: a domain left out of a mixture counts as this share
TRUST_RADIUS = 1.0  # the search keeps mixtures within this many median proxy nearest-neighbour distances of a proxy


@dataclass(frozen=True)
class ModelSpec:
    """One candidate regression: a feature map of the weights and a ridge penalty on the
    standardised features (the intercept is never penalised)."""

    kind: str  # "linear" | "log-linear" | "quadratic"
    ridge: float

    @property
    def label(self) -> str:
        return self.kind if self.ridge < 1e-3 else f"{self.kind} (ridge {self.ridge:g})"

    def features(self, X: np.ndarray) -> np.ndarray:
        """[n, k] mixtures -> [n, f] features. The linear part drops the last share: with an
        intercept it is implied by the others (the shares sum to 1)."""
        X = normalise_rows(X)
        if self.kind == "linear":
            return X[:, :-1]
        if self.kind == "log-linear":
            return np.log(X + LOG_EPS)
        if self.kind == "quadratic":
            k = X.shape[1]
            pairs = [X[:, i] * X[:, j] for i in range(k) for j in range(i + 1, k)]
            return np.column_stack([X[:, :-1], *pairs]) if pairs else X[:, :-1]
        raise ValueError(f"unknown mixture model kind {self.kind!r}: use linear, log-linear or quadratic")


# ordered simplest first: a tie in held-out error goes to the earlier one. The penalties are small because the
# features are strongly collinear (x_i and x_i * x_j): on an exact quadratic at 24 proxies, ridge 1 already costs
# 20x the held-out error of ridge 0.01; where the proxies are few, leave-one-out picks the stronger penalties.
RIDGES = (0.001, 0.01, 0.1, 1.0)
CANDIDATES = (ModelSpec("linear", 1e-6), *(ModelSpec("log-linear", r) for r in RIDGES), *(ModelSpec("quadratic", r) for r in RIDGES))


def normalise(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, float)
    assert w.ndim == 1 and (w >= 0).all() and w.sum() > 0, f"mixture weights must be >= 0 with a positive sum, got {w}"
    return w / w.sum()


def normalise_rows(X: np.ndarray) -> np.ndarray:
    X = np.atleast_2d(np.asarray(X, float))
    return X / X.sum(1, keepdims=True)


def round_mixture(w: np.ndarray, decimals: int = 4) -> np.ndarray:
    """Shares rounded for the recipe (what the run trains on, after the loader renormalises);
    a domain rounded to zero is left out of that run."""
    r = np.round(normalise(w), decimals)
    if r.sum() <= 0:  # every share rounded away: keep the largest
        r[int(np.argmax(w))] = 1.0
    return r


def draw_mixtures(natural: np.ndarray, n: int, rng: np.random.Generator, concentration: tuple[float, float] = CONCENTRATION) -> np.ndarray:
    """n Dirichlet draws around the natural mixture tempered toward uniform: centre
    natural**tau (tau ~ U[0, 1]), total concentration log-uniform in `concentration`."""
    natural = normalise(natural)
    lo, hi = concentration
    assert 0 < lo <= hi, f"concentration must be 0 < low <= high, got {concentration}"
    tau = rng.uniform(0.0, 1.0, n)
    total = np.exp(rng.uniform(math.log(lo), math.log(hi), n))
    centres = natural[None, :] ** tau[:, None]
    centres /= centres.sum(1, keepdims=True)
    return np.stack([rng.dirichlet(np.maximum(c * t, 1e-3)) for c, t in zip(centres, total)]) if n else np.zeros((0, len(natural)))


def sample_mixtures(natural: np.ndarray, n: int, rng: np.random.Generator,
                    concentration: tuple[float, float] = CONCENTRATION) -> np.ndarray:
    """The proxies' mixtures: the natural one, the uniform one, then n - 2 draws, each
    rounded as the recipe will hold it."""
    natural = normalise(natural)
    k = len(natural)
    assert n >= 2, "at least the natural and the uniform mixture"
    rows = [natural, np.full(k, 1.0 / k), *draw_mixtures(natural, n - 2, rng, concentration)]
    return np.stack([round_mixture(r) for r in rows])


# ---- regression --------------------------------------------------------------------------------


@dataclass
class Fit:
    """A fitted candidate: y ~ intercept + ((features - mean) / scale) @ coef."""

    spec: ModelSpec
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.intercept + ((self.spec.features(X) - self.mean) / self.scale) @ self.coef


def standardiser(F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) of each feature column; a constant column keeps scale 1."""
    scale = F.std(0)
    return F.mean(0), np.where(scale > 1e-12, scale, 1.0)


def fit_ridge(spec: ModelSpec, X: np.ndarray, y: np.ndarray, standardise: tuple[np.ndarray, np.ndarray] | None = None) -> Fit:
    """Ridge regression with an unpenalised intercept. `standardise`: (mean, scale) of the
    features to use instead of this sample's (a bootstrap refit keeps the full sample's)."""
    F = spec.features(X)
    y = np.asarray(y, float)
    mean, scale = standardise or standardiser(F)
    Z = (F - mean) / scale
    zbar, ybar = Z.mean(0), y.mean()
    Zc = Z - zbar
    coef = np.linalg.solve(Zc.T @ Zc + spec.ridge * np.eye(Z.shape[1]), Zc.T @ (y - ybar))
    return Fit(spec, mean, scale, coef, float(ybar - zbar @ coef))


def loo_predictions(spec: ModelSpec, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Leave-one-out predictions of each row, from the hat matrix of the fit on all rows:
    y_i - e_i / (1 - H_ii), exact for a penalised least-squares fit with a fixed design."""
    F = spec.features(X)
    y = np.asarray(y, float)
    mean, scale = standardiser(F)
    Z = (F - mean) / scale
    Zc = Z - Z.mean(0)
    n = len(y)
    H = np.full((n, n), 1.0 / n) + Zc @ np.linalg.solve(Zc.T @ Zc + spec.ridge * np.eye(Z.shape[1]), Zc.T)
    resid = y - H @ y
    leverage = np.minimum(np.diag(H), 1 - 1e-9)  # a point the fit passes through exactly: no held-out information
    return y - resid / (1 - leverage)


@dataclass
class Candidate:
    spec: ModelSpec
    loo_rmse: float
    loo_spearman: float  # rank correlation of held-out predictions with the measured values (nan if undefined)
    loo: np.ndarray


def rank_candidates(X: np.ndarray, y: np.ndarray, candidates=CANDIDATES) -> list[Candidate]:
    """Every candidate's held-out error on the proxies, best first (ties: simpler first)."""
    y = np.asarray(y, float)
    out = []
    for spec in candidates:
        loo = loo_predictions(spec, X, y)
        rmse = float(np.sqrt(np.mean((loo - y) ** 2)))
        rho = float(_sps().spearmanr(loo, y).statistic) if np.ptp(y) > 0 and np.ptp(loo) > 0 else float("nan")
        out.append(Candidate(spec, rmse, rho, loo))
    order = sorted(range(len(out)), key=lambda i: (round(out[i].loo_rmse, 12), i))
    return [out[i] for i in order]


# ---- search and uncertainty --------------------------------------------------------------------


def trust_region(pool: np.ndarray, X: np.ndarray, radius: float = TRUST_RADIUS) -> np.ndarray:
    """The mixtures of the pool within `radius` median nearest-neighbour distances of the
    proxies X (Euclidean, on the simplex) of their nearest proxy."""
    D = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(D, np.inf)
    reach = radius * float(np.median(D.min(1))) if math.isfinite(radius) else math.inf
    nearest = np.min([np.sqrt(((pool - x) ** 2).sum(1)) for x in X], axis=0)
    return pool[nearest <= reach + 1e-12]


def best_mixture(predict, pool: np.ndarray, top: int = TOP_MIXTURES) -> np.ndarray:
    """The mean of the `top` mixtures of the pool with the lowest predicted value."""
    pred = predict(pool)
    idx = np.argsort(pred)[: max(1, min(top, len(pool)))]
    return normalise(pool[idx].mean(0))


@dataclass
class Design:
    """What the regression recommends, and how sure it is."""

    candidates: list[Candidate]
    fit: Fit
    recommended: np.ndarray  # [k], rounded as the recipe holds it
    predicted: dict[str, float]  # the model's value at "recommended", "natural", "uniform"
    weights_low: np.ndarray  # 2.5% / 97.5% bootstrap percentiles of each recommended share
    weights_high: np.ndarray
    weights_std: np.ndarray
    predicted_low: float  # 95% bootstrap interval of the predicted value at the recommendation
    predicted_high: float
    p_better: dict[str, float] = field(default_factory=dict)  # share of refits predicting the recommendation below natural / uniform
    num_resamples: int = 0
    pool_searched: int = 0  # mixtures of the pool inside the trust region

    @property
    def chosen(self) -> Candidate:
        return self.candidates[0]

    def to_dict(self, domains: list[str]) -> dict:
        named = lambda a: {d: round(float(v), 6) for d, v in zip(domains, a)}
        return {"model": self.chosen.spec.label, "model_kind": self.chosen.spec.kind, "ridge": self.chosen.spec.ridge,
                "candidates": [{"model": c.spec.label, "loo_rmse": c.loo_rmse,
                                "loo_spearman": None if math.isnan(c.loo_spearman) else c.loo_spearman} for c in self.candidates],
                "loo_predictions": [float(v) for v in self.chosen.loo],
                "recommended": named(self.recommended), "weights_low": named(self.weights_low), "weights_high": named(self.weights_high),
                "weights_std": named(self.weights_std), "predicted": self.predicted,
                "predicted_interval": [self.predicted_low, self.predicted_high], "p_better": self.p_better,
                "num_resamples": self.num_resamples, "pool_searched": self.pool_searched}


def design(X: np.ndarray, y: np.ndarray, natural: np.ndarray, rng: np.random.Generator, *, candidates=CANDIDATES,
           concentration: tuple[float, float] = CONCENTRATION, pool_size: int = POOL_SIZE, top: int = TOP_MIXTURES,
           num_resamples: int = NUM_RESAMPLES, trust_radius: float = TRUST_RADIUS) -> Design:
    """Choose the model by held-out error, search the pool (within the trust region) for the
    best mixture, and bootstrap the proxies (refitting the chosen model on each resample,
    searching the same pool) for the spread of the recommended shares and of the predicted
    value. `trust_radius` math.inf searches the whole pool."""
    X, y = normalise_rows(X), np.asarray(y, float)
    natural = normalise(natural)
    k = X.shape[1]
    uniform = np.full(k, 1.0 / k)
    ranked = rank_candidates(X, y, candidates)
    spec = ranked[0].spec
    fit = fit_ridge(spec, X, y)
    pool = trust_region(np.vstack([draw_mixtures(natural, pool_size, rng, concentration), X]), X, trust_radius)
    recommended = round_mixture(best_mixture(fit.predict, pool, top))
    anchors = np.stack([recommended, natural, uniform])
    predicted = dict(zip(("recommended", "natural", "uniform"), (float(v) for v in fit.predict(anchors))))
    full = standardiser(spec.features(X))
    boot_w, boot_pred, beats = [], [], {"natural": 0, "uniform": 0}
    for _ in range(num_resamples):
        idx = rng.integers(0, len(y), len(y))
        refit = fit_ridge(spec, X[idx], y[idx], standardise=full)
        boot_w.append(best_mixture(refit.predict, pool, top))
        at = refit.predict(anchors)
        boot_pred.append(at[0])
        beats["natural"] += at[0] < at[1]
        beats["uniform"] += at[0] < at[2]
    if num_resamples:
        W = np.stack(boot_w)
        lo, hi, std = np.percentile(W, 2.5, 0), np.percentile(W, 97.5, 0), W.std(0)
        p_lo, p_hi = (float(v) for v in np.percentile(boot_pred, [2.5, 97.5]))
    else:
        lo = hi = recommended
        std = np.zeros(k)
        p_lo = p_hi = predicted["recommended"]
    return Design(ranked, fit, recommended, predicted, lo, hi, std, p_lo, p_hi,
                  {name: float(n / num_resamples) for name, n in beats.items()} if num_resamples else {}, num_resamples, len(pool))


def target_value(score: dict, domains: list[str] | None) -> float | None:
    """The target metric from the lab's score of a run (runners/job.py's verdict): the
    decision split's overall val_bpb, or the mean val_bpb of the chosen domains."""
    if not isinstance(score, dict) or score.get("status") != "ok":
        return None
    val = (score.get("splits") or {}).get("val") or {}
    if not domains:
        v = val.get("val_bpb")
    else:
        per = val.get("domains") or {}
        values = [per.get(d) for d in domains]
        v = float(np.mean(values)) if all(isinstance(x, (int, float)) for x in values) else None
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
