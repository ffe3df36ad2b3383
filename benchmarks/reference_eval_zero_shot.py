"""Departures of the evaluation (docs/method.md), measured on the zero-shot embedded SmolLM2 (no training):
test prompts cut by template and cutoff (100 per task), and option accuracy beside the reference's
ROUGE-1 (4 beams, 80 new tokens) per task, with the reference's template and cutoff (alpaca/512) and
the benchmarks' (plain/128).

Run from the repository root (about 50 minutes on a shared 2-core CPU, one torch thread):
    PYTHONPATH=src python benchmarks/reference_eval_zero_shot.py 10 alpaca/512 plain/128
It writes benchmarks/reference_eval_zero_shot.json (committed: run 2026-12-05 at commit c51a9f4
with the output path set to /tmp and the Flan-8 folder given by its absolute path, code otherwise as
here)."""
import json, sys, time, torch
torch.set_num_threads(1)
from fedoa.config import load_config
from fedoa.runtime.session import open_session
from fedoa.data.prompts import PromptEncoder
from fedoa.evaluation.protocols import load_protocol

out = {}
cfg = load_config("benchmarks/flan8_reference_eval.toml", ["data.test_per_client=100", "data.path=../shared/data/flan8"])
clients, plan = load_protocol(cfg)
from fedoa.model.base import load_base
base, tok = load_base(cfg.model)
trunc = {}
for template in ("plain", "alpaca"):
    for L in (128, 256, 512):
        enc = PromptEncoder(tok, template, L)
        cut = {}
        for c in clients:
            n0 = enc.truncated
            for r in c.test:
                enc.encode_prompt(r, reserve=max(len(enc.answer_ids(o)) for o in r.options) if r.options else 0)
            cut[c.name] = round((enc.truncated - n0) / len(c.test), 3)
        trunc[f"{template}/{L}"] = cut
out["test_prompts_cut"] = trunc
print(json.dumps(trunc), flush=True)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
for template, L in [tuple(x.split("/")) for x in sys.argv[2:]]:
    L = int(L)
    c2 = load_config("benchmarks/flan8_reference_eval.toml", ["data.path=../shared/data/flan8", f"data.test_per_client={n}",
                     f"data.template={template}", f"model.max_length={L}", "model.dtype=float32"])
    s = open_session(c2)
    ev = s.evaluator()
    s.am.use(None)
    t = time.time()
    res = {}
    for name in ev.prepared:
        sc = ev.score(name)
        res[name] = {"options": sc.options, "rouge1": sum(sc.rouge["rouge1"]) / len(sc.rouge["rouge1"]),
                     "generation_exact": None}
    out[f"zero_shot/{template}/{L}"] = {"records_per_set": n, "seconds": round(time.time() - t), "sets": res}
    print(template, L, json.dumps(res), round(time.time() - t), flush=True)
json.dump(out, open("benchmarks/reference_eval_zero_shot.json", "w"), indent=1)
