"""Scaling-law fits: the two-axis law recovers known parameters, reproduces Besiroglu et al.'s
(2024) fit of the Chinchilla data within their intervals, allocates compute as the closed form
says, finds IsoFLOP minima; bad points are one-line errors; the fit reads the ledger's runs and
is the LLM strategies' fit_scaling_law tool. No training here (tests/test_scaling_ladder.py
trains one tiny ladder)."""

import json
import math

import numpy as np
import pytest

from pretrainlab import api
from pretrainlab.cli import main
from pretrainlab.config import apply_overrides
from pretrainlab.errors import UserError
from pretrainlab.recipes import embedding_params, estimate_params, get_recipe
from pretrainlab.scaling import CHINCHILLA_CSV, Points, analyse, fit_law, fit_power_law, load_points, predict
from pretrainlab.scaling import law as L
from pretrainlab.scaling.isoflop import fit_isoflop

TRUE = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}  # Hoffmann et al.'s published law


def law_loss(n, d, p=TRUE):
    return p["E"] + p["A"] * np.power(n, -p["alpha"]) + p["B"] * np.power(d, -p["beta"])


def grid_points(noise=0.0, seed=0):
    n, d = (a.ravel() for a in np.meshgrid(np.geomspace(1e7, 3e9, 6), np.geomspace(1e8, 1e11, 6)))
    loss = law_loss(n, d) * np.exp(noise * np.random.default_rng(seed).standard_normal(len(n)))
    return Points(n, d, loss, [f"p{i}" for i in range(len(n))], "synthetic")


# ---- the single-axis power law (kept) -------------------------------------------------------------


def test_single_axis_power_law_recovers_a_known_law():
    xs = [1e5, 3e5, 1e6, 3e6, 1e7, 3e7]
    ys = [2.0 * x ** -0.3 * 40 + 1.1 for x in xs]
    fit = fit_power_law(xs, ys)
    assert fit["b"] == pytest.approx(0.3, rel=0.02) and fit["c"] == pytest.approx(1.1, abs=0.02)
    assert predict(fit, 1e8) == pytest.approx(80 * 1e8 ** -0.3 + 1.1, rel=0.01)
    with pytest.raises(ValueError, match="3 points"):
        fit_power_law([1, 2], [3, 2])


# ---- the two-axis law -------------------------------------------------------------------------------


def test_the_objectives_gradient_is_its_derivative():
    p = grid_points(noise=0.01)
    args = (np.log(p.n), np.log(p.d), np.log(p.loss))
    theta = np.array([6.2, 7.0, 0.55, 0.36, 0.31])
    _, grad = L.objective(theta, *args)
    eps = 1e-6
    numeric = [(L.objective(theta + eps * e, *args)[0] - L.objective(theta - eps * e, *args)[0]) / (2 * eps) for e in np.eye(5)]
    assert np.allclose(grad, numeric, rtol=1e-4, atol=1e-6)
    assert L.batch_objective(theta[None, :], *args)[0] == pytest.approx(L.objective(theta, *args)[0])


def test_batched_descents_end_where_scipys_bfgs_does():
    """descend_many steps every start (or every bootstrap resample) together; each must end at
    the optimum scipy's BFGS reaches from the same start, on shared and on per-row points."""
    p = grid_points(noise=0.01, seed=3)
    args = (np.log(p.n), np.log(p.d), np.log(p.loss))
    starts = L.select_starts(*args, 16)
    x, f, _ = L.descend_many(starts, *args)
    scipy_f = np.array([L.minimise(s, *args).fun for s in starts])
    assert f.min() == pytest.approx(scipy_f.min(), rel=1e-9)
    # descents from the same start may reach different local optima, but never a worse best, and mostly the same one
    assert np.mean(np.abs(f - scipy_f) <= 1e-6 * scipy_f) >= 0.75
    values, grads = L.objective_many(x, *args)
    assert np.allclose(values, f) and np.abs(grads[np.argmin(f)]).max() < 1e-4
    fit = fit_law(p.n, p.d, p.loss, num_starts=16)
    boot = L.bootstrap_law(p.n, p.d, p.loss, fit, 12, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    for row in boot:  # the same resamples in the same order, each refitted by scipy
        idx = rng.integers(0, len(p.n), len(p.n))
        ref = L.minimise(fit.theta, args[0][idx], args[1][idx], args[2][idx])
        assert L.objective(row, args[0][idx], args[1][idx], args[2][idx])[0] == pytest.approx(ref.fun, rel=1e-7, abs=1e-9)
    bad = np.array([[np.nan] * 5, [1e308, 0, 0, 0, 0]])  # a start that cannot be evaluated ends where it began, never chosen
    _, fb, ok = L.descend_many(bad, *args)
    assert not ok.any() and not np.isfinite(fb).any()


def test_fit_recovers_a_known_law_from_the_grid_of_starts():
    p = grid_points()
    fit = fit_law(p.n, p.d, p.loss, num_starts=32)
    for k, v in TRUE.items():
        assert getattr(fit, k) == pytest.approx(v, rel=2e-3), k
    assert fit.converged and fit.rms_log_residual < 1e-6
    noisy = grid_points(noise=0.005)
    fit = fit_law(noisy.n, noisy.d, noisy.loss, num_starts=32, optimizer="l-bfgs-b")  # Hoffmann et al.'s optimiser reaches it too
    assert fit.alpha == pytest.approx(0.34, abs=0.03) and fit.beta == pytest.approx(0.28, abs=0.03) and fit.E == pytest.approx(1.69, abs=0.05)


def test_compute_optimal_allocation_is_the_minimum_of_the_law_along_c_equals_6nd():
    theta = np.array([math.log(TRUE["A"]), math.log(TRUE["B"]), math.log(TRUE["E"]), TRUE["alpha"], TRUE["beta"]])
    fit = L.LawFit.from_theta(theta, objective=0.0, num_points=0, num_starts=0)
    for c in (1e19, 5.76e23):
        n_opt, d_opt, l_opt = (v[0, 0] for v in fit.optimal(c))
        assert 6 * n_opt * d_opt == pytest.approx(c)
        sizes = np.geomspace(n_opt / 3, n_opt * 3, 20001)
        brute = sizes[np.argmin(law_loss(sizes, c / (6 * sizes)))]
        assert n_opt == pytest.approx(brute, rel=1e-3) and l_opt == pytest.approx(law_loss(n_opt, d_opt))
    a, b = fit.exponents()
    assert a == pytest.approx(0.28 / 0.62) and a + b == pytest.approx(1.0)


def test_the_chinchilla_fit_reproduces_besiroglu_et_al():
    # their points from Hoffmann et al.'s Figure 4, the 5 highest losses left out as they do (240 points);
    # published (arXiv:2404.10102 and its notebook): estimates, and 95% bootstrap percentile intervals over 4,000 resamples
    published = {"E": (1.8172, 1.769, 1.871), "A": (482.01, 285.214, 743.626), "alpha": (0.3478, 0.317, 0.373),
                 "B": (2085.43, 1042.357, 5810.344), "beta": (0.3658, 0.331, 0.415)}
    points = load_points(CHINCHILLA_CSV, drop_highest=5)
    assert len(points) == 240
    result = analyse(points, flops=["5.76e23"], num_bootstrap=200, num_starts=32)
    fit, intervals = result["fit"], result["intervals"]
    for k, (estimate, low, high) in published.items():
        assert low < fit[k] < high, (k, fit[k])  # ours inside their interval
        assert intervals[k][0] < estimate < intervals[k][1], (k, intervals[k])  # theirs inside ours
        assert fit[k] == pytest.approx(estimate, rel=0.03 if k == "B" else 0.01), k
    # the minimum of the Huber objective their notebook reaches with L-BFGS over the full grid: 0.0010182740
    assert fit["objective"] == pytest.approx(0.0010182740, rel=1e-6)
    alloc = result["allocation"][0]
    assert 15 < alloc["tokens_per_param"] < 25 and alloc["N_opt_ci"][0] < alloc["N_opt"] < alloc["N_opt_ci"][1]
    assert fit["a"] == pytest.approx(0.513, abs=0.01)  # their a = beta/(alpha+beta): 0.513 (s.e. 0.020)


def test_isoflop_minima_recover_the_laws_exponent():
    # an iso-FLOP design around the true optimum: sizes spanning 1/4x..4x of N_opt at each budget
    budgets = [1e18, 1e19, 1e20, 1e21]
    theta = np.array([math.log(TRUE["A"]), math.log(TRUE["B"]), math.log(TRUE["E"]), TRUE["alpha"], TRUE["beta"]])
    n_opt, _, _ = L.optimal_allocation(theta[None, :], np.array(budgets))
    n = np.concatenate([n_opt[0, j] * np.geomspace(0.25, 4, 7) for j in range(len(budgets))])
    c = np.repeat(budgets, 7)
    d = c / (6 * n)
    iso = fit_isoflop(n, d, law_loss(n, d), c, num_bootstrap=50, rng=np.random.default_rng(0))
    assert iso.a == pytest.approx(0.28 / 0.62, abs=0.01) and iso.b == pytest.approx(1 - iso.a)
    assert all(b["used"] for b in iso.budgets)
    # a budget whose sizes all lie on one side of its optimum is named, not extrapolated
    small = n_opt[0, 0] * np.geomspace(2, 8, 5)
    iso = fit_isoflop(small, 1e18 / (6 * small), law_loss(small, 1e18 / (6 * small)), np.full(5, 1e18), 0, np.random.default_rng(0))
    assert iso.a is None and "add smaller models" in iso.budgets[0]["why_not"] and "at least 2" in iso.reason


# ---- points and their errors -------------------------------------------------------------------------


def test_points_from_csv_and_json_agree_and_d_may_come_from_flops(tmp_path):
    p = grid_points()
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("# N = total params, D = tokens\nparams,Training FLOP,val_bpb\n"
                        + "".join(f"{a},{6 * a * b},{y}\n" for a, b, y in zip(p.n, p.d, p.loss)))
    json_path = tmp_path / "p.json"
    json_path.write_text(json.dumps({"points": [{"N": a, "D": b, "loss": y} for a, b, y in zip(p.n, p.d, p.loss)]}))
    a, b = load_points(csv_path), load_points(json_path)
    assert np.allclose(a.d, b.d) and np.allclose(a.n, b.n) and a.loss_unit == "bits per byte" and b.loss_name == "loss"
    dropped = load_points(json_path, drop_highest=3)
    assert len(dropped) == len(p) - 3 and dropped.loss.max() < np.sort(p.loss)[-3] and dropped.skipped


@pytest.mark.parametrize("rows, fragments", [
    ([(1e6 * (i + 1), 1e8 * (i + 1), 3.0) for i in range(5)], ["5 distinct (N, D) points for the law's 5 parameters", "at least 6"]),
    # one size and budget per model, each pasted three times: 9 rows, 3 points' worth (it passed, with zero-width intervals)
    ([(1e6 * (i + 1), 1e8 * (i + 1), 3.0 - i / 10) for i in range(3)] * 3, ["3 distinct (N, D) points (9 rows, repeated", "at least 6"]),
    ([(1e6 * (i + 1), 1e8 * (1 + i % 2), 3.0) for i in range(8)], ["2 distinct token counts (D)", "another token budget"]),
    ([(1e6 * (i + 1), 1e8 * (i + 1), 3.0 if i != 4 else float("nan")) for i in range(8)], ["row 5: loss is nan", "drop that point"]),
    ([(-1e6 if i == 2 else 1e6 * (i + 1), 1e8 * (i + 1), 3.0) for i in range(8)], ["row 3: N (parameters) is -1e+06, not positive"]),
    ([(1e6 * (i + 1), 0 if i == 0 else 1e8 * (i + 1), 3.0) for i in range(8)], ["row 1: D (tokens) is 0, not positive"]),
])
def test_bad_points_are_one_line_errors_naming_the_fix(tmp_path, capsys, rows, fragments):
    path = tmp_path / "bad.csv"
    path.write_text("N,D,loss\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    assert main(["scaling", "fit", str(path), "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for f in fragments:
        assert f in err[0], err[0]


def test_file_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "cols.csv").write_text("params,loss\n1,2\n")
    (tmp_path / "word.csv").write_text("N,D,loss\n1e6,lots,3\n")
    grid = "".join(f"{n:g},{d:g},{3 - i / 10 - j / 20}\n" for i, n in enumerate((1e6, 3e6, 1e7)) for j, d in enumerate((1e8, 3e8, 1e9)))
    (tmp_path / "twice.csv").write_text("N,N,D,loss\n" + "".join(f"{ln.split(',')[0]},{ln}" for ln in grid.splitlines(True)))
    (tmp_path / "long.csv").write_text("N,D,loss\n" + grid + "1e8,1e9,2.5,oops\n")
    (tmp_path / "huge.csv").write_text("N,D,loss\n" + "".join(f"{n:g},{n:g},{3 - i / 10}\n" for i, n in enumerate((1e150, 1e154, 1e155))))
    (tmp_path / "grid.csv").write_text("N,D,loss\n" + grid)
    for argv, fragment in ((["scaling", "fit", str(tmp_path / "cols.csv")], "no column for D (e.g. tokens) or FLOPs"),
                           (["scaling", "fit", str(tmp_path / "word.csv")], "row 1: D is 'lots', not a number"),
                           (["scaling", "fit", str(tmp_path / "none.csv")], "cannot read it"),
                           (["scaling", "fit", str(CHINCHILLA_CSV), "--plot", str(tmp_path / "fit.pdf")], "must end in .svg or .html"),
                           (["scaling", "fit", str(CHINCHILLA_CSV), "--flops", "lots"], "give a compute budget in FLOPs"),
                           (["scaling", "fit", str(CHINCHILLA_CSV), "--params", "non-embedding"], "a file's N is used as given"),
                           (["scaling", "fit"], "scaling fit needs points"),
                           (["scaling", "fit", str(tmp_path / "twice.csv")], "the header names N more than once"),
                           (["scaling", "fit", str(tmp_path / "long.csv")], "row 10 has more fields than the header (3)"),
                           (["scaling", "fit", str(tmp_path / "huge.csv")], "6 N D (the training FLOPs) is beyond float range"),
                           (["scaling", "fit", str(tmp_path / "grid.csv"), "--seed", "-1"], "--seed -1: give a seed >= 0")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], (argv, err)


def test_cli_fit_prints_the_law_and_writes_json_and_plots(tmp_path, capsys):
    p = grid_points(noise=0.01)
    path = tmp_path / "p.csv"
    path.write_text("N,D,loss\n" + "".join(f"{a},{b},{y}\n" for a, b, y in zip(p.n, p.d, p.loss)))
    assert main(["scaling", "fit", str(path), "--flops", "1e21,1e22", "--bootstrap", "40", "--starts", "16",
                 "--plot", str(tmp_path / "fit.svg")]) == 0
    out = capsys.readouterr().out
    for fragment in ("alpha", "95% interval", "compute-optimal allocation", "1e+21", "IsoFLOP", "plot: "):
        assert fragment in out, fragment
    svg = (tmp_path / "fit.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<svg") == 4 and "compute-optimal frontier" in svg
    assert main(["scaling", "fit", str(path), "--json", "--bootstrap", "40", "--starts", "16", "--plot", str(tmp_path / "fit.html")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["fit"]["alpha"] == pytest.approx(0.34, abs=0.05) and len(result["points"]) == len(p)
    assert {"N_opt", "N_opt_ci", "D_opt", "D_opt_ci", "tokens_per_param", "loss"} <= set(result["allocation"][0])
    assert "<svg" in (tmp_path / "fit.html").read_text()


# ---- the ledger's runs and the LLM tool ----------------------------------------------------------------


def fake_run(root, n_embd, tokens, status="ok", law=None):
    """A finished run directory of tiny-cpu at width n_embd, with val_bpb from a known law (no training)."""
    recipe = apply_overrides(get_recipe("tiny-cpu"), [f"model.n_embd={n_embd}", f"budget.tokens={tokens}"])
    n = estimate_params(recipe)
    law = law or {"E": 1.2, "A": 60.0, "alpha": 0.4, "B": 90.0, "beta": 0.35}
    run_dir = root / f"w{n_embd}-t{tokens}"
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.json").write_text(json.dumps(recipe.to_dict()))
    val = float(law_loss(n, tokens, law)) if status == "ok" else None
    (run_dir / "summary.json").write_text(json.dumps({"status": status, "val_bpb": val, "params": n, "tokens": tokens}))
    return run_dir


def test_ledger_runs_fit_through_the_api_and_the_llm_tool(tmp_path):
    from pretrainlab.ledger import Ledger
    from pretrainlab.research import tool_inputs as inputs
    from pretrainlab.research.tools import lab_tools

    db = str(tmp_path / "ledger.db")
    with Ledger(db) as lg:
        cid = lg.create_campaign("widths")
        for w in (64, 96, 128, 160):
            for t in (50_000, 100_000, 200_000, 400_000):
                lg.register_run(fake_run(tmp_path / "runs", w, t), campaign_id=cid)
        lg.register_run(fake_run(tmp_path / "runs", 192, 50_000, status="crashed"), campaign_id=cid)
        flat = lg.create_campaign("one size")
        for t in (25_000, 50_000, 100_000, 200_000, 400_000, 800_000):  # a campaign at one model size: no law in N
            lg.register_run(fake_run(tmp_path / "flat", 128, t), campaign_id=flat)

    result = api.scaling_fit(campaign="widths", num_bootstrap=50, num_starts=16, db=db)
    assert result["data"]["num_points"] == 16 and any("status crashed" in s for s in result["data"]["skipped"])
    assert result["fit"]["alpha"] == pytest.approx(0.4, abs=0.01) and result["fit"]["beta"] == pytest.approx(0.35, abs=0.01)
    ne = api.scaling_fit(campaign="widths", params="non-embedding", num_bootstrap=0, num_starts=16, db=db)
    recipe = apply_overrides(get_recipe("tiny-cpu"), ["model.n_embd=64"])
    assert ne["data"]["N_range"][0] == estimate_params(recipe) - embedding_params(recipe)

    with Ledger(db) as lg:
        tool = {t.name: t for t in lab_tools(lg, {"campaign_id": cid}, get_recipe("tiny-cpu"))}["fit_scaling_law"]
        out = tool.run(inputs.FitScalingLaw(flops=[1e13]))
        assert out["fit"]["alpha"] == pytest.approx(0.4, abs=0.01) and set(out["intervals"]) >= {"E", "A", "alpha", "B", "beta", "a"}
        best = out["compute_optimal"][0]
        assert best["C"] == 1e13 and best["N_opt_ci"][0] <= best["N_opt"] <= best["N_opt_ci"][1]
        json.dumps(out)  # what the loop sends back to the model
        flat_tool = {t.name: t for t in lab_tools(lg, {"campaign_id": flat}, get_recipe("tiny-cpu"))}["fit_scaling_law"]
        with pytest.raises(ValueError, match="1 distinct model sizes.*scaling ladder"):
            flat_tool.run(inputs.FitScalingLaw())
        with pytest.raises(UserError, match="research campaign, not a scaling ladder"):
            tool.run(inputs.FitScalingLaw(ladder=cid))

    # the MCP face: the same api call, a mistake as the CLI's one-line message
    import asyncio

    pytest.importorskip("mcp")
    from pretrainlab.mcp_server import build_server

    server = build_server(db)
    done = asyncio.run(server.call_tool("scaling_fit", {"campaign": "widths", "flops": [1e13], "num_bootstrap": 20}))
    data = done.structured_content or json.loads("".join(getattr(c, "text", "") for c in done.content))
    assert not done.is_error and data["fit"]["alpha"] == pytest.approx(0.4, abs=0.01) and "points" not in data
    from mcp.server.mcpserver.exceptions import ToolError

    with pytest.raises(ToolError, match="1 distinct model sizes"):  # the client receives it as an error result
        asyncio.run(server.call_tool("scaling_fit", {"campaign": "one size", "num_bootstrap": 0}))


# ---- transfer: a small-rung gain carried to a larger rung (scaling/transfer.py) ----------------------------

CHINCHILLA = np.array([math.log(406.4), math.log(410.7), math.log(1.69), 0.34, 0.28])  # (a, b, e, alpha, beta)


def test_a_gain_carried_to_the_same_rung_is_the_gain_itself():
    from pretrainlab.scaling.transfer import predict_transfer

    p = predict_transfer(CHINCHILLA[None, :], (1e8, 2e9), (1e8, 2e9), incumbent_small=2.9, effect=-0.02)
    assert p["effect"] == pytest.approx(-0.02, abs=1e-9) and p["incumbent"] == pytest.approx(2.9)
    assert p["multiplier"] > 1 and p["effect_ci"] is None  # no bootstrap refits: no interval


def test_a_constant_compute_multiplier_buys_less_loss_at_a_larger_rung():
    from pretrainlab.scaling.transfer import _law, compute_multiplier, predict_transfer

    small, large = (1e8, 2e9), (1e9, 2e10)
    k = compute_multiplier(CHINCHILLA, *small, -0.02)
    s = math.sqrt(k)
    assert _law(CHINCHILLA, small[0] * s, small[1] * s) == pytest.approx(_law(CHINCHILLA, *small) - 0.02, abs=1e-9)
    p = predict_transfer(CHINCHILLA[None, :], small, large, incumbent_small=2.9, effect=-0.02)
    assert -0.02 < p["effect"] < 0 and p["multiplier"] == pytest.approx(k)
    assert p["incumbent"] == pytest.approx(2.9 + _law(CHINCHILLA, *large) - _law(CHINCHILLA, *small))
    assert p["candidate"] == pytest.approx(p["incumbent"] + p["effect"])
    # a gain larger than all the reducible loss: no compute buys it, so nothing is predicted
    beyond = predict_transfer(CHINCHILLA[None, :], small, large, 2.9, effect=-(_law(CHINCHILLA, *small) - 1.69) - 0.01)
    assert beyond["effect"] is None and "no prediction" in beyond["note"]


def test_bootstrap_refits_give_the_prediction_an_interval_around_it():
    from pretrainlab.scaling.transfer import predict_transfer, verdict

    rng = np.random.default_rng(0)
    thetas = np.vstack([CHINCHILLA, CHINCHILLA + rng.normal(0, [0.05, 0.05, 0.01, 0.01, 0.01], size=(200, 5))])
    p = predict_transfer(thetas, (1e8, 2e9), (1e9, 2e10), 2.9, -0.02)
    lo, hi = p["effect_ci"]
    assert lo < p["effect"] < hi < 0 and p["resamples"] == 200
    assert "inside the interval" in verdict(p, p["effect"]) and "outside the interval" in verdict(p, 0.01)


def test_a_degenerate_refit_is_left_out_and_a_degenerate_law_predicts_nothing():
    from pretrainlab.scaling.transfer import predict_transfer

    wild = np.array([-5689.5, 4.32, -33.0, -503.9, 0.297])  # a refit on six points: alpha < 0, A = e^-5689
    p = predict_transfer(np.vstack([CHINCHILLA, wild, CHINCHILLA]), (1.8e5, 8192), (2.7e5, 8192), 3.9, -0.05)
    assert p["effect"] is not None and p["degenerate"] == 1 and p["resamples"] == 2
    q = predict_transfer(wild[None, :], (1.8e5, 8192), (2.7e5, 8192), 3.9, -0.05)
    assert q["effect"] is None and q["incumbent"] is None and "does not fall" in q["note"]
