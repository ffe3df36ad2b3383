"""Prompt templates and tokenization of records into (prompt ids, response ids).

The prompt and the response are tokenized separately and concatenated, so training and option
scoring see exactly the same token boundary.
"""
from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from fedoa.data.records import Record

ALPACA = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
PLAIN = "{instruction}\nAnswer:\n"
TEMPLATES = ("alpaca", "plain", "chat")


@dataclass(frozen=True)
class Encoded:
    """Token ids of one record. ``response`` ends with EOS when encoded for training."""

    prompt: tuple[int, ...]
    response: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.prompt) + len(self.response)


class PromptEncoder:
    """Turns records into token ids with one template and one length cut-off."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: str = "alpaca", max_length: int = 256):
        if template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}")
        if template == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'chat' needs a tokenizer with a chat template")
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self._option_cache: dict[str, tuple[int, ...]] = {}
        #: prompts cut to fit ``max_length`` so far (reported, never silent)
        self.truncated = 0

    def prompt_text(self, instruction: str) -> str:
        if self.template == "alpaca":
            return ALPACA.format(instruction=instruction)
        if self.template == "plain":
            return PLAIN.format(instruction=instruction)
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
        )

    def prompt_ids(self, instruction: str, reserve: int = 0) -> tuple[int, ...]:
        """Prompt tokens, left-truncated so ``reserve`` tokens of response still fit.

        Left truncation keeps the end of the instruction, where the question and options are.
        """
        special = self.template != "chat"
        ids = self.tokenizer(self.prompt_text(instruction), add_special_tokens=special)["input_ids"]
        budget = max(1, self.max_length - reserve)
        self.truncated += len(ids) > budget
        return tuple(ids[-budget:])

    def answer_ids(self, text: str) -> tuple[int, ...]:
        """Tokens of an answer string (options repeat a lot, so they are cached)."""
        ids = self._option_cache.get(text)
        if ids is None:
            ids = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            self._option_cache[text] = ids
        return ids

    def encode_train(self, record: Record) -> Encoded:
        response = self.answer_ids(record.output) + (self.tokenizer.eos_token_id,)
        response = response[: self.max_length - 1]
        return Encoded(self.prompt_ids(record.instruction, reserve=len(response)), response)

    def encode_prompt(self, record: Record, reserve: int = 0) -> tuple[int, ...]:
        return self.prompt_ids(record.instruction, reserve=reserve)
