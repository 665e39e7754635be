"""The parametric loss law L(N, D) = E + A / N^alpha + B / D^beta, fitted as Hoffmann et al.
(2022, "Training Compute-Optimal Large Language Models", Approach 3) fit it, with bootstrap
intervals and the compute-optimal allocation it implies.

The fit minimises, over theta = (a, b, e, alpha, beta) with A = exp(a), B = exp(b), E = exp(e),

    sum_i Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i ),   delta = 1e-3

(the log of the law's prediction against the log of the measured loss: relative errors, and
a loss that is linear beyond 1e-3 so a few bad runs do not pull the fit), with BFGS from
points of a grid of initialisations, keeping the best (all descents of a fit, and all
bootstrap refits, are stepped together as arrays: descend_many). The gradient is analytic: one
softmax over the three terms per point. The sum (not the mean) is minimised, scaled by
1/delta so the optimiser's tolerances act on a quantity of order one: Besiroglu et al.
(2024) traced Hoffmann et al.'s published parameters to an optimiser that stopped early on
the tiny values of a mean Huber loss.

Compute-optimal allocation (Hoffmann et al., eq. 4, with C = 6 N D):
    N_opt(C) = G (C/6)^a,  D_opt(C) = (C/6)^b / G,  G = (alpha A / (beta B))^(1/(alpha+beta)),
    a = beta / (alpha + beta),  b = alpha / (alpha + beta).

N, D and L are in whatever units the points carry (the lab: total parameters, training
tokens, val_bpb in bits per byte; the Chinchilla data: total parameters, tokens, nats per
token); E and B carry the loss's unit, A and B also the N and D scales. Pure numpy/scipy: no
torch, no ledger.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, Approach 3
# Hoffmann et al.'s grid of initialisations: alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1},
# a, b in {0, 5, ..., 25}: 5 x 5 x 5 x 6 x 6 = 4,500 starts
GRID_ALPHA = GRID_BETA = (0.0, 0.5, 1.0, 1.5, 2.0)
GRID_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
GRID_A = GRID_B = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
PARAMS = ("E", "A", "alpha", "B", "beta")
MAX_LOG = math.log(np.finfo(float).max)  # ~709.8: A = exp(a) beyond this is no float
MAX_EXPONENT = 5.0  # alpha or beta above this: a term that falls 32x per doubling fits the smallest size or budget alone
EXPONENT_SPAN = 10.0  # a bootstrap interval of alpha or beta spanning more than this factor: the exponent is not determined


def hoffmann_grid() -> np.ndarray:
    """The 4,500 starts as rows of theta = (a, b, e, alpha, beta)."""
    return np.array([(a, b, e, al, be) for al, be, e, a, b in itertools.product(GRID_ALPHA, GRID_BETA, GRID_E, GRID_A, GRID_B)])


def log_prediction(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log L_hat = LSE(a - alpha log N, b - beta log D, e) per point, and the softmax weights of
    the three terms (shape (3, n)): each term's share of the predicted loss."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = terms.max(axis=0)
    w = np.exp(terms - top)
    total = w.sum(axis=0)
    return top + np.log(total), w / total


def objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray,
              delta: float = HUBER_DELTA) -> tuple[float, np.ndarray]:
    """sum_i Huber_delta(r_i) / delta with r_i = log L_hat_i - log L_i, and its gradient in theta."""
    pred, w = log_prediction(theta, log_n, log_d)
    r = pred - log_loss
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum() / delta
    dr = np.where(small, r, delta * np.sign(r)) / delta  # d Huber / d r, scaled alike
    grad = np.array([(dr * w[0]).sum(), (dr * w[1]).sum(), (dr * w[2]).sum(),
                     -(dr * w[0] * log_n).sum(), -(dr * w[1] * log_d).sum()])
    return float(value), grad


def batch_objective(thetas: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray,
                    delta: float = HUBER_DELTA) -> np.ndarray:
    """The objective at many thetas at once (shape (k, 5) -> (k,)), to rank starts cheaply."""
    a, b, e, alpha, beta = (thetas[:, i:i + 1] for i in range(5))
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (len(thetas), len(log_n)))])
    r = np.logaddexp.reduce(terms, axis=0) - log_loss
    return np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum(axis=1) / delta


OPTIMIZERS = ("bfgs", "l-bfgs-b")
GTOL = 1e-9  # a descent has converged when every component of the gradient is this small
MAXITER = 2000


def objective_many(thetas: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray,
                   delta: float = HUBER_DELTA) -> tuple[np.ndarray, np.ndarray]:
    """`objective` at k thetas at once: values (k,) and gradients (k, 5). The points are shared,
    shape (n,), or one set per theta, shape (k, n) (bootstrap resamples)."""
    a, b, e, alpha, beta = (thetas[:, i:i + 1] for i in range(5))
    t0, t1 = a - alpha * log_n, b - beta * log_d
    t2 = np.broadcast_to(e, t0.shape)
    top = np.maximum(np.maximum(t0, t1), t2)
    w0, w1, w2 = np.exp(t0 - top), np.exp(t1 - top), np.exp(t2 - top)
    total = w0 + w1 + w2
    r = top + np.log(total) - log_loss
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum(axis=1) / delta
    dr = np.where(small, r, delta * np.sign(r)) / (delta * total)  # d Huber / d r, scaled alike, over the softmax's total
    g0, g1 = dr * w0, dr * w1
    grad = np.stack([g0.sum(axis=1), g1.sum(axis=1), (dr * w2).sum(axis=1), -(g0 * log_n).sum(axis=1), -(g1 * log_d).sum(axis=1)], axis=1)
    return value, grad


def descend_many(starts: np.ndarray, log_n, log_d, log_loss, delta: float = HUBER_DELTA, gtol: float = GTOL,
                 maxiter: int = MAXITER) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BFGS from every row of `starts` (k, 5) at once; the points are shared (n,) or one set per
    start (k, n). Returns the end points (k, 5), their objectives (k,) and whether each reached
    the gradient tolerance (k,).

    The quasi-Newton method of scipy's BFGS, with the k descents stepped together as arrays
    (a descent on a few points is numpy call overhead, ~80 ms each through scipy; 128 of them
    here take about what one did), and a backtracking (Armijo) line search: each descent's step
    is halved until the objective falls enough. The inverse-Hessian update is skipped where
    the step gives no positive curvature. A descent stops at the gradient tolerance, when its
    line search cannot decrease the objective any more (at the optimum of this kinked objective
    in floating point: fit_law judges that by the gradient), or after maxiter iterations."""
    k = len(starts)
    x = np.array(starts, dtype=float).reshape(k, 5)
    per_row = np.ndim(log_n) == 2
    data = lambda idx: (log_n[idx], log_d[idx], log_loss[idx]) if per_row else (log_n, log_d, log_loss)  # noqa: E731
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        f, g = objective_many(x, *data(slice(None)), delta)
        ok = np.isfinite(f) & np.isfinite(g).all(axis=1)
        f[~ok] = np.inf
        success = np.zeros(k, bool)
        active = np.flatnonzero(ok)
        h = np.broadcast_to(np.eye(5), (k, 5, 5)).copy()
        scaled = np.zeros(k, bool)  # the first update scales the identity to the curvature seen (Nocedal & Wright 6.20)
        for _ in range(maxiter):
            if not len(active):
                break
            done = np.abs(g[active]).max(axis=1) <= gtol
            success[active[done]] = True
            active = active[~done]
            if not len(active):
                break
            gi = g[active]
            p = -np.einsum("kij,kj->ki", h[active], gi)
            slope = (p * gi).sum(axis=1)
            bad = ~(slope < 0)  # not a descent direction (a poor update): steepest descent, and start the Hessian afresh
            if bad.any():
                h[active[bad]] = np.eye(5)
                scaled[active[bad]] = False
                p[bad], slope[bad] = -gi[bad], -(gi[bad] * gi[bad]).sum(axis=1)
            step = np.where(scaled[active], 1.0, np.minimum(1.0, 1.0 / np.sqrt(-slope)))  # first step: unit length
            x_new, f_new, g_new = x[active].copy(), f[active].copy(), gi.copy()
            pending = np.arange(len(active))
            for _ in range(40):
                rows = active[pending]
                xt = x[rows] + step[pending, None] * p[pending]
                ft, gt = objective_many(xt, *data(rows), delta)
                fin = np.isfinite(ft) & np.isfinite(gt).all(axis=1)
                good = fin & (ft <= f[rows] + 1e-4 * step[pending] * slope[pending])
                took = pending[good]
                x_new[took], f_new[took], g_new[took] = xt[good], ft[good], gt[good]
                bad_rows, ft_bad = pending[~good], ft[~good]
                pending = bad_rows
                if not len(pending):
                    break
                # the minimum of the quadratic through f(0), f'(0) and f(step), kept within [0.1, 0.5] of the step
                st, sl = step[pending], slope[pending]
                curv = ft_bad - f[active[pending]] - sl * st
                quad = np.where(np.isfinite(ft_bad) & (curv > 0), -sl * st * st / (2 * np.where(curv > 0, curv, 1.0)), 0.1 * st)
                step[pending] = np.clip(quad, 0.1 * st, 0.5 * st)
            moved = np.ones(len(active), bool)
            moved[pending] = False  # no decrease found: this descent ends here
            # a decrease lost in rounding is no progress either: at the optimum in floating point
            moved &= f[active] - f_new > 1e-15 * np.maximum(1.0, np.abs(f_new))
            x_new[~moved], f_new[~moved], g_new[~moved] = x[active][~moved], f[active][~moved], gi[~moved]
            s_, y_ = x_new - x[active], g_new - gi
            sy = (s_ * y_).sum(axis=1)
            upd = moved & (sy > 1e-12 * np.linalg.norm(s_, axis=1) * np.linalg.norm(y_, axis=1)) & (sy > 0)
            rows = active[upd]
            if len(rows):
                first = ~scaled[rows]
                if first.any():
                    yy = (y_[upd][first] ** 2).sum(axis=1)
                    h[rows[first]] = (sy[upd][first] / yy)[:, None, None] * np.eye(5)
                    scaled[rows[first]] = True
                rho = 1.0 / sy[upd]
                s_u, y_u, hk = s_[upd], y_[upd], h[rows]
                hy = np.einsum("kij,kj->ki", hk, y_u)
                yhy = (y_u * hy).sum(axis=1)
                h[rows] = (hk - rho[:, None, None] * (s_u[:, :, None] * hy[:, None, :] + hy[:, :, None] * s_u[:, None, :])
                           + (rho * rho * yhy + rho)[:, None, None] * s_u[:, :, None] * s_u[:, None, :])
            x[active], f[active], g[active] = x_new, f_new, g_new
            active = active[moved]
        if len(active):  # out of iterations
            success[active] = np.abs(g[active]).max(axis=1) <= gtol
    return x, f, success


def minimise(start: np.ndarray, log_n, log_d, log_loss, delta: float = HUBER_DELTA, optimizer: str = "bfgs"):
    """One descent from `start` with scipy (`optimizer`: "l-bfgs-b", Hoffmann et al.'s, or
    scipy's "bfgs"); returns scipy's OptimizeResult. fit_law and bootstrap_law descend with
    descend_many for "bfgs" (the same method, all starts at once) and with this for "l-bfgs-b".
    scipy's L-BFGS-B calls OpenBLAS, whose threads spin against training runs on a shared CPU
    (30x slower per descent on a 2-core machine)."""
    from scipy.optimize import minimize

    if optimizer == "bfgs":
        return minimize(objective, start, args=(log_n, log_d, log_loss, delta), jac=True, method="BFGS",
                        options={"gtol": GTOL, "maxiter": MAXITER})
    assert optimizer == "l-bfgs-b", optimizer
    # ftol: the relative decrease at which scipy stops; the objective is O(1) here (scaled by 1/delta)
    return minimize(objective, start, args=(log_n, log_d, log_loss, delta), jac=True, method="L-BFGS-B",
                    options={"maxiter": MAXITER, "ftol": 1e-13, "gtol": GTOL})


def _descend(starts: np.ndarray, log_n, log_d, log_loss, delta: float, optimizer: str):
    """(end points, objectives, success) of a descent from each start: batched BFGS, or scipy's L-BFGS-B one by one."""
    if optimizer == "bfgs":
        return descend_many(starts, log_n, log_d, log_loss, delta)
    per_row = np.ndim(log_n) == 2
    out = [minimise(s, *((log_n[i], log_d[i], log_loss[i]) if per_row else (log_n, log_d, log_loss)), delta, optimizer)
           for i, s in enumerate(starts)]
    return (np.array([r.x for r in out]).reshape(-1, 5), np.array([r.fun for r in out], float),
            np.array([bool(r.success) for r in out]))


@dataclass
class LawFit:
    """A fitted law: its parameters, how it was found, and how well it fits."""
    E: float
    A: float
    alpha: float
    B: float
    beta: float
    objective: float  # sum of Huber(delta) losses on log-loss residuals (not divided by delta): Hoffmann's objective
    num_points: int
    num_starts: int
    delta: float = HUBER_DELTA
    rms_log_residual: float = math.nan  # sqrt(mean((log L_hat - log L)^2))
    max_abs_log_residual: float = math.nan
    converged: bool = True
    starts_within_1pct: int = 0  # starts whose descent ended within 1% of the best objective: how well-posed the optimum is
    theta: np.ndarray = field(default_factory=lambda: np.zeros(5), repr=False)

    @classmethod
    def from_theta(cls, theta, **kw) -> LawFit:
        a, b, e, alpha, beta = (float(v) for v in theta)
        return cls(E=math.exp(e), A=math.exp(a), alpha=alpha, B=math.exp(b), beta=beta, theta=np.asarray(theta, float), **kw)

    def predict(self, n, d):
        """L(N, D) for arrays or scalars."""
        return self.E + self.A * np.power(n, -self.alpha) + self.B * np.power(d, -self.beta)

    def exponents(self) -> tuple[float, float] | None:
        """(a, b) with N_opt ∝ C^a and D_opt ∝ C^b; None where the law has no compute-optimal
        allocation (alpha or beta <= 0: loss does not fall with size or with data)."""
        return allocation_exponents(self.alpha, self.beta)

    def optimal(self, flops) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N_opt, D_opt, L at the optimum) for compute budgets C (FLOPs, C = 6 N D)."""
        return optimal_allocation(self.theta[None, :], np.atleast_1d(np.asarray(flops, float)))

    def to_dict(self) -> dict:
        ex = self.exponents()
        return {"E": self.E, "A": self.A, "alpha": self.alpha, "B": self.B, "beta": self.beta,
                "a": ex[0] if ex else None, "b": ex[1] if ex else None, "objective": self.objective, "delta": self.delta,
                "num_points": self.num_points, "num_starts": self.num_starts, "starts_within_1pct": self.starts_within_1pct,
                "rms_log_residual": self.rms_log_residual, "max_abs_log_residual": self.max_abs_log_residual,
                "converged": self.converged, "not_determined": undetermined_exponents(self)}


def undetermined_exponents(fit: LawFit, intervals: dict | None = None) -> list[str]:
    """The exponents the points do not determine, each with why: a fitted alpha or beta above
    MAX_EXPONENT (a degenerate optimum, the term fitting one size or budget alone), or a
    bootstrap interval (`intervals`, as analyse makes them) that spans more than EXPONENT_SPAN
    or reaches zero."""
    out = []
    for k in ("alpha", "beta"):
        value, ci = getattr(fit, k), (intervals or {}).get(k)
        if value > MAX_EXPONENT:
            out.append(f"{k} = {value:.3g} (> {MAX_EXPONENT:g}): a degenerate optimum, {k} is not determined by these points")
        elif ci and not (ci[0] > 0 and ci[1] <= EXPONENT_SPAN * ci[0]):
            out.append(f"{k}'s bootstrap interval [{ci[0]:.3g}, {ci[1]:.3g}] spans more than {EXPONENT_SPAN:g}x: "
                       f"{k} is not determined by these points")
    return out


def allocation_exponents(alpha: float, beta: float) -> tuple[float, float] | None:
    if not (alpha > 0 and beta > 0):
        return None
    return beta / (alpha + beta), alpha / (alpha + beta)


def optimal_allocation(thetas: np.ndarray, flops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N_opt, D_opt and the loss there for each theta row (k, 5) and budget (m,): arrays (k, m).
    Rows with alpha or beta <= 0 (no optimum) give NaN."""
    a, b, e, alpha, beta = (thetas[:, i:i + 1] for i in range(5))
    ok = (alpha > 0) & (beta > 0)
    alpha_s, beta_s = np.where(ok, alpha, 1.0), np.where(ok, beta, 1.0)
    s = alpha_s + beta_s
    log_g = (np.log(alpha_s) + a - np.log(beta_s) - b) / s  # log G
    log_c6 = np.log(flops / 6.0)[None, :]
    log_n = log_g + beta_s / s * log_c6
    log_d = -log_g + alpha_s / s * log_c6
    nan = np.where(ok, 1.0, np.nan)
    with np.errstate(over="ignore"):  # a wild bootstrap refit may put N_opt beyond float range: inf, outside any interval's core
        loss = np.exp(e) + np.exp(a - alpha_s * log_n) + np.exp(b - beta_s * log_d)
        return np.exp(log_n) * nan, np.exp(log_d) * nan, loss * nan


DEFAULT_STARTS = 128  # descents per fit: the grid's 64 best starts by objective and 64 spread over the rest


def grid_rank(log_n, log_d, log_loss, delta: float = HUBER_DELTA) -> np.ndarray:
    """Indices of Hoffmann et al.'s grid, lowest objective on the points first."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.argsort(np.nan_to_num(batch_objective(hoffmann_grid(), log_n, log_d, log_loss, delta), nan=np.inf))


def select_starts(log_n, log_d, log_loss, num_starts: int | None, delta: float = HUBER_DELTA) -> np.ndarray:
    """Rows of Hoffmann et al.'s grid to descend from: all 4,500 (None), or the num_starts/2
    with the lowest objective plus num_starts/2 spread evenly over the others (one descent
    takes ~10 ms on a 240-point set; on the Chinchilla data 2,073 of the 4,500 starts reach
    the best optimum, and so do all of the 8 best-ranked ones)."""
    grid = hoffmann_grid()
    if num_starts is None or num_starts >= len(grid):
        return grid
    rank = grid_rank(log_n, log_d, log_loss, delta)
    best, rest = rank[: (num_starts + 1) // 2], np.sort(rank[(num_starts + 1) // 2:])
    spread = rest[np.linspace(0, len(rest) - 1, num_starts - len(best)).round().astype(int)]
    return grid[np.concatenate([best, spread])]


def fit_law(n, d, loss, num_starts: int | None = DEFAULT_STARTS, optimizer: str = "bfgs", delta: float = HUBER_DELTA,
            starts: np.ndarray | None = None) -> LawFit:
    """Fit the law to points (N, D, loss), all positive and finite (points.check_points), by
    descending from num_starts starts of the grid (None: all 4,500, Hoffmann et al.'s
    procedure) or from the given `starts` (rows of theta), keeping the lowest objective."""
    log_n, log_d, log_loss = np.log(n), np.log(d), np.log(loss)
    unit = loss_unit(log_loss)  # fitted with the median loss as 1, so the grid's E and coefficients suit any loss unit
    log_loss = log_loss - unit[0]
    starts = select_starts(log_n, log_d, log_loss, num_starts, delta) if starts is None else np.atleast_2d(np.asarray(starts, float)) - unit
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        ends, values, success = _descend(starts, log_n, log_d, log_loss, delta, optimizer)
    finite = np.isfinite(values) & np.isfinite(ends).all(axis=1)
    best = int(np.argmin(np.where(finite, values, np.inf))) if finite.any() else None
    if best is None:
        raise ValueError("no start of the fit reached a finite objective: check the points (losses of order 1-10, sizes >= 1)")
    # on a flat ridge the descents stop anywhere along it, their objectives equal to rounding: of those ties, take one
    # whose coefficients are in float range (it is then flagged as not determined), whatever the rounding favoured
    in_range = (ends[:, :3] + unit[:3]).max(axis=1) <= MAX_LOG
    tied = finite & (values <= values[best] + 1e-9 * abs(values[best]) + 1e-15) & in_range
    if tied.any():
        best = int(np.argmin(np.where(tied, values, np.inf)))
    theta, fun = ends[best], float(values[best])
    if max(theta[:3] + unit[:3]) > MAX_LOG:  # a descent along a degenerate ridge: an exponent growing without bound, its coefficient with it
        k = int(np.argmax(theta[:3]))
        raise UserError(f"the law is not determined by these points: its best fit has {'ABE'[k]} = e^{theta[k] + unit[k]:.0f}, beyond float "
                        f"range, with alpha = {theta[3]:.3g}, beta = {theta[4]:.3g} (a term fitting one size or budget alone); "
                        "more sizes and token budgets, over a wider range, pin it down")
    pred, _ = log_prediction(theta, log_n, log_d)
    r = pred - log_loss
    within = int(np.sum(values[finite] <= fun * 1.01 + 1e-12))
    # a descent ends "not converged" when its line search cannot improve at machine precision: at the optimum
    # of this kinked (Huber) objective that is success; judge by the gradient instead
    _, grad = objective(theta, log_n, log_d, log_loss, delta)
    return LawFit.from_theta(theta + unit, objective=fun * delta, num_points=len(log_n), num_starts=len(starts), delta=delta,
                             rms_log_residual=float(np.sqrt(np.mean(r * r))), max_abs_log_residual=float(np.max(np.abs(r))),
                             converged=bool(success[best] or np.max(np.abs(grad)) < 1e-4), starts_within_1pct=within)


def loss_unit(log_loss: np.ndarray) -> np.ndarray:
    """The shift of theta that puts the median loss at 1: the law's log-coefficients (a, b, e) move with the loss's
    unit and its exponents do not, and the fit's objective (relative errors) is the same in any unit."""
    m = float(np.median(log_loss))
    return np.array([m, m, m, 0.0, 0.0])


BOOTSTRAP_CHUNK = 4_000_000  # (resamples x starts) x points per batch of descents: their arrays stay at a few hundred MB
BOOTSTRAP_STARTS = 2  # grid starts per resample besides the full fit's theta (4 gave the same intervals in simulations, at 2x the cost)


def bootstrap_law(n, d, loss, fit: LawFit, num_samples: int, rng: np.random.Generator, optimizer: str = "bfgs",
                  delta: float = HUBER_DELTA, num_starts: int = BOOTSTRAP_STARTS) -> np.ndarray:
    """Refit on `num_samples` resamples of the points (drawn with replacement), each from the
    full fit's theta and the `num_starts` grid starts with the lowest objective on all the
    points, keeping the best; rows of theta, one per resample kept. From theta alone every
    refit stays in the full fit's basin, and on a degenerate optimum the interval collapses
    onto it (9 points: alpha [39.38, 39.46] where refits from 3 starts give [0.08, 199]).
    Resamples with fewer than 3 distinct N or D (where E cannot be told from a power law)
    are dropped, as are failed refits: the row count says how many were kept."""
    log_n, log_d, log_loss = np.log(n), np.log(d), np.log(loss)
    unit = loss_unit(log_loss)  # as fit_law: in units of the median loss
    log_loss = log_loss - unit[0]
    idx = np.array([rng.integers(0, len(log_n), len(log_n)) for _ in range(num_samples)], dtype=int).reshape(num_samples, len(log_n))
    idx = idx[np.array([len(np.unique(log_n[i])) >= 3 and len(np.unique(log_d[i])) >= 3 for i in idx], bool)]
    starts = np.vstack([np.asarray(fit.theta, float)[None, :] - unit, hoffmann_grid()[grid_rank(log_n, log_d, log_loss, delta)[:num_starts]]])
    k = len(starts)
    chunk = max(1, BOOTSTRAP_CHUNK // (k * max(1, len(log_n))))
    kept_thetas = [np.zeros((0, 5))]
    for part in (idx[i:i + chunk] for i in range(0, len(idx), chunk)):
        rows = np.repeat(part, k, axis=0)  # resample i's k descents are rows i*k .. i*k + k-1
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            ends, values, _ = _descend(np.tile(starts, (len(part), 1)), log_n[rows], log_d[rows], log_loss[rows], delta, optimizer)
        values = np.where(np.isfinite(values) & np.isfinite(ends).all(axis=1), values, np.inf).reshape(len(part), k)
        best = np.argmin(values, axis=1)
        kept = np.isfinite(values[np.arange(len(part)), best])
        kept_thetas.append(ends.reshape(len(part), k, 5)[np.arange(len(part)), best][kept].reshape(-1, 5))
    return np.concatenate(kept_thetas) + unit


def theta_to_params(thetas: np.ndarray) -> dict[str, np.ndarray]:
    """Columns of bootstrap thetas as the named parameters E, A, alpha, B, beta (+ a, b)."""
    a, b, e, alpha, beta = thetas.T
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # a wild refit's exp(a) may overflow: inf, in the tail
        ok = (alpha > 0) & (beta > 0)
        share = np.where(ok, beta / (alpha + beta), np.nan)
        return {"E": np.exp(e), "A": np.exp(a), "alpha": alpha, "B": np.exp(b), "beta": beta, "a": share, "b": 1.0 - share}


def coefficient_interval(log_values: np.ndarray, level: float) -> tuple[float, float] | None:
    """The percentile interval of a coefficient (A, B or E) from its logarithms (a, b or e): a refit whose coefficient
    overflows a float stays in the tail (an upper bound beyond float range is inf) instead of being left out."""
    ci = percentile_interval(log_values, level)
    return None if ci is None else tuple(math.exp(v) if v <= MAX_LOG else math.inf for v in ci)


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float] | None:
    """The central `level` percentile interval of the finite values (None if there are none)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)
