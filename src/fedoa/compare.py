"""``fedoa compare``: several methods x seeds (x held-out categories) under one protocol, one table.

Every run uses the same config (protocol, data, model, train/fed/eval budget) except ``method``,
``seed`` and, for ``leave-category-out`` without a fixed ``protocol.holdout``, the held-out
category, which rotates over all categories. Runs go to ``DIR/runs/<method>/seed<k>[/holdout-<c>]``
with their own ``results.json``; a run whose ``results.json`` exists with the same config is not
redone, an interrupted one resumes from its checkpoint (``run_simulation`` does that).

The base model is loaded once: every run gets a session over the same :class:`AdapterModel`
(its LoRA slots are reset between runs), and the zero-shot model is scored once per distinct test
set and shared (``Evaluator.base_cache``).

Table (``compare.md`` / ``compare.json`` / ``compare.png``): per evaluated model (personal,
global, zero-shot) and group (ID, headline OOD, the protocol's other OOD groups), the accuracy per
*category* = mean over the (client model, test set) pairs of the group whose test set belongs to
that category; with held-out rotation, a seed's value is the mean over the rotations that have
such pairs. *Average* = mean over the categories (as in the paper's table). Cells show
mean ± sample standard deviation (n-1) over seeds.
"""
from __future__ import annotations

import json
import re
import math
import statistics
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedoa.config import RunConfig, config_to_toml
from fedoa.errors import ConfigError, FedoaError

KINDS = ("personal", "global")
KIND_LABELS = {"personal": "personal", "global": "global", "zero_shot": "base model"}
AVERAGE = "average"
OOD_LABELS = {
    "natural": "every other client's test data",
    "within-category": "the sibling task of the same category",
    "leave-category-out": "the held-out category (rotated)",
}
GROUP_LABELS = {"all": "every other task", "sibling": "the sibling task of the same category"}


# ----------------------------------------------------------------------------- the runs


@dataclass
class RunSpec:
    method: str
    seed: int
    holdout: str
    cfg: RunConfig
    out: Path

    @property
    def key(self) -> str:
        return f"{self.method}/seed{self.seed}" + (f"/holdout-{self.holdout}" if self.holdout else "")


def split_method(label: str) -> tuple[str, list[str]]:
    """``'fedoa[fedoa.feature=answer;fedoa.regular_weight=1]'`` -> name and ``--set`` overrides.

    A bracketed variant runs the same method with other settings, as its own row of the table.
    """
    if "[" not in label:
        return label, []
    if not label.endswith("]"):
        raise ConfigError(f"a method variant looks like name[key=value;...], got {label!r}", where="--methods")
    name, rest = label[:-1].split("[", 1)
    return name.strip(), [o.strip() for o in rest.split(";") if o.strip()]


def variant_config(cfg: RunConfig, label: str) -> RunConfig:
    """``cfg`` with the method (and the variant's overrides) of ``label``, validated."""
    from fedoa.config import _build, _merge, parse_override, validate

    name, overrides = split_method(label)
    values = {**cfg.to_dict(), "method": name}
    for text in overrides:
        values = _merge(values, parse_override(text))
    try:
        run_cfg = _build(RunConfig, values)
    except ConfigError as e:
        raise ConfigError(f"{e.message} (in method variant {label!r})", where=e.where) from None
    validate(run_cfg)
    return run_cfg


def run_folder_name(label: str) -> str:
    """A file-system-safe folder name for a method label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")


def parse_methods(text: str) -> list[str]:
    """``'fedit,ditto,fedoa[fedoa.feature=answer]'`` -> labels, checked against the registry."""
    from fedoa.algorithms import ALGORITHMS

    labels = list(dict.fromkeys(m.strip() for m in re.split(r",(?![^\[]*\])", text) if m.strip()))
    if not labels:
        raise ConfigError("no method named", where="--methods")
    unknown = [m for m in labels if split_method(m)[0] not in ALGORITHMS]
    if unknown:
        raise ConfigError(
            f"unknown method(s) {', '.join(unknown)}; known: {', '.join(sorted(ALGORITHMS))}",
            where="--methods",
        )
    return labels


def parse_seeds(text: str, base: int = 0) -> list[int]:
    """``'3'`` -> base, base+1, base+2; ``'0,4,7'`` -> those seeds."""
    try:
        if "," in text:
            seeds = list(dict.fromkeys(int(s) for s in text.split(",") if s.strip()))
        else:
            n = int(text)
            if n < 1:
                raise ValueError
            seeds = list(range(base, base + n))
    except ValueError:
        raise ConfigError(f"expected a count >= 1 or a list like 0,1,2, got {text!r}", where="--seeds") from None
    if not seeds or any(s < 0 for s in seeds):
        raise ConfigError(f"seeds must be >= 0, got {text!r}", where="--seeds")
    return seeds


def holdouts_of(cfg: RunConfig) -> list[str]:
    """``[""]`` unless leave-category-out; then the configured holdout, or every category."""
    if cfg.protocol.name != "leave-category-out":
        return [""]
    if cfg.protocol.holdout:
        return [cfg.protocol.holdout]
    from fedoa.evaluation.protocols import holdout_categories

    return holdout_categories(cfg)


def plan_runs(cfg: RunConfig, methods: list[str], seeds: list[int], holdouts: list[str], out_dir: Path) -> list[RunSpec]:
    """Seed-major order: after each seed every method has the same number of finished runs."""
    specs = []
    for seed in seeds:
        for holdout in holdouts:
            for method in methods:
                run_cfg = variant_config(cfg, method)
                run_cfg.seed = seed
                if holdout:
                    run_cfg.protocol.holdout = holdout
                out = out_dir / "runs" / run_folder_name(method) / f"seed{seed}"
                if holdout:
                    out = out / f"holdout-{holdout}"
                specs.append(RunSpec(method, seed, holdout, run_cfg, out))
    return specs


def _config_json(cfg: RunConfig) -> Any:
    return json.loads(json.dumps(cfg.to_dict()))


def read_results(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def finished(spec: RunSpec) -> dict[str, Any] | None:
    """The run's results when its ``results.json`` exists and was made with the same config."""
    results = read_results(spec.out / "results.json")
    if results is not None and results.get("config") == _config_json(spec.cfg):
        return results
    return None


class SharedModel:
    """One loaded base model + LoRA slots serving every run of a comparison."""

    def __init__(self, cfg: RunConfig):
        from fedoa.runtime.session import build_model

        self.am, self.encoder = build_model(cfg)
        self.base_cache: dict = {}
        self.model_key = (_config_json(cfg)["model"], _config_json(cfg)["lora"], cfg.data.template)

    def reset(self) -> None:
        """Fresh, zero-effect adapters in every slot, nothing trainable, eval mode."""
        from fedoa.seeding import derive_seed

        am = self.am
        for slot in am.slots:
            am.set(slot, am.fresh_state(derive_seed("compare-reset", slot)))
        am.freeze()
        am.use(am.slots[0])
        am.peft.eval()

    def session(self, cfg: RunConfig, clients, plan):
        from fedoa.data.records import ClientData
        from fedoa.runtime.session import open_session

        key = (_config_json(cfg)["model"], _config_json(cfg)["lora"], cfg.data.template)
        if key != self.model_key:
            raise ValueError("runs of one comparison must share model, lora and template")
        self.reset()
        clients = [ClientData(c.name, list(c.train), list(c.test)) for c in clients]
        session = open_session(cfg, clients, plan, model=(self.am, self.encoder))
        session.base_cache = self.base_cache
        return session


def run_compare(
    cfg: RunConfig, methods: list[str], seeds: list[int], out_dir: str | Path, progress: bool = True
) -> dict[str, Any]:
    """Run (or reuse) every run, then write compare.md / compare.json / compare.png."""
    from tqdm.auto import tqdm

    from fedoa.algorithms.registry import make_algorithm
    from fedoa.evaluation.protocols import load_protocol
    from fedoa.runtime.simulation import run_simulation

    start = time.perf_counter()
    out_dir = Path(out_dir)
    holdouts = holdouts_of(cfg)
    specs = plan_runs(cfg, methods, seeds, holdouts, out_dir)
    for spec in specs:
        make_algorithm(spec.cfg)  # a method that rejects the config fails before anything runs
    data = {h: load_protocol(cfg, holdout=h or None) for h in holdouts}  # bad data fails here too

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.toml").write_text(config_to_toml(cfg), encoding="utf-8")
    shared: SharedModel | None = None
    status: dict[str, dict[str, Any]] = {}

    def table(final: bool) -> dict[str, Any]:
        runs = [(spec, finished(spec)) for spec in specs]
        summary = aggregate([(s.method, s.seed, s.holdout, r) for s, r in runs if r is not None], methods, seeds)
        summary["runs"] = []
        for spec, results in runs:
            entry = {"method": spec.method, "seed": spec.seed, "holdout": spec.holdout or None,
                     "path": spec.out.relative_to(out_dir).as_posix(), "status": "pending"}
            entry.update(status.get(spec.key, {}))
            if results is None and (final or spec.key in status):
                entry.setdefault("error", "no results.json")
                entry["status"] = "failed"
            entry["wall_seconds"] = (results or {}).get("timing", {}).get("wall_seconds")
            summary["runs"].append(entry)
        summary["config"] = _config_json(cfg)  # the shared config (method and seed vary per run)
        summary["holdouts"] = [h for h in holdouts if h]
        summary["wall_seconds"] = time.perf_counter() - start
        summary["complete"] = final
        write_outputs(summary, out_dir, plot=final)
        return summary

    bar = tqdm(total=len(specs), desc="runs", unit="run", disable=not progress, dynamic_ncols=True, position=0)
    with bar:
        for spec in specs:
            if finished(spec) is not None:
                status[spec.key] = {"status": "reused"}
                bar.update(1)
                continue
            bar.set_postfix_str(spec.key)
            if shared is None:
                shared = SharedModel(cfg)
            clients, plan = data[spec.holdout]
            t0 = time.perf_counter()
            try:
                session = shared.session(spec.cfg, clients, plan)
                results = run_simulation(spec.cfg, spec.out, progress=progress, session=session)
            except (FedoaError, KeyboardInterrupt):
                raise
            except Exception as e:  # one broken run must not lose the others' hours
                spec.out.mkdir(parents=True, exist_ok=True)
                (spec.out / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
                status[spec.key] = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
                if progress:
                    tqdm.write(f"{spec.key}: FAILED ({type(e).__name__}: {e}); see {spec.out / 'error.txt'}")
            else:
                status[spec.key] = {"status": "ran", "seconds": round(time.perf_counter() - t0, 1)}
                if progress:
                    tqdm.write(f"{spec.key}: {_one_line(results)} ({status[spec.key]['seconds']:.0f} s)")
            bar.update(1)
            table(final=False)  # the table so far, so a long comparison can be read while it runs
    return table(final=True)


def _one_line(results: dict[str, Any]) -> str:
    parts = []
    for kind, s in results["summary"].items():
        parts.append(f"{kind} ID {_pct(s.get('id_accuracy'))} OOD {_pct(s.get('ood_accuracy'))}")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- aggregation


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else None


def groups_of(results: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """group -> client -> test sets: ``id``, ``ood`` (headline) and ``ood_<g>`` for each extra
    group that differs from the headline one."""
    out = {
        "id": {c: [s] for c, s in results["id_set"].items()},
        "ood": {c: list(v) for c, v in results["ood_sets"].items()},
    }
    for g, sets in (results.get("ood_groups") or {}).items():
        if sets != results["ood_sets"]:
            out[f"ood_{g}"] = sets
    return out


def run_categories(results: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """kind -> group -> category -> mean accuracy over the group's (client, test set) pairs
    whose test set is of that category. Categories without pairs are absent."""
    cats = results.get("set_categories") or {s: s for s in results["test_sets"]}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for kind, matrix in results["matrices"].items():
        out[kind] = {}
        for group, sets in groups_of(results).items():
            pairs: dict[str, list[float]] = {}
            for client, names in sets.items():
                for s in names:
                    pairs.setdefault(cats[s], []).append(matrix[client].get(s))
            values = {c: _mean(v) for c, v in pairs.items()}
            out[kind][group] = {c: v for c, v in values.items() if v is not None}
    return out


def _stats(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) >= 2 else None,
        "n": len(values),
        "values": values,
    }


def aggregate(
    runs: list[tuple[str, int, str, dict[str, Any]]], methods: list[str], seeds: list[int]
) -> dict[str, Any]:
    """The comparison table from finished runs ``(method, seed, holdout, results)``.

    Per method, kind, group and seed: per category, the mean over the seed's runs (rotations)
    that have that category; the seed's average is the mean of its categories. Then mean and
    sample standard deviation over seeds. The zero-shot model is the same in every run; its row
    pools all runs.
    """
    per_seed: dict[tuple[str, str], dict[int, list[dict]]] = {}
    first = None
    for method, seed, holdout, results in runs:
        first = first or results
        cats = run_categories(results)
        for kind, groups in cats.items():
            owner = "zero_shot" if kind == "zero_shot" else method
            per_seed.setdefault((owner, kind), {}).setdefault(seed, []).append(groups)
    categories: list[str] = sorted(
        {c for by_seed in per_seed.values() for rs in by_seed.values() for g in rs for v in g.values() for c in v}
    )
    group_names: list[str] = []
    for _, _, _, results in runs:
        group_names += [g for g in groups_of(results) if g not in group_names]
    order = ["ood"] + [g for g in group_names if g.startswith("ood_")] + ["id"]
    group_names = [g for g in order if g in group_names]

    def cell_stats(by_seed: dict[int, list[dict]], group: str) -> dict[str, dict[str, Any]]:
        seed_values: dict[str, list[float]] = {c: [] for c in categories + [AVERAGE]}
        for seed in sorted(by_seed):
            rots = by_seed[seed]
            cat_vals = {}
            for c in categories:
                v = _mean([r.get(group, {}).get(c) for r in rots])
                if v is not None:
                    cat_vals[c] = v
                    seed_values[c].append(v)
            if cat_vals:
                seed_values[AVERAGE].append(statistics.fmean(cat_vals.values()))
        return {c: _stats(v) for c, v in seed_values.items()}

    table: dict[str, dict[str, dict[str, Any]]] = {}
    for group in group_names:
        table[group] = {}
        for method in methods:
            table[group][method] = {}
            for kind in KINDS:
                by_seed = per_seed.get((method, kind))
                table[group][method][kind] = cell_stats(by_seed, group) if by_seed else None
        zs = per_seed.get(("zero_shot", "zero_shot"))
        table[group]["zero_shot"] = {"zero_shot": cell_stats(zs, group) if zs else None}

    from fedoa.evaluation.protocols import DESCRIPTIONS

    protocol = {}
    if first:
        name = first["protocol"]["name"]
        protocol = {"name": name, "description": DESCRIPTIONS.get(name, first["protocol"]["description"])}
    return {
        "protocol": protocol,
        "metric": first["metric"] if first else {},
        "methods": methods,
        "seeds": seeds,
        "categories": categories,
        "groups": group_names,
        "group_labels": {g: group_label(g, protocol.get("name", "")) for g in group_names},
        "table": table,
        "config": first["config"] if first else None,
    }


def group_label(group: str, protocol: str) -> str:
    if group == "id":
        return "ID: the client's own test data"
    if group == "ood":
        return f"OOD (headline): {OOD_LABELS.get(protocol, 'out-of-distribution test data')}"
    name = group[4:]
    return f"OOD, {GROUP_LABELS.get(name, name)}"


# ----------------------------------------------------------------------------- outputs


def _pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def cell(st: dict[str, Any] | None) -> str:
    if not st or st["mean"] is None:
        return "—"
    if st["std"] is None:
        return _pct(st["mean"])
    return f"{_pct(st['mean'])} ± {100 * st['std']:.1f}"


def table_rows(summary: dict[str, Any], group: str) -> list[list[str]]:
    cols = summary["categories"] + [AVERAGE]
    rows = []
    for method in summary["methods"]:
        for kind in KINDS:
            stats = summary["table"][group][method][kind]
            rows.append([method, KIND_LABELS[kind]] + [cell(stats[c] if stats else None) for c in cols])
    zs = summary["table"][group].get("zero_shot", {}).get("zero_shot")
    if zs:
        rows.append(["zero-shot", KIND_LABELS["zero_shot"]] + [cell(zs[c]) for c in cols])
    return rows


def render_compare(summary: dict[str, Any]) -> str:
    from fedoa.reports.markdown import md_table

    cfg = summary.get("config") or {}
    protocol, metric = summary["protocol"], summary["metric"]
    seeds = summary["seeds"]
    lines = [
        f"# fedoa compare: {', '.join(summary['methods'])}",
        "",
        f"- protocol: **{protocol.get('name', '?')}**: {protocol.get('description', '')}",
    ]
    if summary.get("complete") is False:
        lines.append("- **incomplete**: runs are still pending (see Runs below)")
    if summary.get("holdouts"):
        lines.append(f"- held-out categories (one run each per method and seed): {', '.join(summary['holdouts'])}")
    lines += [
        f"- metric: **{metric.get('headline', '?')}** ({metric.get('description', '')}); accuracy in %, "
        f"mean ± sample standard deviation over {len(seeds)} seed(s) ({', '.join(map(str, seeds))})",
        "- per category: mean over the (client model, test set) pairs whose test set belongs to the category; "
        "average: mean over the categories. '—': the method has no such model (or no run finished).",
    ]
    if all(k in cfg for k in ("model", "lora", "data", "fed", "train")):
        lines.append(
            f"- model `{cfg['model']['name']}` (max_length {cfg['model']['max_length']}), LoRA r={cfg['lora']['r']}; "
            f"data `{cfg['data']['path'] or cfg['data']['source']}` (train/test per client "
            f"{cfg['data']['train_per_client'] or 'all'}/{cfg['data']['test_per_client'] or 'all'}); "
            f"{cfg['fed']['rounds']} rounds, client fraction {cfg['fed']['client_fraction']}, "
            f"{cfg['train']['epochs']} epoch(s), max_steps {cfg['train']['max_steps']}, batch {cfg['train']['batch_size']}, "
            f"lr {cfg['train']['lr']}"
        )
    lines.append("")
    head = ["method", "model"] + summary["categories"] + [AVERAGE]
    for group in summary["groups"]:
        lines += [f"## {summary['group_labels'][group]}", "", md_table(head, table_rows(summary, group)), ""]
    runs = summary.get("runs") or []
    if runs:
        lines += ["## Runs", ""]
        rows = [
            [r["path"], r.get("status", ""), "" if r.get("wall_seconds") is None else f"{r['wall_seconds']:.0f}"]
            for r in runs
        ]
        lines += [md_table(["run", "status", "wall s"], rows), ""]
        failed = [r for r in runs if r.get("status") == "failed"]
        if failed:
            lines += ["Failed or missing runs are left out of the table: "
                      + ", ".join(f"{r['path']} ({r.get('error', r['status'])})" for r in failed), ""]
    return "\n".join(lines)


def plot_compare(summary: dict[str, Any], path: Path) -> Path:
    from fedoa.reports.plots import plt, save_figure  # plots selects the file-only Agg backend

    groups = summary["groups"]
    cols = summary["categories"] + [AVERAGE]
    cmap = plt.get_cmap("tab10")
    series = []  # (label, getter, color, hatch): one color per method, global models hatched
    for i, method in enumerate(summary["methods"]):
        for kind in KINDS:
            if any(summary["table"][g][method][kind] for g in groups):
                series.append((f"{method} ({kind})", lambda g, m=method, k=kind: summary["table"][g][m][k],
                               cmap(i % 10), "//" if kind == "global" else ""))
    if any(summary["table"][g].get("zero_shot", {}).get("zero_shot") for g in groups):
        series.append(("zero-shot", lambda g: summary["table"][g]["zero_shot"]["zero_shot"], "0.6", ""))
    fig, axes = plt.subplots(
        len(groups), 1, figsize=(max(8.0, 0.22 * len(cols) * len(series) + 2), 3.2 * len(groups)), squeeze=False
    )
    width = 0.8 / max(1, len(series))
    for ax, group in zip(axes[:, 0], groups):
        for i, (label, get, color, hatch) in enumerate(series):
            stats = get(group)
            means = [100 * (stats[c]["mean"] if stats and stats[c]["mean"] is not None else math.nan) for c in cols]
            errs = [100 * (stats[c]["std"] if stats and stats[c]["std"] is not None else 0.0) for c in cols]
            ax.bar([x + i * width for x in range(len(cols))], means, width, yerr=errs, label=label,
                   color=color, hatch=hatch, edgecolor="white", linewidth=0.3, capsize=2)
        ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(cols))], cols, fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("accuracy %")
        ax.set_title(summary["group_labels"][group], fontsize=9)
    axes[0, 0].legend(fontsize=7, ncol=min(4, max(1, len(series))), loc="upper right")
    fig.suptitle(f"{summary['protocol'].get('name', '')} protocol, metric {summary['metric'].get('headline', '')}, "
                 f"mean ± std over {len(summary['seeds'])} seed(s)", fontsize=10)
    return save_figure(fig, path)


def write_outputs(summary: dict[str, Any], out_dir: Path, plot: bool = True) -> None:
    from fedoa.reports.results import write_json

    write_json(out_dir / "compare.json", summary)
    md = out_dir / "compare.md"
    tmp = md.with_name(f".{md.name}.tmp")
    tmp.write_text(render_compare(summary), encoding="utf-8")
    tmp.replace(md)
    if plot and summary["groups"]:
        plot_compare(summary, out_dir / "compare.png")


def print_compare(summary: dict[str, Any]) -> None:
    """The headline table (OOD first, then ID averages) on the terminal."""
    from rich.console import Console
    from rich.table import Table

    if not summary["groups"]:
        return
    group = summary["groups"][0]
    cols = summary["categories"] + [AVERAGE]
    table = Table(title=f"{summary['group_labels'][group]} — {summary['protocol'].get('name')} protocol, "
                        f"{summary['metric'].get('headline')} accuracy %, {len(summary['seeds'])} seed(s)")
    for h in ["method", "model"] + cols:
        table.add_column(h, justify="left" if h in ("method", "model") else "right")
    for row in table_rows(summary, group):
        table.add_row(*row)
    Console().print(table)
