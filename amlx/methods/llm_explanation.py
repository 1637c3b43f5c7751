"""LLM self-explanation: an instruction-tuned decoder is asked to rank the input's words by importance (seed 002's
"LLM" baseline; issue 15 item 4).

The prompt (``template``, with ``{task}``, ``{label}`` — the target's label name — and ``{text}``) goes through the
decoder's chat template when it has one; the answer is decoded greedily. Parsing (``parse_ranking``): the answer is
split into items at commas, semicolons and line breaks (list numbers, bullets and quotes stripped); each item is
matched, case-insensitively and ignoring surrounding punctuation, to the first not yet ranked word of the text with
that form; items that match no word are skipped. With R words ranked, the word ranked r-th (r = 1..R) scores
R − r + 1 and every token of a word gets its word's score.

Fallback (documented, never silent): words the answer does not rank score 0, tied below every ranked word; an answer
that ranks no word (garbage or empty) leaves every word at 0. Each record's ``meta`` says how the answer parsed:
``llm_parse`` = ``full`` (every word ranked) | ``partial`` | ``none``, ``llm_ranked_words``, ``llm_words`` and the
raw ``llm_answer``; ``parse_rate(records)`` is the share not ``none``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from amlx.methods.base import AttributionMethod, Target, register_method
from amlx.models.explained import Encoded
from amlx.records import Attribution
from amlx.words import word_spans

DEFAULT_DECODER = "amlx:smollm2-135m"
DEFAULT_TASK = "sentiment classification of movie reviews"
DEFAULT_TEMPLATE = (
    "Task: {task}. The text below was classified as {label}.\n"
    "Text: {text}\n"
    "List the words of the text that made it {label}, most important first, separated by commas. "
    "Answer with the words only."
)
_ITEM_SPLIT = re.compile(r"[,;\n]+")
_ITEM_STRIP = re.compile(r"^\s*(?:\d+[.)]|[-*•])?\s*|\s+$")
_EDGE_PUNCT = "\"'`“”‘’.!?:()[]{}*"

Decoder = Callable[[list[str]], list[str]]  # prompts → answers


def parse_ranking(answer: str, words: Sequence[str]) -> list[int]:
    """Indices into ``words`` in the order the answer ranks them (each word at most once; unmatched items skipped)."""
    forms = [w.lower() for w in words]
    taken = [False] * len(words)
    ranked = []
    for item in _ITEM_SPLIT.split(answer or ""):
        item = _ITEM_STRIP.sub("", item).strip(_EDGE_PUNCT + " ").lower()
        if not item:
            continue
        for i, form in enumerate(forms):
            if not taken[i] and form == item:
                taken[i] = True
                ranked.append(i)
                break
    return ranked


def word_scores(ranked: list[int], n_words: int) -> list[float]:
    """R − r + 1 for the r-th ranked word, 0 for the unranked ones (the fallback)."""
    scores = [0.0] * n_words
    for r, i in enumerate(ranked):
        scores[i] = float(len(ranked) - r)
    return scores


def parse_rate(records: Sequence[Attribution]) -> float:
    """Share of records whose answer ranked at least one word."""
    return sum(r.meta.get("llm_parse") != "none" for r in records) / max(len(records), 1)


class HFDecoder:
    """Greedy answers of a Hugging Face causal LM (``amlx:`` names, hub names or folders), chat template if any."""

    def __init__(self, name: str, max_new_tokens: int = 64, device: torch.device | str = "cpu") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from amlx import assets

        path = assets.resolve(name)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"  # generation continues every prompt at the same position
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
        self.max_new_tokens = max_new_tokens

    @torch.inference_mode()
    def __call__(self, prompts: list[str]) -> list[str]:
        if getattr(self.tokenizer, "chat_template", None):
            prompts = [
                self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                   add_generation_prompt=True)
                for p in prompts
            ]  # fmt: skip
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(self.model.device)
        out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id)  # fmt: skip
        return self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)


@register_method("llm_explanation")
class LlmExplanation(AttributionMethod):
    """Ranked words from a prompted decoder (module docstring), scored R − r + 1; unranked words 0, counted in meta.

    Options: ``decoder`` (an ``amlx:`` / hub name or folder of a causal LM, default ``amlx:smollm2-135m`` =
    SmolLM2-135M-Instruct; or any callable prompts → answers), ``template`` ({task}, {label}, {text}), ``task``,
    ``max_new_tokens`` (64), ``internal_batch_size`` (prompts per ``generate`` call). Cost: one generation per example.
    """

    def __init__(
        self, decoder: str | Decoder = DEFAULT_DECODER, template: str = DEFAULT_TEMPLATE, task: str = DEFAULT_TASK,
        max_new_tokens: int = 64, internal_batch_size: int = 8,
    ) -> None:  # fmt: skip
        super().__init__(internal_batch_size)
        if "{text}" not in template:
            raise ValueError("llm_explanation: the template must contain '{text}'")
        self.decoder, self.template, self.task, self.max_new_tokens = decoder, template, task, max_new_tokens
        self.variant = decoder if isinstance(decoder, str) else type(decoder).__name__
        self._meta: list[dict] = []

    def _answer(self, prompts: list[str], device: torch.device) -> list[str]:
        if isinstance(self.decoder, str):  # loaded on first use, on the explained model's device
            self.decoder = HFDecoder(self.decoder, self.max_new_tokens, device)
        answers = self.decoder(prompts)
        if len(answers) != len(prompts):
            raise ValueError(f"llm_explanation: the decoder gave {len(answers)} answers to {len(prompts)} prompts")
        return answers

    def attribute(self, inputs: str | list[str] | Encoded, model, target: Target = None) -> list[Attribution]:
        self._meta = []  # filled by scores() in input order (examples are not sorted by length)
        records = super().attribute(inputs, model, target)
        for rec, meta in zip(records, self._meta):
            rec.meta.update(meta)
        return records

    def scores(self, enc: Encoded, model, target: Tensor) -> Tensor:
        spans = [word_spans(t) for t in enc.texts]
        prompts = [
            self.template.format(task=self.task, label=model.labels[int(c)], text=t) for t, c in zip(enc.texts, target)
        ]
        answers = self._answer(prompts, model.device)
        out = torch.zeros(enc.input_ids.shape, dtype=torch.float32)
        for b, (text, sp, answer) in enumerate(zip(enc.texts, spans, answers)):
            words = [text[s:e] for s, e in sp]
            ranked = parse_ranking(answer, words)
            per_word = torch.tensor(word_scores(ranked, len(words)) + [0.0])  # index -1: tokens in no word
            out[b] = per_word[enc.word_ids[b].cpu()]
            status = "none" if not ranked else "full" if len(ranked) == len(words) else "partial"
            self._meta.append({"llm_parse": status, "llm_ranked_words": len(ranked), "llm_words": len(words),
                               "llm_answer": answer})  # fmt: skip
        return out.to(enc.input_ids.device)
