"""The lab's operations as tools for LLM strategies (research/llm.py).

Read tools look at the campaign's runs, a run's doctor findings and curve, the harness
source, and the corpus (its data report, sampled train documents); propose tools check a
change against the lab and return a Proposal (a data recipe is built and its held-out data
checked before the model is told it was accepted). Each tool takes
the typed input of research/tool_inputs.py, already validated by the agent loop; the checks
that need the lab (recipe keys, the corpus's domains, the patch allow-list) raise
ValueError, which the loop hands back to the model as a tool error. `context` holds the
campaign id once the campaign exists. The tools whose results carry what runs or corpus
documents wrote (a run's status, recipe, curve and findings, documents) are `untrusted`:
the loop fences their results as data.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import rundir
from ..config import Recipe, apply_overrides
from ..errors import UserError
from . import data_experiments
from . import tool_inputs as inputs
from .code_context import read_page
from .llm import Tool
from .patches import check_allowed
from .space import apply, recipe_diff
from .strategies import Proposal

SCALING_BOOTSTRAP = 300  # fit_scaling_law's resamples and starts: a few seconds on a small ladder
SCALING_STARTS = 64


def corpus_domains(recipe: Recipe) -> list[str]:
    """The domains of the recipe's corpus, from its manifest (no shard is read)."""
    from ..data import Corpus, builtin_corpus_dir

    if recipe.data.corpus == "builtin":
        path = builtin_corpus_dir(recipe.data.tokenizer.replace(":", ""))
    else:
        path = Path(recipe.data.corpus).expanduser()
    try:
        return Corpus.open(path, verify=False).domains
    except UserError as e:
        raise ValueError(f"the corpus's domains are not known yet ({e}); propose a mixture after the baseline has run") from None


def lab_tools(ledger, context: dict, base: Recipe) -> list[Tool]:
    def campaign_runs(args: inputs.ListRuns):
        return ledger.list_runs(campaign=context.get("campaign_id"), status=[args.status] if args.status else None,
                                sort="val_bpb", limit=args.limit,
                                columns=("run_id", "experiment_id", "seed", "status", "val_bpb", "tokens", "tokens_per_s"))

    def compare_runs(args: inputs.CompareRuns):
        from ..ledger.compare import compare

        return compare([_run(i) for i in args.run_ids])

    def run_findings(args: inputs.RunRef):
        from ..doctor import diagnose

        return diagnose(Path(_run(args.run_id)["run_dir"])).to_dict()

    def curve_summary(args: inputs.RunRef):
        rows = list(rundir.iter_metrics(Path(_run(args.run_id)["run_dir"]) / rundir.METRICS))
        train = [r for r in rows if r.get("type") == "train"]
        picks = [train[int(i * (len(train) - 1) / 9)] for i in range(10)] if len(train) >= 10 else train
        return {"train": [{k: r.get(k) for k in ("step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s")} for r in picks],
                "eval": [{k: r.get(k) for k in ("step", "progress", "val_bpb", "val_bpb_domains")} for r in rows if r.get("type") == "eval"]}

    def read_code(args: inputs.ReadCode):
        return read_page(args.path, args.offset, args.limit)  # plain numbered text: the loop sends it as is

    def propose_config(args: inputs.ProposeConfig):
        from .campaign import check_growth

        data_experiments.check_fixed_data(args.changes)  # the corpus changes only through propose_data_recipe
        now = incumbent()
        recipe = apply(now, args.changes)  # ValueError names the field
        if not recipe_diff(now, recipe):  # it would run the incumbent again, and a lucky seed could adopt it
            raise ValueError(f"the incumbent already has {json.dumps(dict(args.changes))}: propose a change to it")
        check_growth(recipe, base)  # the campaign's own checks (campaign.add_proposal), told to the model now
        data_experiments.check_scored_tokens(recipe, base)
        return Proposal("config", args.hypothesis, args.rationale, "llm", values=dict(args.changes))

    def propose_code_patch(args: inputs.ProposeCodePatch):
        check_allowed(args.patch)  # PatchRejected (a ValueError) names the read-only file
        return Proposal("code", args.hypothesis, args.rationale, "llm", patch=args.patch)

    def propose_data_mixture(args: inputs.ProposeDataMixture):
        domains = corpus_domains(base)
        unknown = sorted(set(args.weights) - set(domains))
        if unknown:
            raise ValueError(f"weights name {', '.join(map(repr, unknown))}, not a domain of this corpus: "
                             f"its domains are {', '.join(domains)}")
        weights = dict(args.weights)
        apply_overrides(base, [f"data.weights={json.dumps(weights)}"])  # the recipe's own checks
        return Proposal("data", args.hypothesis, args.rationale, "llm", weights=weights)

    samplers: list = []  # a DocumentSampler of the base corpus's sources, made on first use (it reads them once)

    def incumbent() -> Recipe:
        if ledger is None or not context.get("campaign_id"):
            return base
        from .campaign import handed_back

        return handed_back(ledger, context["campaign_id"])

    def corpus_of(experiment_id: str | None) -> Path:
        from ..runners.job import corpus_path

        if experiment_id is None:
            return corpus_path(incumbent())
        exp = ledger.get_experiment(experiment_id) if ledger is not None else None
        if exp is None or exp["campaign_id"] != context.get("campaign_id") or "recipe" not in (exp["change"] or {}):
            raise ValueError(f"no experiment {experiment_id!r} with a recipe in this campaign: see list_runs for experiment ids")
        return corpus_path(Recipe.from_dict(exp["change"]["recipe"]))

    def corpus_report(args: inputs.CorpusReport):
        return data_experiments.report_for_strategy(corpus_of(args.experiment_id))

    def sample_documents(args: inputs.SampleDocuments):
        if not samplers:
            samplers.append(data_experiments.DocumentSampler(data_experiments.base_data(base)))
        return samplers[0].sample(corpus_of(args.experiment_id), **args.model_dump(exclude={"experiment_id"}))

    def propose_data_recipe(args: inputs.ProposeDataRecipe):
        # builds (or reuses) the derived corpus and checks its held-out data now: a refusal goes back to the model
        data_experiments.apply_data_change(incumbent(), base, list(args.steps), dict(args.weights) if args.weights else None)
        return Proposal("data", args.hypothesis, args.rationale, "llm", data_steps=list(args.steps),
                        weights=dict(args.weights) if args.weights else None)

    def write_note(args: inputs.WriteNote):
        return {"note": ledger.add_note(args.text, author=context.get("author", "llm"), campaign_id=context.get("campaign_id"))}

    def fit_scaling_law(args: inputs.FitScalingLaw):
        from ..scaling import analyse, points_from_runs
        from .ladder import find_ladder, ladder_points

        if args.ladder:
            points = ladder_points(ledger, find_ladder(ledger, args.ladder), args.params)
        elif context.get("campaign_id"):
            rows = ledger.list_runs(campaign=context["campaign_id"], columns=("run_id", "status", "params", "tokens", "val_bpb", "recipe"))
            points = points_from_runs(rows, "this campaign's runs", args.params)
        else:
            raise ValueError("no campaign runs yet: name a scaling ladder (ladder=ID) to fit")
        # fewer starts and resamples than the CLI's defaults: seconds, not tens of seconds, inside a round
        try:
            result = analyse(points, flops=list(args.flops) or None, num_bootstrap=SCALING_BOOTSTRAP, num_starts=SCALING_STARTS)
        except UserError as e:
            hint = "" if args.ladder else "; a scaling ladder varies both (`pretrainlab scaling ladder`, then fit it with ladder=ID)"
            raise ValueError(f"{e}{hint}") from None
        iso = result["isoflop"]
        return {"data": {k: v for k, v in result["data"].items() if k != "skipped"} | {"num_skipped": len(result["data"]["skipped"])},
                "law": result["method"]["law"], "fit": {k: result["fit"][k] for k in ("E", "A", "alpha", "B", "beta", "a", "b",
                                                                                      "rms_log_residual")},
                "intervals": result["intervals"], "interval_level": result["method"]["level"],
                "compute_optimal": result["allocation"],
                "isoflop": {k: iso.get(k) for k in ("a", "b", "a_ci", "reason")},
                "warnings": result["warnings"]}

    def _run(run_id: str) -> dict:
        row = ledger.get_run(ledger.resolve_run(run_id))
        if row is None:
            raise ValueError(f"no run {run_id!r}")
        return row

    return [
        Tool("list_runs", "This campaign's runs, best val_bpb first.", inputs.ListRuns, campaign_runs, untrusted=True),
        Tool("compare_runs", "Recipe diff and metric deltas of 2-6 runs.", inputs.CompareRuns, compare_runs, untrusted=True),
        Tool("run_findings", "The run doctor's diagnosis of a run (loss spikes, stalls, divergence, ...).", inputs.RunRef, run_findings,
             untrusted=True),
        Tool("curve_summary", "A run's loss curve at 10 points and its evaluations.", inputs.RunRef, curve_summary, untrusted=True),
        Tool("read_code", "Read a source file as numbered lines, a page at a time (offset/limit in lines), e.g. model/gpt.py, "
             "train/optim.py, eval.py, config.py. A page that stops before the end says which offset comes next.",
             inputs.ReadCode, read_code),
        Tool("propose_config", "Propose recipe field changes (dotted keys -> values) to test against the incumbent.",
             inputs.ProposeConfig, propose_config),
        Tool("propose_code_patch", "Propose a unified diff against src/pretrainlab/model/ or src/pretrainlab/train/.",
             inputs.ProposeCodePatch, propose_code_patch),
        Tool("propose_data_mixture", "Propose domain sampling weights over the corpus's domains, e.g. {\"code\": 1, \"docs\": 2}.",
             inputs.ProposeDataMixture, propose_data_mixture),
        Tool("corpus_report", "The current corpus's data report: its data recipe's steps, per-domain train/monitor documents and "
             "tokens, and per step the documents and tokens in and out, removal rules, score histograms, duplicate clusters.",
             inputs.CorpusReport, corpus_report, untrusted=True),
        Tool("sample_documents", "Look at train documents of the corpus: by domain, fate (kept/rewritten/removed), the step and rule "
             "that removed them, and its score range, to see what a filter removes. Short excerpts; never held-out documents.",
             inputs.SampleDocuments, sample_documents, untrusted=True),
        Tool("propose_data_recipe", "Propose the data recipe's full ordered steps (filters, dedup, boilerplate, ...) as an experiment: "
             "the lab builds the derived corpus (validation and test data stay the base's) and trains on it.",
             inputs.ProposeDataRecipe, propose_data_recipe),
        Tool("write_note", "Write a note into the campaign's research log.", inputs.WriteNote, write_note),
        Tool("fit_scaling_law", "Fit L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al.'s Approach 3: Huber on log residuals, "
             "bootstrap intervals) to a scaling ladder's runs or this campaign's (N parameters, D tokens, L val_bpb), with the "
             "compute-optimal N and D for given FLOP budgets and the IsoFLOP exponent where the runs allow it.",
             inputs.FitScalingLaw, fit_scaling_law),
    ]
