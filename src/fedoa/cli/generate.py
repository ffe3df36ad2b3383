"""``fedoa generate``: a client's model of a finished run answers a prompt (greedy decoding, the
run's prompt template)."""
from __future__ import annotations

import argparse

from fedoa.cli.common import add_quiet_arg, add_run_dir_arg

EXAMPLE = """example:
  fedoa generate runs/default --client movie --prompt $'Is this movie review positive or negative?\\nA dull, joyless film.'
  fedoa generate runs/default --client movie --kind global --prompt 'Name a colour.' --max-new-tokens 8
"""


def generate(args: argparse.Namespace) -> int:
    from fedoa.data.records import Record
    from fedoa.errors import FedoaError
    from fedoa.evaluation.scoring import generations, prepare_set
    from fedoa.finished import FinishedRun
    from fedoa.kinds import GLOBAL, PERSONAL, ZERO_SHOT

    run = FinishedRun.open(args.run_dir)
    kind = args.kind or (PERSONAL if PERSONAL in run.algorithm.evaluated else GLOBAL)
    run.check_kind(kind)
    if kind not in (GLOBAL, ZERO_SHOT) and not args.client:
        raise FedoaError(f"the {kind} model needs --client NAME", where="--client")
    if args.client:
        run.check_client(args.client)
    if not args.prompt.strip():
        raise FedoaError("empty prompt", where="--prompt")
    run.check_models([kind])
    run.activate(kind, args.client or run.clients[0])
    am, encoder = run.model
    tok = encoder.tokenizer
    prepared = prepare_set(encoder, "prompt", [Record(args.prompt, "")])
    ids = generations(am, prepared, 1, tok.pad_token_id, args.max_new_tokens, tok.eos_token_id)[0]
    print(tok.decode(ids, skip_special_tokens=True).strip())
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="answer a prompt with a client's model of a finished run (greedy)",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_dir_arg(p)
    p.add_argument("--client", help="whose model (required for personal and mixed models)")
    p.add_argument("--kind", help="personal, mixed, global or zero_shot (default: personal where the method has one)")
    p.add_argument("--prompt", required=True, help="the instruction; the run's prompt template wraps it")
    p.add_argument("--max-new-tokens", type=int, default=64, help="generation budget (default 64)")
    add_quiet_arg(p)
    p.set_defaults(func=generate)
