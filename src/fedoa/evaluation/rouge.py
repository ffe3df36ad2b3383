"""The FedOA reference's generation-based scoring: beam search, then ROUGE against the answer.

What the reference does (Lydia-yang/FedOA ``code/GlobalModel_generated.py`` generates, Lydia-yang/
FedDPA ``code/metric.py`` scores; read 2026-12-05):
- decoding: ``GenerationConfig(temperature=0.1, top_p=0.75, top_k=40, num_beams=4)`` and
  ``max_new_tokens=80``; ``do_sample`` stays False, so this is deterministic 4-beam search (the
  sampling settings have no effect). fedoa: ``num_beams = eval.rouge_num_beams`` (4),
  ``max_new_tokens = eval.rouge_max_new_tokens`` (80), no sampling;
- the answer: the decoded text after the prompt's ``### Response:`` up to the next one, cut at
  ``</s>``. fedoa decodes the generated tokens only, cut at the first end-of-sequence token, and
  at a ``### Response:`` the model writes itself;
- the metric: ``t5.evaluation.metrics.rouge`` per category and in total: ``rouge_scorer.
  RougeScorer(["rouge1", "rouge2", "rougeLsum"])`` (no stemmer, the package's tokenizer),
  ``" . "`` -> ``" .\\n"`` in both texts (sentence breaks for rougeLsum), F-measure, x100, the
  ``mid`` of ``scoring.BootstrapAggregator`` (the median of 1000 unseeded bootstrap means).
  fedoa keeps every record's F-measure (in [0, 1]) and averages them: the plain mean, which the
  bootstrap's mid estimates, reproducible and usable for paired comparisons.
"""
from __future__ import annotations

from functools import lru_cache

ROUGE_TYPES = ("rouge1", "rouge2", "rougeLsum")
RESPONSE_MARKER = "### Response:"


def answer_of(ids: list[int], eos_id: int, decode) -> str:
    """The generated answer: tokens up to the first end-of-sequence token, decoded, cut at a
    ``### Response:`` the model writes itself, stripped."""
    if eos_id in ids:
        ids = ids[: ids.index(eos_id)]
    return decode(ids).split(RESPONSE_MARKER, 1)[0].strip()


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES))


def _prepare(text: str) -> str:
    return text.replace(" . ", " .\n")  # as t5.evaluation.metrics.rouge: sentence breaks for rougeLsum


def rouge_per_record(predictions: list[str], targets: list[str]) -> dict[str, list[float]]:
    """Per ROUGE type, each record's F-measure in [0, 1]."""
    scorer = _scorer()
    out: dict[str, list[float]] = {t: [] for t in ROUGE_TYPES}
    for pred, target in zip(predictions, targets, strict=True):
        scores = scorer.score(target=_prepare(target), prediction=_prepare(pred))
        for t in ROUGE_TYPES:
            out[t].append(scores[t].fmeasure)
    return out
