import torch

from fedoa.data.prompts import PromptEncoder
from fedoa.data.records import make_record
from fedoa.evaluation.scoring import (
    accuracy_of,
    generation_hits,
    generations,
    normalize_answer,
    option_predictions,
    option_scores,
    prepare_set,
)
from fedoa.model.adapters import GLOBAL

RECORDS = [
    make_record("Is this good?\nOPTIONS:\n- yes indeed it is\n- no\n- maybe so", "no"),
    make_record(
        "A much longer question about the world?\nOPTIONS:\n- NDRF.\n- National Disaster Response Force.",
        "NDRF.",
    ),
    make_record("Short?\nOPTIONS:\n- negative\n- positive", "positive"),
]


def _brute_force(am, prompt, option):
    ids = torch.tensor([list(prompt) + list(option)])
    with torch.no_grad():
        logp = torch.log_softmax(am.logits(am.hidden(ids, torch.ones_like(ids))).float(), -1)[0]
    return sum(logp[len(prompt) - 1 + i, option[i]].item() for i in range(len(option)))


def test_cached_option_scores_equal_one_forward_per_option(tiny):
    am, tok = tiny
    am.set(GLOBAL, {k: v + 0.05 * torch.randn_like(v) for k, v in am.fresh_state(3).items()})
    am.use(GLOBAL)
    ps = prepare_set(PromptEncoder(tok, "alpaca", 256), "t", RECORDS)
    assert any(len(o) > 1 for opts in ps.options for o in opts)  # exercises the cached continuation
    scores = option_scores(am, ps.prompts, ps.options, tok.pad_token_id)  # one left-padded batch
    for b, (prompt, opts) in enumerate(zip(ps.prompts, ps.options)):
        for k, o in enumerate(opts):
            assert abs(scores[b][k] - _brute_force(am, prompt, o)) < 1e-3
    preds = option_predictions(am, ps, batch_size=2, pad_id=tok.pad_token_id)
    assert preds == [max(range(len(s)), key=s.__getitem__) for s in scores]


def test_zero_shot_uses_no_adapter(tiny):
    am, tok = tiny
    am.set(GLOBAL, {k: v + 0.5 * torch.randn_like(v) for k, v in am.fresh_state(4).items()})
    ps = prepare_set(PromptEncoder(tok, "plain", 256), "t", RECORDS)
    am.use(GLOBAL)
    with_adapter = option_scores(am, ps.prompts, ps.options, tok.pad_token_id)
    am.use(None)
    without = option_scores(am, ps.prompts, ps.options, tok.pad_token_id)
    base = [[_brute_force_base(am, p, o) for o in opts] for p, opts in zip(ps.prompts, ps.options)]
    assert abs(without[0][0] - base[0][0]) < 1e-3
    assert abs(with_adapter[0][0] - without[0][0]) > 1e-4


def _brute_force_base(am, prompt, option):
    with am.adapters_off():
        ids = torch.tensor([list(prompt) + list(option)])
        with torch.no_grad():
            out = am.base(input_ids=ids).logits
    logp = torch.log_softmax(out.float(), -1)[0]
    return sum(logp[len(prompt) - 1 + i, option[i]].item() for i in range(len(option)))


def test_normalization_and_generation_metric(tiny):
    assert normalize_answer("  NDRF.\nmore text") == "ndrf"
    assert normalize_answer("It's  impossible to say") == "it's impossible to say"
    am, tok = tiny
    am.use(None)
    ps = prepare_set(PromptEncoder(tok, "plain", 256), "t", RECORDS)
    ids = generations(am, ps, 2, tok.pad_token_id, 4, tok.eos_token_id)
    assert len(ids) == 3 and all(len(x) <= 4 for x in ids)
    texts = [ps.records[i].output for i in range(3)]
    assert generation_hits(ps, texts) == [1, 1, 1] and accuracy_of(generation_hits(ps, texts)) == 1.0
    assert generation_hits(ps, ["zzz", texts[1], "zzz"]) == [0, 1, 0]
    assert accuracy_of([1, -1, 0, 1]) == 2 / 3  # -1: a record without options is not scored
