"""The reference's generation scoring: ROUGE as its metric script computes it, and where it is reported."""
import json

import numpy as np
import pytest
from rouge_score import rouge_scorer, scoring

from fedoa.cli import main
from fedoa.config import load_config
from fedoa.data.prompts import ALPACA, PromptEncoder
from fedoa.evaluation.rouge import ROUGE_TYPES, answer_of, rouge_per_record
from fedoa.testing import tiny_model_dir
from tests.test_compare import FLAN8, TINY_TOML


def test_rouge_of_a_known_example_by_hand_and_by_the_package():
    got = rouge_per_record(["the cat is on the mat", "Positive.", ""], ["the cat sat on the mat", "positive", "yes"])
    # unigrams: 5 of 6 shared; bigrams: "the cat", "on the", "the mat" of 5; LCS "the cat on the mat"
    assert got["rouge1"][0] == pytest.approx(5 / 6)
    assert got["rouge2"][0] == pytest.approx(3 / 5)
    assert got["rougeLsum"][0] == pytest.approx(5 / 6)
    assert [got[t][1] for t in ROUGE_TYPES] == [1.0, 0.0, 1.0]  # case and punctuation do not count
    assert [got[t][2] for t in ROUGE_TYPES] == [0.0, 0.0, 0.0]  # an empty answer scores 0
    direct = rouge_scorer.RougeScorer(list(ROUGE_TYPES)).score("the cat sat on the mat", "the cat is on the mat")
    assert all(got[t][0] == direct[t].fmeasure for t in ROUGE_TYPES)


def test_sentence_breaks_as_the_reference_inserts_them_reach_rouge_lsum():
    got = rouge_per_record(["c d . a b"], ["a b . c d"])
    assert got["rougeLsum"][0] == pytest.approx(1.0)  # summary-level LCS over the two sentences
    plain = rouge_scorer.RougeScorer(["rougeLsum"]).score("a b . c d", "c d . a b")["rougeLsum"].fmeasure
    assert plain == pytest.approx(0.5)  # without the reference's " . " -> " .\n" it is one sentence


def test_the_mean_is_what_the_references_bootstrap_mid_estimates():
    rng = np.random.default_rng(0)
    words = ["yes", "no", "maybe", "positive", "negative", "it", "is"]
    preds = [" ".join(rng.choice(words, size=rng.integers(1, 4))) for _ in range(60)]
    targets = [str(rng.choice(words)) for _ in range(60)]
    ours = rouge_per_record(preds, targets)
    scorer, agg = rouge_scorer.RougeScorer(list(ROUGE_TYPES)), scoring.BootstrapAggregator()
    for p, t in zip(preds, targets):
        agg.add_scores(scorer.score(target=t, prediction=p))
    np.random.seed(0)  # the aggregator draws from numpy's global generator
    mid = agg.aggregate()
    for t in ROUGE_TYPES:
        assert np.mean(ours[t]) == pytest.approx(mid[t].mid.fmeasure, abs=0.02)


def test_answer_stops_at_the_end_of_sequence_and_at_a_new_response_marker(tiny):
    _, tok = tiny
    eos = tok.eos_token_id
    ids = tok("positive", add_special_tokens=False)["input_ids"]
    assert answer_of(ids + [eos] + tok(" junk", add_special_tokens=False)["input_ids"], eos, tok.decode) == "positive"
    more = tok(" yes\n\n### Response:\nno", add_special_tokens=False)["input_ids"]
    assert answer_of(more, eos, tok.decode) == "yes"


def test_alpaca_is_the_references_template(tiny):
    # tloen/alpaca-lora templates/alpaca.json "prompt_no_input", which the reference's Prompter("alpaca") reads
    reference = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                 "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
    assert ALPACA == reference
    assert PromptEncoder(tiny[1], "alpaca", 512).prompt_text("Q?") == reference.format(instruction="Q?")


def test_compare_reports_rouge_beside_accuracy_for_the_new_methods(tmp_path):
    assert FLAN8.is_dir(), f"Flan-8 benchmark not found at {FLAN8} (set FEDOA_FLAN8)"
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML.format(path=json.dumps(str(FLAN8)), model=json.dumps(str(tiny_model_dir()))))
    cfg = load_config(config)
    assert cfg.eval.rouge is False  # opt-in
    out = tmp_path / "cmp"
    argv = ["compare", "--methods", "fedlora,perada", "--seeds", "1", "--config", str(config), "--out", str(out),
            "--set", "eval.rouge=true", "--set", "eval.rouge_max_new_tokens=4", "--set", "perada.kd_steps=2",
            "--quiet"]
    assert main(argv) == 0
    for method in ("fedlora", "perada"):
        r = json.loads((out / "runs" / method / "seed0" / "results.json").read_text())
        rouge = r["rouge"]
        assert rouge["decoding"] == {"num_beams": 4, "max_new_tokens": 4, "do_sample": False}
        assert set(rouge["summary"]) == set(ROUGE_TYPES) and rouge["shown"] == "rouge1"
        for t in ROUGE_TYPES:
            for kind, by_client in rouge["records"][t].items():
                for client, sets in by_client.items():
                    for s, values in sets.items():
                        assert len(values) == r["test_sets"][s] and all(0 <= v <= 1 for v in values)
                        assert rouge["matrices"][t][kind][client][s] == pytest.approx(np.mean(values), abs=1e-4)
        assert "## ROUGE: the reference's generation scoring" in (out / "runs" / method / "seed0" / "report.md").read_text()
    summary = json.loads((out / "compare.json").read_text())
    assert summary["rouge"]["type"] == "rouge1" and summary["rouge"]["methods"] == ["fedlora", "perada"]
    assert summary["rouge"]["table"]["ood"]["perada"]["personal"]["average"]["n"] == 1
    md = (out / "compare.md").read_text()
    assert "## rouge1: the reference's generation scoring beside the accuracy" in md
    assert md.index("## rouge1") > md.index("## OOD (headline)")


def test_the_reference_evaluation_preset_sets_template_cutoff_and_scoring():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[2] / "benchmarks" / "flan8_reference_eval.toml")
    assert (cfg.data.template, cfg.model.max_length, cfg.eval.rouge) == ("alpaca", 512, True)
    assert (cfg.eval.rouge_num_beams, cfg.eval.rouge_max_new_tokens, cfg.eval.metric) == (4, 80, "options")


def test_fedoa_eval_rebuilds_a_fedlora_run_and_its_rouge(tmp_path):
    from tests.support.runs import make_tiny_run

    run = make_tiny_run(tmp_path / "fedlora", "fedlora", train={"lr": 0.1},
                        eval={"rouge": True, "rouge_max_new_tokens": 4})
    res = json.loads((run / "results.json").read_text())
    out = tmp_path / "ev"
    assert main(["eval", str(run), "--data", "vader", "--set", "data.tasks=['movie','tweets','nyt']",
                 "--set", "eval.rouge=true", "--out", str(out), "--quiet"]) == 0
    ev = json.loads((out / "eval.json").read_text())
    assert ev["matrices"] == res["matrices"]  # the personal model (P + G) rebuilt from the exported adapters
    for t in ROUGE_TYPES:
        assert ev["rouge"][t]["matrices"] == res["rouge"]["matrices"][t]
    assert "## ROUGE F-measure" in (out / "eval.md").read_text()
