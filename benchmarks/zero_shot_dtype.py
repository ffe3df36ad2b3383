"""Zero-shot accuracy of the base model in float32 and in bfloat16 on the same test records: does the
bf16 base the Flan-8 evidence comparison trains on (benchmarks/flan8_evidence.toml) score as the
fp32 one does? Prints one line per dtype and the per-record agreement; writes JSON to --out.

    .venv/bin/python benchmarks/zero_shot_dtype.py --out benchmarks/evidence/zero_shot_dtype.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fedoa.config import load_config  # noqa: E402
from fedoa.evaluation.matrix import evaluate_models  # noqa: E402
from fedoa.runtime.session import open_session  # noqa: E402


def zero_shot(config: Path, dtype: str) -> dict:
    cfg = load_config(config, [f"model.dtype='{dtype}'"])
    session = open_session(cfg)
    evaluator, plan = session.evaluator(), session.plan
    session.am.use(None)  # the base model alone
    start = time.perf_counter()
    scores = evaluate_models(evaluator, plan, ["zero_shot"], lambda k, c: "base", lambda k, c: "base")
    per_set = {s: sc for per_client in scores["zero_shot"].values() for s, sc in per_client.items()}
    hits = "".join(per_set[s].options_hits for s in sorted(per_set))
    return {"dtype": dtype, "seconds": time.perf_counter() - start, "records": len(hits),
            "accuracy": hits.count("1") / len(hits), "per_set": {s: per_set[s].options for s in sorted(per_set)},
            "hits": hits}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "benchmarks" / "flan8_evidence.toml")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = [zero_shot(args.config, d) for d in ("float32", "bfloat16")]
    agree = sum(a == b for a, b in zip(rows[0]["hits"], rows[1]["hits"])) / rows[0]["records"]
    for r in rows:
        print(f"{r['dtype']:9} zero-shot accuracy {100 * r['accuracy']:.1f}% on {r['records']} records, "
              f"{r['seconds']:.0f} s")
    print(f"same outcome on {100 * agree:.1f}% of the records; bf16 / fp32 time "
          f"{rows[1]['seconds'] / rows[0]['seconds']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "agreement": agree}, indent=1) + "\n")


if __name__ == "__main__":
    main()
