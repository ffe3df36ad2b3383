"""``fedoa eval``: score a finished run's models on any supported data set, or on lm-eval tasks.

Every client's models (personal, global, mixed where the method has it, zero-shot) meet every
test set of the data. A test set named like a client is that client's ID set (the run's own data,
one task per client); every other set is OOD for it. With ``--lm-eval TASKS`` the same models are
scored by lm-evaluation-harness in process (:mod:`fedoa.evaluation.lmeval`): ``lmeval.json`` holds
the matrices (kind -> client -> task -> lm-eval's headline metric) and ``lm-eval/`` lm-eval's own
results files, one folder per distinct model.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from fedoa.cli.common import add_quiet_arg, add_run_dir_arg

EXAMPLE = """example:
  fedoa eval runs/default --data vader                        # the run's own domains, all four
  fedoa eval runs/flan8 --data /path/to/flan8 --set data.test_per_client=200 --out runs/flan8/eval200
  fedoa eval runs/default --data hf:path/to/saved_dataset --kinds personal,global \\
      --set 'data.hf_columns={instruction="question", output="answer", options="choices"}'
  fedoa eval runs/default --lm-eval arc_easy,hellaswag --limit 200          # lm-eval tasks (the hub's need the network)
  fedoa eval runs/default --lm-eval fedoa_movie --include-path tasks/ --log-samples   # a local task folder
"""


def data_values(spec: str) -> dict[str, Any]:
    """``--data`` -> the [data] keys it sets: 'vader', 'hf:NAME_OR_PATH' or a jsonl folder (Flan-8 layout)."""
    from fedoa.errors import DataError

    if spec in ("vader", "embedded:vader"):
        return {"source": "vader", "path": "", "tasks": []}
    if spec.startswith("hf:") and spec[3:]:
        return {"source": "hf", "path": spec[3:], "tasks": []}
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise DataError("not a folder of <category>/<task>_test.jsonl files, 'vader' or 'hf:NAME'", where=spec)
    return {"source": "jsonl", "path": str(folder.resolve()), "tasks": []}


def test_sets(cfg) -> dict[str, list]:
    """task -> its test records, capped like a client's (``data.test_per_client``, ``split_seed``):
    on the run's own data these are the run's own test sets. A jsonl folder needs test files only."""
    from fedoa.data import load_tasks
    from fedoa.data.partition import cap_records
    from fedoa.data.scenario import shared_test_sets
    from fedoa.errors import DataError

    d = cfg.data
    if d.source == "jsonl":
        sets = shared_test_sets(cfg, d.path)
        unknown = sorted(set(d.tasks) - set(sets))
        if unknown:
            raise DataError(f"unknown task(s) {unknown}; the folder has {', '.join(sets)}", where="data.tasks")
        sets = {t: r for t, r in sets.items() if t in d.tasks or not d.tasks}
    else:
        sets = {t: cap_records(test, d.test_per_client, d.split_seed, f"{t}:test")
                for t, (_, test) in load_tasks(d, d.split_seed).items()}
    sets = {t: r for t, r in sets.items() if r}
    if not sets:
        raise DataError("no test records", where=d.path or d.source)
    return sets


def score(run, sets: dict[str, list], kinds: list[str], progress: bool):
    """kind -> client -> set -> SetScores, through the run's evaluation code."""
    from tqdm.auto import tqdm

    from fedoa.evaluation.batched import evaluate_batched
    from fedoa.kinds import ZERO_SHOT
    from fedoa.evaluation.matrix import EvalPlan, Evaluator, evaluate_models
    from fedoa.runtime.common import batches_clients, model_identity

    am, encoder = run.model
    first = next(iter(sets))
    # every client meets every set; the plan's ID entry only has to name one of them
    plan = EvalPlan(sets, {c: c if c in sets else first for c in run.clients},
                    {c: [s for s in sets if s != (c if c in sets else first)] for c in run.clients})
    evaluator = Evaluator(am, encoder, run.cfg.eval, encoder.tokenizer.pad_token_id, encoder.tokenizer.eos_token_id)
    evaluator.prepare(plan)

    def identity(kind: str, client: str) -> str:
        return model_identity(run.algorithm, kind, client)

    todo = {(identity(k, c), s): len(r) for k in kinds for c in run.clients for s, r in sets.items()}
    with tqdm(total=sum(todo.values()), desc="evaluating", unit="ex", disable=not progress, dynamic_ncols=True) as bar:
        if batches_clients(run.cfg, am.device):  # the run's runtime.batch_clients, as fedoa run evaluates
            global_state = run.global_state if any(k != ZERO_SHOT for k in kinds) else {}
            return evaluate_batched(evaluator, plan, kinds, identity, run.describe, run.activate, global_state,
                                    bar.update)
        return evaluate_models(evaluator, plan, kinds, identity, run.activate, bar.update)


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else None


def summary(matrix: dict[str, dict[str, float]]) -> dict[str, float | None]:
    """Mean over clients of the ID accuracy (where a set has the client's name) and of the
    client's mean accuracy on every other set."""
    ids = [row[c] for c, row in matrix.items() if c in row]
    oods = [_mean([v for s, v in row.items() if s != c]) for c, row in matrix.items()]
    return {"id_accuracy": _mean(ids), "ood_accuracy": _mean(oods)}


def build_eval(run, spec: str, sets: dict[str, list], scores, seconds: float) -> dict[str, Any]:
    from fedoa.evaluation.matrix import matrices, records
    from fedoa.reports.results import clean

    metric = "generation" if run.cfg.eval.metric == "generation" else "options"
    mats = matrices(scores, metric)
    out = {
        "run": str(run.folder), "method": run.cfg.method, "model": run.cfg.model.name,
        "data": {"spec": spec, **{k: getattr(run.cfg.data, k) for k in ("source", "path", "tasks", "test_per_client",
                                                                          "split_seed", "template")}},
        "metric": {"headline": metric}, "clients": run.clients, "kinds": list(scores),
        "test_sets": {s: len(r) for s, r in sets.items()},
        "set_categories": {s: ",".join(sorted({r.category or r.task for r in recs})) for s, recs in sets.items()},
        "id_set": {c: c for c in run.clients if c in sets},
        "summary": {k: summary(m) for k, m in mats.items()},
        "matrices": mats, "records": records(scores, metric), "seconds": seconds,
    }
    if run.cfg.eval.metric == "both":
        gen = matrices(scores, "generation")
        out["generation"] = {"summary": {k: summary(m) for k, m in gen.items()}, "matrices": gen}
    if run.cfg.eval.rouge:  # the reference's generation scoring (mean F-measure per ROUGE type)
        from fedoa.evaluation.matrix import rouge_matrices
        from fedoa.evaluation.rouge import ROUGE_TYPES

        out["rouge"] = {t: {"summary": {k: summary(m) for k, m in rouge_matrices(scores, t).items()},
                            "matrices": rouge_matrices(scores, t)} for t in ROUGE_TYPES}
    return clean(out)


def render_eval(ev: dict[str, Any]) -> str:
    from fedoa.reports.markdown import md_table, pct

    sets = list(ev["test_sets"])
    parts = [f"# fedoa eval: {ev['method']} run `{ev['run']}` on `{ev['data']['spec']}`", "",
             f"- metric: **{ev['metric']['headline']}**, accuracy in %; ID: the test set named like the client",
             "- test sets: " + ", ".join(f"{s} ({n})" for s, n in ev["test_sets"].items()), "",
             "## ID / OOD accuracy", "",
             md_table(["model", "ID", "OOD"], [[k, pct(s["id_accuracy"]), pct(s["ood_accuracy"])]
                                               for k, s in ev["summary"].items()]), ""]
    for kind, matrix in ev["matrices"].items():
        rows = [[c] + [pct(row.get(s)) for s in sets] for c, row in matrix.items()]
        parts += [f"## Matrix: {kind}", "", md_table([f"{kind} model of \\ test set"] + sets, rows), ""]
    if ev.get("rouge"):
        parts += ["## ROUGE F-measure (the reference's generation scoring), in %", "",
                  md_table(["model"] + [f"{t} {g}" for t in ev["rouge"] for g in ("ID", "OOD")],
                           [[k] + [pct(ev["rouge"][t]["summary"][k][f"{g}_accuracy"]) for t in ev["rouge"]
                                   for g in ("id", "ood")] for k in ev["summary"]]), ""]
    return "\n".join(parts)


# ---------------------------------------------------------------------------- lm-evaluation-harness


def lm_eval_scores(run, tasks: list[str], kinds: list[str], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Every client's ``kinds`` models through lm-eval's ``simple_evaluate``; a model shared by
    clients (global, zero-shot) is scored once. lm-eval's own files go to ``out/lm-eval``."""
    import logging

    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    from fedoa.evaluation.lmeval import flat_scores, headline_metric, make_lm, task_manager, verdicts
    from fedoa.runtime.common import model_identity

    level = logging.ERROR if args.quiet else logging.WARNING
    am, encoder = run.model
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # not its warning about a model object given
    lm = make_lm(am, encoder.tokenizer, args.batch_size or run.cfg.eval.batch_size, progress=not args.quiet)
    manager = task_manager(tasks, args.include_path)
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    done: dict[str, dict[str, Any]] = {}  # model identity -> its results
    per_model: dict[str, dict[str, str]] = {}  # kind -> client -> identity
    for kind in kinds:
        for client in run.clients:
            identity = model_identity(run.algorithm, kind, client)
            per_model.setdefault(kind, {})[client] = identity
            if identity in done:
                continue
            run.activate(kind, client)
            tracker = EvaluationTracker(output_path=str(out / "lm-eval"))
            res = lm_eval.simple_evaluate(
                model=lm, tasks=tasks, task_manager=manager, num_fewshot=args.num_fewshot, limit=limit,
                log_samples=True, evaluation_tracker=tracker, verbosity=logging.getLevelName(level),
            )
            samples = res.pop("samples", {})
            tracker.general_config_tracker.log_experiment_args(
                model_source="fedoa", model_args={"model": f"fedoa/{identity}"}, system_instruction=None,
                chat_template=None, fewshot_as_multiturn=False)
            tracker.save_results_aggregated(results=res, samples=samples if args.log_samples else None)
            if args.log_samples:
                for task in res["configs"]:
                    tracker.save_results_samples(task_name=task, samples=samples[task])
            folder = out / "lm-eval" / tracker.general_config_tracker.model_name_sanitized
            done[identity] = {"scores": flat_scores(res), "samples": samples,
                              "file": str(folder / f"results_{tracker.date_id}.json")}
    first = next(iter(done.values()))["scores"]
    headline = {task: headline_metric(values) for task, values in first.items()}
    headline = {t: m for t, m in headline.items() if m}
    records: dict[str, Any] = {}
    for task, metric in headline.items():  # each document's verdict where the metric is a 0/1 one
        name = metric.split(",")[0]
        if metric.endswith(",none") and all(_binary(d["samples"].get(task), name) for d in done.values()):
            for kind, clients in per_model.items():
                for client, identity in clients.items():
                    records.setdefault(kind, {}).setdefault(client, {})[task] = verdicts(
                        {"samples": done[identity]["samples"]}, task, name)
    return {
        "tasks": tasks, "headline": headline,
        "matrices": {k: {c: {t: done[i]["scores"][t].get(m) for t, m in headline.items()} for c, i in cs.items()}
                     for k, cs in per_model.items()},
        "metrics": {k: {c: done[i]["scores"] for c, i in cs.items()} for k, cs in per_model.items()},
        "outputs": {i: d["file"] for i, d in done.items()},
        "records": records, "version": getattr(lm_eval, "__version__", ""),
    }


def _binary(samples: list[dict] | None, name: str) -> bool:
    return bool(samples) and all(s.get(name) in (0, 1) for s in samples)  # True/False/0.0/1.0 compare equal


def build_lm_eval(run, args: argparse.Namespace, scored: dict[str, Any], seconds: float) -> dict[str, Any]:
    from fedoa.reports.results import clean

    mats = scored["matrices"]
    summary = {k: {t: _mean([row.get(t) for row in m.values()]) for t in scored["headline"]} for k, m in mats.items()}
    return clean({
        "run": str(run.folder), "method": run.cfg.method, "model": run.cfg.model.name,
        "lm_eval": {"version": scored["version"], "tasks": scored["tasks"], "include_path": args.include_path,
                    "num_fewshot": args.num_fewshot, "limit": args.limit,
                    "batch_size": args.batch_size or run.cfg.eval.batch_size},
        "metric": {"headline": scored["headline"]}, "clients": run.clients, "kinds": list(mats),
        "summary": summary, "matrices": mats, "metrics": scored["metrics"], "records": scored["records"],
        "outputs": scored["outputs"], "seconds": seconds,
    })


def render_lm_eval(ev: dict[str, Any]) -> str:
    from fedoa.reports.markdown import md_table, pct

    tasks = list(ev["metric"]["headline"])
    parts = [f"# fedoa eval: {ev['method']} run `{ev['run']}` on lm-eval tasks", "",
             f"- lm-evaluation-harness {ev['lm_eval']['version']}, in %; metric per task: "
             + ", ".join(f"{t} `{m}`" for t, m in ev["metric"]["headline"].items()), "",
             "## Mean over clients", "",
             md_table(["model"] + tasks, [[k] + [pct(s.get(t)) for t in tasks] for k, s in ev["summary"].items()]), ""]
    for kind, matrix in ev["matrices"].items():
        rows = [[c] + [pct(row.get(t)) for t in tasks] for c, row in matrix.items()]
        parts += [f"## Matrix: {kind}", "", md_table([f"{kind} model of \\ task"] + tasks, rows), ""]
    return "\n".join(parts)


def run_eval(args: argparse.Namespace) -> int:
    from fedoa.errors import ConfigError
    from fedoa.finished import FinishedRun
    from fedoa.io import write_json, write_text

    if not args.data and not args.lm_eval:
        raise ConfigError("give --data (a data set) or --lm-eval (lm-eval tasks), or both", where="fedoa eval")
    if args.lm_eval:
        from fedoa.evaluation.lmeval import require_lm_eval

        require_lm_eval()
    run = FinishedRun.open(args.run_dir, args.set or [], {"data": data_values(args.data)} if args.data else None)
    kinds = args.kinds.split(",") if args.kinds else run.kinds()
    sets = test_sets(run.cfg) if args.data else {}
    run.check_models(kinds)
    out = Path(args.out) if args.out else run.folder / "eval"
    if args.data:
        start = time.perf_counter()
        ev = build_eval(run, args.data, sets, score(run, sets, kinds, not args.quiet), time.perf_counter() - start)
        write_json(out / "eval.json", ev)
        write_text(out / "eval.md", render_eval(ev))
        print(render_eval(ev).split("## Matrix")[0].rstrip())
        print(f"\nscores in {out}/eval.json, tables in {out}/eval.md")
    if args.lm_eval:
        tasks = [t.strip() for t in args.lm_eval.split(",") if t.strip()]
        start = time.perf_counter()
        scored = lm_eval_scores(run, tasks, kinds, args, out)
        ev = build_lm_eval(run, args, scored, time.perf_counter() - start)
        write_json(out / "lmeval.json", ev)
        write_text(out / "lmeval.md", render_lm_eval(ev))
        print(render_lm_eval(ev).split("## Matrix")[0].rstrip())
        print(f"\nscores in {out}/lmeval.json, tables in {out}/lmeval.md, lm-eval's own files in {out}/lm-eval/")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="score a finished run's models on any supported data set", epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_dir_arg(p)
    p.add_argument("--data", metavar="PATH_OR_SPEC",
                   help="'vader', 'hf:NAME_OR_PATH' (with the data.hf_* keys) or a folder of "
                        "<category>/<task>_test.jsonl files (Flan-8 layout)")
    p.add_argument("--lm-eval", metavar="TASKS",
                   help="comma-separated lm-evaluation-harness tasks or groups, scored in process on every model "
                        "(needs the lmeval extra; tasks from the hub need the network)")
    p.add_argument("--include-path", metavar="DIR", help="--lm-eval: a folder of extra task YAML files (lm-eval's own)")
    p.add_argument("--num-fewshot", type=int, metavar="N", help="--lm-eval: few-shot examples (default: each task's)")
    p.add_argument("--limit", type=float, metavar="N",
                   help="--lm-eval: at most N documents per task (below 1: that fraction)")
    p.add_argument("--batch-size", type=int, metavar="N", help="--lm-eval: batch size (default: eval.batch_size)")
    p.add_argument("--log-samples", action="store_true",
                   help="--lm-eval: also write lm-eval's per-sample files")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a key of the run's config, e.g. data.test_per_client=200, eval.metric=both, "
                        "model.device=cpu (repeatable; the model and LoRA keys are fixed by the adapters)")
    p.add_argument("--kinds", help="comma-separated models to score (default: every kind the run evaluated)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/eval)")
    add_quiet_arg(p)
    p.set_defaults(func=run_eval)
