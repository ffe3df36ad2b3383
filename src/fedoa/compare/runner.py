"""``fedoa compare``: several methods x seeds (x held-out categories) under one protocol, one table.

Every run uses the same config (protocol, data, model, train/fed/eval budget) except ``method``,
``seed`` and, for ``leave-category-out`` without a fixed ``protocol.holdout``, the held-out
category, which rotates over all categories. Unless the config names ``data.train_subset_seed``,
a comparison sets it to ``"run"`` (:func:`seeds_vary_training_data`): each seed trains on its own draw of
every client's training subset while the test sets stay fixed, so the spread over seeds includes
the training sample. A method may be a *variant* with its own settings
and name: ``shipped=fedoa[fedoa.feature=answer;fed.personal_init=global]``. Runs go to
``DIR/runs/<label>/seed<k>[/holdout-<c>]`` with their own ``results.json``; a run whose
``results.json`` exists with the same config is not redone (also after keys were added to the
config at their defaults), an interrupted one resumes from its checkpoint.

Work done once for the whole comparison:
- the base model is loaded once; every run gets a session over the same :class:`AdapterModel`
  (its LoRA slots reset between runs);
- a model met again is scored once per test set (the zero-shot model, a global adapter that two
  methods share): ``Evaluator.cache``;
- a plain task-loss local step met again (FedIT's update and the global step of every
  two-adapter method are the same computation on the same inputs) runs once: the step memo in
  ``DIR/.memo`` (:class:`fedoa.runtime.memo.DiskMemo`), which also survives restarts.

The table and the paired differences are computed by :mod:`fedoa.compare.stats` and rendered by
:mod:`fedoa.compare.render`.
"""
from __future__ import annotations

import json
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedoa.config import RunConfig, changed_keys, config_to_toml
from fedoa.errors import ConfigError, FedoaError
from fedoa.io import write_text
from fedoa.compare.render import write_outputs
from fedoa.compare.stats import aggregate, paired_table, rouge_summary
from fedoa.reports.results import Results
from fedoa.reports.markdown import pct

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


_ALIAS = re.compile(r"^([A-Za-z0-9_.+-]+)=(.+)$")


def split_method(label: str) -> tuple[str, list[str]]:
    """``'fedoa[fedoa.feature=answer;fedoa.regular_weight=1]'`` -> name and ``--set`` overrides;
    ``'shipped=fedoa[...]'`` names the variant ``shipped`` (its row label and folder).

    A bracketed variant runs the same method with other settings, as its own row of the table.
    """
    alias = _ALIAS.match(label)
    if alias and "[" not in alias.group(1):
        label = alias.group(2)
    if "[" not in label:
        return label.strip(), []
    if not label.endswith("]"):
        raise ConfigError(f"a method variant looks like name[key=value;...], got {label!r}", where="--methods")
    name, rest = label[:-1].split("[", 1)
    return name.strip(), [o.strip() for o in rest.split(";") if o.strip()]


def display_label(label: str) -> str:
    """The row label of a method: its alias when it has one."""
    alias = _ALIAS.match(label)
    return alias.group(1) if alias and "[" not in alias.group(1) else label


def variant_config(cfg: RunConfig, label: str) -> RunConfig:
    """``cfg`` with the method (and the variant's overrides) of ``label``, validated."""
    from fedoa.config import build, merge, parse_override

    name, overrides = split_method(label)
    values = {**cfg.to_dict(), "method": name}
    for text in overrides:
        values = merge(values, parse_override(text))
    try:
        return build(values)
    except ConfigError as e:
        raise ConfigError(f"{e.message} (in method variant {label!r})", where=e.where) from None


def run_folder_name(label: str) -> str:
    """A file-system-safe folder name for a method label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")


def parse_methods(text: str) -> list[str]:
    """``'fedit,ditto,fedoa[fedoa.feature=answer]'`` -> labels, checked against the registry."""
    from fedoa.algorithms import ALGORITHMS

    labels = list(dict.fromkeys(m.strip() for m in re.split(r",(?![^\[]*\])", text) if m.strip()))
    if not labels:
        raise ConfigError("no method named", where="--methods")
    names = [display_label(m) for m in labels]
    if len(set(names)) != len(names):
        raise ConfigError(f"two methods have the same label: {names}", where="--methods")
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
    from fedoa.data.scenario import holdout_categories

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
                label = display_label(method)
                out = out_dir / "runs" / run_folder_name(label) / f"seed{seed}"
                if holdout:
                    out = out / f"holdout-{holdout}"
                specs.append(RunSpec(label, seed, holdout, run_cfg, out))
    return specs


def model_key(cfg: RunConfig) -> tuple:
    """What the shared resident model depends on: the base model, the LoRA slots' shape and the
    template (``lora.client_ranks`` is not: unequal ranks live inside the same rank-``lora.r`` slots)."""
    lora = {k: v for k, v in _config_json(cfg)["lora"].items() if k != "client_ranks"}
    return _config_json(cfg)["model"], lora, cfg.data.template


def _config_json(cfg: RunConfig) -> Any:
    return json.loads(json.dumps(cfg.to_dict()))


def read_results(path: Path) -> Results | None:
    try:
        return Results.load(path)
    except (OSError, ValueError):  # missing, unreadable or not a results file: the run is redone
        return None


def finished(spec: RunSpec) -> Results | None:
    """The run's results when its ``results.json`` exists and was made with the same config."""
    results = read_results(spec.out / "results.json")
    if results is not None and not changed_keys(results.config, _config_json(spec.cfg), _config_json(RunConfig())):
        return results
    return None


class SharedModel:
    """One loaded base model + LoRA slots serving every run of a comparison."""

    def __init__(self, cfg: RunConfig, memo_dir: Path):
        from fedoa.runtime.memo import DiskMemo
        from fedoa.runtime.session import build_model

        self.am, self.encoder = build_model(cfg)
        self.score_cache: dict = {}
        self.memo = DiskMemo(memo_dir)
        self.model_key = model_key(cfg)

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

        if model_key(cfg) != self.model_key:
            raise ValueError("runs of one comparison must share model, lora and template")
        self.reset()
        clients = [ClientData(c.name, list(c.train), list(c.test)) for c in clients]
        session = open_session(cfg, clients, plan, model=(self.am, self.encoder))
        session.score_cache = self.score_cache
        session.memo = self.memo
        return session


def seeds_vary_training_data(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``data.train_subset_seed = "run"`` unless the config (file or ``--set``) named the key:
    a comparison's seeds then vary what a repeat of the study would vary, the training sample too.
    Configs of committed comparisons name ``"split"`` so their finished runs stay valid."""
    if "train_subset_seed" in cfg.data.model_fields_set:
        return cfg
    values = cfg.to_dict()
    values["data"]["train_subset_seed"] = "run"
    from fedoa.config import build

    return build(values)


def focus_labels(methods: list[str], focus: str) -> list[str]:
    """Row labels of the methods whose personal models the paired differences are about."""
    return [display_label(m) for m in methods if split_method(m)[0] == focus]


class Comparison:
    """One ``fedoa compare`` folder: its planned runs, what became of each, and the table over them."""

    def __init__(self, cfg: RunConfig, methods: list[str], seeds: list[int], out_dir: Path, focus: str,
                 report_only: bool):
        from fedoa.algorithms import make_algorithm
        from fedoa.evaluation.protocols import load_protocol

        self.start = time.perf_counter()
        self.cfg, self.methods, self.seeds, self.out_dir = cfg, methods, seeds, out_dir
        self.focus, self.report_only = focus, report_only
        self.labels = [display_label(m) for m in methods]
        self.holdouts = holdouts_of(cfg)
        self.specs = plan_runs(cfg, methods, seeds, self.holdouts, out_dir)
        for spec in self.specs:
            make_algorithm(spec.cfg)  # a method that rejects the config fails before anything runs
        self.data = {(h, cfg.seed): load_protocol(cfg, holdout=h or None) for h in self.holdouts}  # bad data too
        self.status: dict[str, dict[str, Any]] = {}  # run key -> what this command did with it
        self.shared: SharedModel | None = None
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "config.toml", config_to_toml(cfg))

    def data_of(self, spec: RunSpec):
        """The run's clients and plan: one draw per held-out category, and per seed where the seed draws
        the training subsets (``data.train_subset_seed = "run"``)."""
        from fedoa.evaluation.protocols import load_protocol

        seed = spec.seed if self.cfg.data.train_subset_seed == "run" else self.cfg.seed
        if (spec.holdout, seed) not in self.data:
            self.data[(spec.holdout, seed)] = load_protocol(spec.cfg, holdout=spec.holdout or None)
        return self.data[(spec.holdout, seed)]

    def run(self, spec: RunSpec, progress: bool) -> Results | None:
        """Train and score one run; a run that fails is recorded (``error.txt``) and the others go on."""
        from tqdm.auto import tqdm

        from fedoa.runtime.inprocess import run_simulation

        if self.shared is None:
            self.shared = SharedModel(self.cfg, self.out_dir / ".memo")
        clients, plan = self.data_of(spec)
        t0 = time.perf_counter()
        try:
            session = self.shared.session(spec.cfg, clients, plan)
            results = run_simulation(spec.cfg, spec.out, progress=progress, session=session,
                                     restart_on_change=True, replace=True)  # the comparison's own folders
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one broken run must not lose the others' hours (bad input still stops all)
            if isinstance(e, FedoaError) and e.exit_code == 2:
                raise
            write_text(spec.out / "error.txt", traceback.format_exc())
            self.status[spec.key] = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
            if progress:
                tqdm.write(f"{spec.key}: FAILED ({type(e).__name__}: {e}); see {spec.out / 'error.txt'}")
            return None
        self.status[spec.key] = {"status": "ran", "seconds": round(time.perf_counter() - t0, 1)}
        if progress:
            tqdm.write(f"{spec.key}: {_one_line(results)} ({self.status[spec.key]['seconds']:.0f} s)")
        return results

    def run_entry(self, spec: RunSpec, results: Results | None, final: bool) -> dict[str, Any]:
        """One row of the table's run list: where the run is, and what became of it."""
        entry = {"method": spec.method, "seed": spec.seed, "holdout": spec.holdout or None,
                 "path": spec.out.relative_to(self.out_dir).as_posix(),
                 "status": "finished" if results is not None else "pending"}
        entry.update(self.status.get(spec.key, {}))
        if results is None and self.report_only:
            entry["status"] = "not run"
        elif results is None and entry["status"] == "not started":
            pass
        elif results is None and (final or spec.key in self.status):
            entry.setdefault("error", "no results.json")
            entry["status"] = "failed"
        entry["wall_seconds"] = results.timing.get("wall_seconds") if results else None
        # what one client sent per round, as it travelled (fed.upload, lora.client_ranks)
        entry["bytes_up_per_client_round"] = results.communication.get("bytes_up_per_client_round") if results \
            else None
        return entry

    def table(self, final: bool) -> dict[str, Any]:
        """The table over every finished run, written to compare.md / .json (/ .png when ``final``)."""
        runs = [(spec, finished(spec)) for spec in self.specs]
        done = [(s.method, s.seed, s.holdout, r) for s, r in runs if r is not None]
        summary = aggregate(done, self.labels, self.seeds)
        summary["rouge"] = rouge_summary(done, self.labels, self.seeds)  # eval.rouge: the reference's metric
        summary["focus"] = focus_labels(self.methods, self.focus)
        if final:  # the bootstrap takes a while: once at the end (or with --report-only)
            summary["paired"] = paired_table(done, summary["focus"], summary["group_categories"],
                                             summary["uninformative"])
        summary["runs"] = [self.run_entry(spec, results, final) for spec, results in runs]
        summary["config"] = _config_json(self.cfg)  # the shared config (method and seed vary per run)
        summary["holdouts"] = [h for h in self.holdouts if h]
        summary["wall_seconds"] = time.perf_counter() - self.start
        summary["complete"] = all(r is not None for _, r in runs)
        write_outputs(summary, self.out_dir, plot=final)
        return summary


def run_compare(
    cfg: RunConfig, methods: list[str], seeds: list[int], out_dir: str | Path, progress: bool = True,
    focus: str = "fedoa", report_only: bool = False, budget: float = 0.0,
) -> dict[str, Any]:
    """Run (or reuse) every run, then write compare.md / compare.json / compare.png.

    ``report_only``: run nothing, only tabulate the runs that have finished. ``budget`` (seconds,
    0: none): start no run once the time left is shorter than the longest run seen so far (this
    command's, or a reused run's recorded wall time); those runs are "not started" and a later
    call with the same folder does them.
    """
    from tqdm.auto import tqdm

    comparison = Comparison(cfg, methods, seeds, Path(out_dir), focus, report_only)
    if report_only:
        return comparison.table(final=True)

    longest = 0.0  # the longest run so far: what the next one is expected to take at most
    bar = tqdm(total=len(comparison.specs), desc="runs", unit="run", disable=not progress, dynamic_ncols=True,
               position=0)
    with bar:
        for spec in comparison.specs:
            results = finished(spec)
            left = budget - (time.perf_counter() - comparison.start)
            if results is not None:
                comparison.status[spec.key] = {"status": "reused"}
            elif budget and (left <= 0 or left < longest):
                comparison.status[spec.key] = {"status": "not started", "error": f"time budget: {max(left, 0):.0f} "
                                               f"s left, the longest run took {longest:.0f} s"}
            else:
                bar.set_postfix_str(spec.key)
                results = comparison.run(spec, progress)
                comparison.table(final=False)  # the table so far, so a long comparison can be read while it runs
            if results is not None:
                longest = max(longest, results.timing.get("wall_seconds") or 0.0)
            bar.update(1)
    return comparison.table(final=True)


def _one_line(results: Results) -> str:
    parts = []
    for kind, s in results.summary.items():
        parts.append(f"{kind} ID {pct(s.get('id_accuracy'))} OOD {pct(s.get('ood_accuracy'))}")
    return "; ".join(parts)


