"""Lighter uploads and unequal clients on the default data (`make run`'s: four VADER domains).

Two comparisons, one `fedoa compare` (resumable: a finished run is not redone, an interrupted one
resumes from its checkpoint; the plain local steps they share are memoized):

- uploads: `fed.upload` float32 / bfloat16 / int8: global-model accuracy (ID, OOD) with 95% paired
  bootstrap intervals against float32, and the bytes one client sends per round;
- ranks: every client at rank 8 (the default), every client at rank 16, and a 4/8/16/16 mix
  (`lora.r = 16`, `lora.client_ranks`): accuracy against equal rank 8 and 16, bytes up and down.
  The rank-16 runs take `lora.alpha = 32`, so every run has the default's LoRA scaling (alpha/r = 2).

Method FedIT (one global adapter, FedAvg; uploads and ranks act on exactly that adapter), one
seed, the embedded default config (its data: 64 training and 50 test records per client) with a
small training budget so that it finishes on a contended 2-core machine: 2 rounds of 2 local
steps (`SETTINGS`), the full evaluation after the last round only, no base-model row. Tables: benchmarks/evidence/uploads/ and benchmarks/evidence/ranks/ (Markdown + JSON).

    nohup nice -n 19 .venv/bin/python benchmarks/uploads_ranks.py > uploads_ranks.log 2>&1 &
    .venv/bin/python benchmarks/uploads_ranks.py --report-only    # tabulate what has finished
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RANKS = {"movie": 4, "tweets": 8, "amazon": 16, "nyt": 16}
RUNS = {
    "float32": "fedit",
    "int8": "fedit[fed.upload=int8]",
    "bfloat16": "fedit[fed.upload=bfloat16]",
    "rank16": "fedit",
    "mix-4-8-16": "fedit[" + ";".join(f"lora.client_ranks.{c}={r}" for c, r in RANKS.items()) + "]",
}
#: one comparison per LoRA shape (the runs of a comparison share one resident model): folder suffix,
#: its runs and its settings
COMPARES = {"": (["float32", "int8", "bfloat16"], []),
            "-r16": (["rank16", "mix-4-8-16"], ["lora.r=16", "lora.alpha=32"])}
UPLOADS = ("float32", "bfloat16", "int8")
RANK_ROWS = {"float32": "all rank 8", "rank16": "all rank 16", "mix-4-8-16": "4 / 8 / 16 / 16 (movie, tweets, amazon, nyt)"}
# sized for a 2-core machine shared with other jobs (load average 15-24 when this was run): two local
# steps per client and round, two rounds, no base-model row
SETTINGS = ["fed.rounds=2", "train.max_steps=2", "eval.every=0", "eval.zero_shot=false"]


def run_compare(out: Path, labels: list[str], settings: list[str]) -> None:
    fedoa = Path(sys.executable).parent / "fedoa"
    methods = ",".join(f"{label}={RUNS[label]}" for label in labels)
    cmd = [str(fedoa), "compare", "--methods", methods, "--seeds", "1", "--out", str(out), "--focus", "none", "--quiet",
           *[a for s in SETTINGS + settings for a in ("--set", s)]]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=False)


def finished(out: Path) -> dict:
    from fedoa.reports.results import Results

    found = {}
    for suffix, (labels, _) in COMPARES.items():
        for label in labels:
            p = Path(f"{out}{suffix}") / "runs" / label / "seed0" / "results.json"
            if p.is_file():
                found[label] = Results.load(p)
    return found


def paired(results: dict, a: str, b: str) -> dict:
    """Global model of ``a`` minus ``b``: mean difference and 95% paired bootstrap interval over the
    test records (accuracy points), per group (id, ood)."""
    from fedoa.compare.stats import AVERAGE, collect_outcomes, compare_rows

    rows = collect_outcomes([(label, 0, "", results[label]) for label in (a, b)])
    out = {}
    for group in ("id", "ood"):
        cats = sorted(rows[(a, "global")][0].get(group, {}))
        cell = compare_rows(rows[(a, "global")], rows[(b, "global")], group, cats).get(AVERAGE)
        if cell:
            out[group] = {k: cell[k] * 100 if k in ("difference", "low", "high") else cell[k]
                          for k in ("difference", "low", "high", "records", "verdict")}
    return out


def row_of(label: str, res, against: list[str], results: dict) -> dict:
    s, comm = res.summary["global"], res.communication
    return {"run": label, "method spec": RUNS[label], "upload_format": comm.get("upload_format"),
            "client_ranks": comm.get("client_ranks") or {},
            "global_id": 100 * s["id_accuracy"], "global_ood": 100 * s["ood_accuracy"],
            "bytes_up_per_client_round": comm["bytes_up_per_client_round"],
            "bytes_down_per_client_round": comm["bytes_down_total"] / max(1, sum(
                len(v) for v in comm["updates_per_round"].values())),
            "adapter_bytes": comm["adapter_bytes"], "wall_seconds": res.timing["wall_seconds"],
            "paired": {b: paired(results, label, b) for b in against if b != label and b in results}}


def interval(p: dict | None) -> str:
    return "—" if not p else f"{p['difference']:+.1f} [{p['low']:+.1f}, {p['high']:+.1f}]"


def write(folder: Path, title: str, rows: list[dict], header: str, meta: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# {title}", "", header, "", f"Command: `{meta['command']}`  ", f"Commit: {meta['commit']}; "
             f"wall time: {meta['wall_seconds']:.0f} s, the sum of the runs' own (column 'wall s'; the plain local "
             "steps the runs share were computed once and reused), on 2 CPU cores shared with other jobs "
             f"(load average 14-27 while it ran); settings: {meta['settings']}.", ""]
    against = sorted({b for r in rows for b in r["paired"]}, key=list(RUNS).index)
    head = ["run", "bytes up / client-round", "bytes down / client-round", "global ID %", "global OOD %", "wall s"]
    for b in against:
        head += [f"ID vs {b}", f"OOD vs {b}"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["run"], f"{r['bytes_up_per_client_round']:,.0f}", f"{r['bytes_down_per_client_round']:,.0f}",
                 f"{r['global_id']:.1f}", f"{r['global_ood']:.1f}", f"{r['wall_seconds']:.0f}"]
        for b in against:
            p = r["paired"].get(b, {})
            cells += [interval(p.get("id")), interval(p.get("ood"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Differences: accuracy points of the global model, row minus column run, with the 95% paired "
              "bootstrap interval over the test records both runs scored (fedoa.compare.stats)."]
    (folder / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "runs" / "uploads-ranks-small"), help="the comparisons' run folder "
                   "(the rank-16 runs in the same name + '-r16')")
    p.add_argument("--report-only", action="store_true", help="run nothing; tabulate the finished runs")
    args = p.parse_args()
    out = Path(args.out)
    if not args.report_only:
        for suffix, (labels, settings) in COMPARES.items():
            run_compare(Path(f"{out}{suffix}"), labels, settings)
    results = finished(out)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    meta = {"command": "nice -n 19 .venv/bin/python benchmarks/uploads_ranks.py", "commit": commit,
            "wall_seconds": sum(r.timing["wall_seconds"] for r in results.values()), "settings": "embedded default config (make run's data: 4 VADER domains, "
            "64 training and 50 test records per client, SmolLM2-135M-Instruct fp32), method fedit, "
            "seed 0, " + ", ".join(SETTINGS)}
    ups = [row_of(k, results[k], ["float32"], results) for k in UPLOADS if k in results]
    if ups:
        write(ROOT / "benchmarks" / "evidence" / "uploads", "Upload formats (fed.upload): accuracy against bytes",
              ups, "Global model (FedIT) after 2 rounds of 2 local steps; bytes as the uploads travelled.", meta)
    ranks = [row_of(k, results[k], ["float32", "rank16"], results) for k in RANK_ROWS if k in results]
    for r in ranks:
        r["run"] = f"{r['run']}: {RANK_ROWS[r['run']]}"
    if ranks:
        write(ROOT / "benchmarks" / "evidence" / "ranks", "Heterogeneous LoRA ranks: accuracy and bytes",
              ranks, "Global model (FedIT, rank 8 or 16) after 2 rounds of 2 local steps; 'float32' is the all-rank-8 run.", meta)
    missing = [k for k in RUNS if k not in results]
    print(f"finished {len(results)} of {len(RUNS)} runs" + (f"; missing {missing}" if missing else ""))
    return 0 if not missing else 1


if __name__ == "__main__":
    sys.exit(main())
