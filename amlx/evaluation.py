"""Batched evaluation of attribution records with many metrics in as few forward passes as possible.

``Evaluator.evaluate(records)`` builds every perturbed variant of every record for every requested perturbation
metric (plus each unperturbed input, whose p_ŷ(x) every metric uses), drops duplicates (e.g. Comp at 0 tokens is
the input itself; AS at n words added is too), sorts the distinct variants by length and runs them through the
explained model in chunks of at most ``max_tokens`` = rows × padded length, under ``torch.inference_mode()``.
Agreement metrics need no model and are computed per record. ``evaluate_one_by_one`` is the plain reference
path (each variant alone, no padding, no deduplication) for tests and benchmarks. Search metrics
(``SearchMetric``, e.g. NAOPC's bound search) choose later variants from earlier probabilities: all records' searches
advance in lockstep, one batched pass per round, and a variant already run in an earlier round is not run again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from amlx import metrics as metric_registry
from amlx.metrics import Metric
from amlx.metrics.agreement import AgreementMetric
from amlx.metrics.perturb import FILL, PerturbationMetric, SearchMetric, build_variants, replacement_id
from amlx.records import Attribution

DEFAULT_METRICS = ("comp", "suff", "log_odds", "aopc_comp", "aopc_suff")


class Evaluator:
    """Scores records with ``metrics`` (names or ``Metric`` instances) on ``model``.

    ``perturbation`` / ``unit`` / ``rounding`` / ``word_agg``, when given, override every named perturbation
    metric's default (e.g. ``perturbation="mask"`` for all of them); ``agreement_unit`` (token | word) and ``word_agg``
    those of every named agreement metric; instances are used as configured.
    ``max_tokens`` bounds each forward pass (rows × padded length): raise it on a GPU, lower it if memory runs out.
    ``max_rows`` caps the rows of a pass: rows are sorted by length, so small passes keep padding low (on a CPU,
    wider passes buy no speed; on a GPU raise both).
    """

    def __init__(
        self,
        model,
        metrics: Sequence[str | Metric] = DEFAULT_METRICS,
        max_tokens: int = 8192,
        max_rows: int = 64,
        perturbation: str | None = None,
        unit: str | None = None,
        rounding: str | None = None,
        word_agg: str | None = None,
        agreement_unit: str | None = None,
    ) -> None:
        self.model = model
        self.max_tokens = max_tokens
        self.max_rows = max_rows
        overrides = {k: v for k, v in dict(perturbation=perturbation, unit=unit, rounding=rounding,
                                           word_agg=word_agg).items() if v is not None}  # fmt: skip
        agreement = {k: v for k, v in dict(unit=agreement_unit, word_agg=word_agg).items() if v is not None}
        self.metrics: list[Metric] = []
        for m in metrics:
            if isinstance(m, str):
                m = metric_registry.get(m)
                if isinstance(m, PerturbationMetric) and overrides:
                    m = type(m)(**overrides)
                elif isinstance(m, AgreementMetric) and agreement:
                    m = type(m)(**agreement)
            if m.kind == "sanity":
                raise ValueError(
                    f"{m.name} re-runs an attribution method on randomized models and cannot score saved records; "
                    f"call amlx.metrics.get({m.name!r})(method, model, texts) instead"
                )
            self.metrics.append(m)
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"metric names must be unique in one Evaluator, got {names}")
        self.search_memo: dict = {}  # what search metrics keep per example for this model (NAOPC's bounds)
        self.stats: dict[
            str, int
        ] = {}  # after evaluate(): records, variants, unique (variants), forward_passes
        # after evaluate(): metric name → per record, the (k, value) points of its curve (metrics with one)
        self.curves: dict[str, list[list[tuple[float, float]]]] = {}

    @property
    def perturbation_metrics(self) -> list[PerturbationMetric]:
        """The metrics whose variants are all known up front (one batched set of passes)."""
        return [m for m in self.metrics if isinstance(m, PerturbationMetric) and not isinstance(m, SearchMetric)]

    @property
    def search_metrics(self) -> list[SearchMetric]:
        return [m for m in self.metrics if isinstance(m, SearchMetric)]

    def score_maps(self, enc, maps: Tensor, target: Tensor, probs: Tensor, method: str = "candidate") -> dict[str, Tensor]:
        """Every candidate map of every example in one batched call: metric name → [batch, candidates] (float64).

        ``maps``: [batch, candidates, tokens] scores on the tokens of the ``Encoded`` batch ``enc``; ``target``
        [batch] and ``probs`` [batch, classes] as in the records (fAML's steps, RPI's candidate pool).
        """
        from amlx.records import records_from_encoded

        model = self.model
        recs = []  # candidate-major: all examples for candidate 0, then candidate 1, ...
        for c in range(maps.shape[1]):
            recs += records_from_encoded(enc, model.tokenizer, maps[:, c], target, probs, model.labels, method, "")
        shape = (maps.shape[1], len(enc))
        return {k: torch.from_numpy(np.asarray(v, dtype=np.float64)).reshape(shape).T for k, v in self.evaluate(recs).items()}

    def evaluate(self, records: Sequence[Attribution]) -> dict[str, np.ndarray]:
        """Metric name → values [records] (float64), all perturbed variants batched together."""
        out = {m.name: np.full(len(records), np.nan) for m in self.metrics}
        self.stats = {}
        self.curves = {}
        pmetrics = self.perturbation_metrics
        if pmetrics and records:
            self._check(records)
            rows, slices = [], []  # per record: (row of the input, [row slice of each metric])
            n_rows = 0
            for rec in records:
                ids = torch.tensor(rec.input_ids)
                parts = [ids[None]] + [
                    build_variants(
                        ids, m.keep_masks(rec), m.perturbation, replacement_id(self.model, m.perturbation)
                    )
                    for m in pmetrics
                ]
                starts = n_rows + np.cumsum([0] + [len(p) for p in parts])
                slices.append((n_rows, [slice(starts[i], starts[i + 1]) for i in range(1, len(parts))]))
                rows.append(torch.cat(parts))
                n_rows = int(starts[-1])
            width = max(r.shape[1] for r in rows)
            allrows = torch.cat(
                [torch.nn.functional.pad(r, (0, width - r.shape[1]), value=FILL) for r in rows]
            )
            unique, inverse = torch.unique(allrows, dim=0, return_inverse=True)
            probs, passes = variant_probs(self.model, unique, self.max_tokens, self.max_rows)
            p_all = probs.double().numpy()[inverse.numpy()]  # [rows, classes]
            self.stats = {"records": len(records), "variants": len(allrows), "unique": len(unique),
                          "forward_passes": passes}  # fmt: skip
            for r, (rec, (orig, sl)) in enumerate(zip(records, slices)):
                p0 = p_all[orig, rec.target]
                for m, s in zip(pmetrics, sl):
                    out[m.name][r] = m.reduce(p0, p_all[s, rec.target])
                    points = m.curve_points(p0, p_all[s, rec.target])
                    if points is not None:
                        self.curves.setdefault(m.name, []).append(points)
        if self.search_metrics and records:
            self._check(records)
            self._search(records, out)
        for m in self.metrics:
            if not isinstance(m, PerturbationMetric):
                out[m.name] = np.array([m(rec) for rec in records], dtype=np.float64)
        return out

    def evaluate_one_by_one(self, records: Sequence[Attribution]) -> dict[str, np.ndarray]:
        """Reference path: every metric on every record, each variant through the model alone."""
        if self.perturbation_metrics or self.search_metrics:
            self._check(records)
        return {
            m.name: np.array([m(rec, self.model) for rec in records], dtype=np.float64) for m in self.metrics
        }

    def _search(self, records: Sequence[Attribution], out: dict[str, np.ndarray]) -> None:
        """Drive every (search metric, record) generator to its end; rounds are batched across all of them."""
        cache: dict[bytes, np.ndarray] = {}  # id row → class probabilities, across rounds
        active = []  # (metric, record index, generator, keep-masks of its pending round)
        for m in self.search_metrics:
            for r, rec in enumerate(records):
                gen = m.search(rec, self.search_memo)
                active.append((m, r, gen, next(gen)))
        stats = {"search_rounds": 0, "search_variants": 0, "search_unique": 0, "search_forward_passes": 0}
        while active:
            keys_per_item, new = [], {}
            for m, r, _, keep in active:
                rows = build_variants(torch.tensor(records[r].input_ids), keep, m.perturbation,
                                      replacement_id(self.model, m.perturbation))  # fmt: skip
                keys = []
                for row in rows:
                    key = row[row != FILL].numpy().tobytes()
                    keys.append(key)
                    if key not in cache and key not in new:
                        new[key] = row
                keys_per_item.append(keys)
            if new:
                width = max(len(key) for key in new) // 8  # keys are int64 bytes
                batch = torch.full((len(new), width), FILL, dtype=torch.long)
                for i, row in enumerate(new.values()):
                    batch[i, : min(width, len(row))] = row[:width]
                probs, passes = variant_probs(self.model, batch, self.max_tokens, self.max_rows)
                cache.update(zip(new, probs.double().numpy()))
                stats["search_forward_passes"] += passes
            stats["search_rounds"] += 1
            stats["search_variants"] += sum(map(len, keys_per_item))
            stats["search_unique"] += len(new)
            still = []
            for (m, r, gen, _), keys in zip(active, keys_per_item):
                target = records[r].target
                try:
                    still.append((m, r, gen, gen.send(np.array([cache[k][target] for k in keys]))))
                except StopIteration as done:
                    out[m.name][r] = done.value
            active = still
        self.stats.update(stats)

    def _check(self, records: Sequence[Attribution]) -> None:
        vocab = self.model.embedding_layer.num_embeddings
        for rec in records:
            if max(rec.input_ids, default=0) >= vocab or rec.target >= self.model.num_labels:
                raise ValueError(
                    f"{rec.where()} does not fit the explained model {self.model.name!r} (token ids or target "
                    "outside its vocabulary / label set); evaluate records with the model that produced them"
                )


@torch.inference_mode()
def variant_probs(model, rows: Tensor, max_tokens: int = 8192, max_rows: int = 64) -> tuple[Tensor, int]:
    """Class probabilities [rows, classes] (CPU) of FILL-padded id rows [rows, tokens] and the number of passes.

    Rows go through ``model`` shortest first, at most ``max_rows`` rows and ``max_tokens`` = rows × padded length
    per pass; FILL positions become padding with attention 0.
    """
    lengths = (rows != FILL).sum(1)
    order = torch.argsort(lengths, stable=True)
    out = torch.empty(len(rows), model.num_labels, dtype=torch.float32)
    pad_id = model.tokenizer.pad_token_id
    passes, i = 0, 0
    sorted_len = lengths[order].tolist()
    while i < len(rows):
        j = i + 1  # sorted ascending: the chunk's padded length is that of its last row
        while j < len(rows) and j - i < max_rows and (j + 1 - i) * sorted_len[j] <= max_tokens:
            j += 1
        idx = order[i:j]
        width = sorted_len[j - 1]
        chunk = rows[idx, :width]
        attention = (chunk != FILL).long()
        ids = chunk.masked_fill(chunk == FILL, pad_id).to(model.device)
        out[idx] = model.probs(input_ids=ids, attention_mask=attention.to(model.device)).float().cpu()
        passes += 1
        i = j
    return out, passes
