"""lm-evaluation-harness on fedoa's own models, in process (``fedoa eval RUN --lm-eval TASKS``).

lm-eval's ``HFLM`` wraps the run's PEFT model object itself (no export): whatever model kind is
active (:meth:`fedoa.finished.FinishedRun.activate`) is the model lm-eval scores. Two things make
that model the one fedoa evaluates:

- the zero-shot model is the base with the adapters switched off, which fedoa does around its own
  forward passes (:meth:`AdapterModel.adapters_off`); lm-eval calls the PEFT model directly, so
  the bridge switches them off around lm-eval's calls too;
- the instance-wise mix (FedOA's "mixed" and FedDPA's personal model) weighs the two adapters per
  input by the *prompt*'s features. lm-eval scores an option in one forward pass over prompt and
  option, right-padded and without an attention mask, so the mix would see the option and the
  padding. The bridge tells the mix where each row's context ends (the context lengths come from
  lm-eval's own requests), and the weights are those of the prompt alone, as in fedoa's scoring.

lm-eval is an optional dependency (the ``lmeval`` extra): it is imported only here, on demand.
"""
from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any

import torch

from fedoa.errors import ConfigError
from fedoa.model.adapters import GLOBAL, PERSONAL

if TYPE_CHECKING:
    from fedoa.model.adapters import AdapterModel

INSTALL_HINT = "pip install 'fedoa[lmeval]' (lm-eval==0.4.13)"


def task_manager(tasks: list[str], include_path: str | None):
    """lm-eval's task index. Indexing its ~15,000 built-in tasks takes 5-20 s on 2 cores: where every
    task asked for is a task (not a group or tag, which may name built-in ones) of the include
    path, only that folder is indexed."""
    from lm_eval.tasks import TaskManager

    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if set(tasks) <= set(local.all_subtasks):
            return local
    return TaskManager(include_path=include_path)


def require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"needs lm-evaluation-harness ({INSTALL_HINT}): {e}", where="--lm-eval") from None


def make_lm(am: AdapterModel, tokenizer, batch_size: int, progress: bool = True):
    """An lm-eval ``HFLM`` over ``am``'s PEFT model, scoring whichever kind is active."""
    require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    from fedoa.model.mixing import mixer_of

    class FedoaLM(HFLM):
        def __init__(self):
            super().__init__(pretrained=am.peft, tokenizer=tokenizer, batch_size=batch_size)
            #: each scored sequence (as lm-eval feeds it) -> the length of its context part
            self._contexts: dict[tuple[int, ...], int] = {}

        # ------------------------------------------------------------ progress bars

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not progress)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm or not progress)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=disable_tqdm or not progress)

        # ------------------------------------------------------------ the active fedoa model

        def _prompt_length(self, strings, ctx: list[int], cont: list[int]) -> int:
            """Tokens of the request's whole context. lm-eval moves the context's trailing
            whitespace (the prompt's last newline) into the continuation; fedoa's prompt keeps it."""
            text = strings[0] if isinstance(strings, tuple) and strings and isinstance(strings[0], str) else ""
            if text and text != text.rstrip():
                full = self.tok_encode(text)
                if len(full) > len(ctx) and (ctx + cont)[: len(full)] == full:
                    return len(full)
            return len(ctx)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
            self._contexts = {}
            limit = self.max_length + 1
            for strings, ctx, cont in requests:
                whole = ctx + cont
                kept = whole[-limit:]  # lm-eval's own cut: (ctx + cont)[-(max_length + 1):][:-1]
                start = len(whole) - len(kept)
                n = self._prompt_length(strings, ctx, cont) - start
                self._contexts[tuple(kept[:-1])] = min(max(n, 1), len(kept) - 1)
            try:
                return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
            finally:
                self._contexts = {}

        def _context_length(self, row: list[int]) -> int:
            """The context length of a right-padded row (pads are 0; a real 0 at the end is tried too)."""
            end = len(row)
            while end and row[end - 1] == 0:
                end -= 1
            for n in range(end, len(row) + 1):
                if n and tuple(row[:n]) in self._contexts:
                    return self._contexts[tuple(row[:n])]
            raise RuntimeError("lm-eval bridge: a scored row matches none of lm-eval's requests")

        def _mix(self):
            active = am.peft.base_model.active_adapters
            if am.active is None or GLOBAL not in active or PERSONAL not in active:
                return None
            mix = mixer_of(am)
            return mix if mix.mixing() else None

        @contextlib.contextmanager
        def _prompt_weights(self, inps: torch.Tensor):
            """While the mix is armed: its weights from each row's context alone."""
            mix = self._mix()
            if mix is None or not self._contexts:
                yield
                return
            mask = torch.zeros_like(inps)
            for b, row in enumerate(inps.tolist()):
                mask[b, : self._context_length(row)] = 1
            weigh = mix.weigh
            mix.weigh = lambda decoder, ids, _mask, positions: weigh(decoder, ids, mask.to(ids.device), positions)
            try:
                yield
            finally:
                mix.weigh = weigh

        def _adapters(self):
            return am.adapters_off() if am.active is None else contextlib.nullcontext()

        def _model_call(self, inps, attn_mask=None, labels=None):
            with self._adapters(), self._prompt_weights(inps):
                return super()._model_call(inps, attn_mask, labels)

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            with self._adapters():
                return super()._model_generate(context, max_length, stop, **generation_kwargs)

    return FedoaLM()


def headline_metric(task_results: dict[str, Any]) -> str | None:
    """The first metric lm-eval reports for a task (``acc,none``), its stderr left out."""
    for key in task_results:
        if key != "alias" and "," in key and "_stderr," not in key:
            return key
    return None


def flat_scores(out: dict[str, Any]) -> dict[str, dict[str, float]]:
    """task -> metric -> value from a ``simple_evaluate`` result (numbers only, NaN dropped)."""
    scores: dict[str, dict[str, float]] = {}
    for task, values in out.get("results", {}).items():
        scores[task] = {k: float(v) for k, v in values.items()  # "metric,filter" keys (not sample_len)
                        if "," in k and isinstance(v, (int, float)) and not isinstance(v, bool)
                        and not math.isnan(float(v))}
    return scores


def verdicts(out: dict[str, Any], task: str, metric: str = "acc") -> str:
    """Each sample's ``metric`` as '1'/'0' in document order (``log_samples``): fedoa's record format."""
    samples = sorted(out.get("samples", {}).get(task, []), key=lambda s: s["doc_id"])
    return "".join(str(int(round(float(s[metric])))) for s in samples)
