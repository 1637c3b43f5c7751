"""Agreement with ground truth: planted tokens (thesis §3.1) and human rationales (ERASER).

All work on the record's attributable tokens and its ``ground_truth`` token mask, need no model, and rank
units by score with ties broken by position. A unit is a token (``unit="token"``, default) or a word
(``unit="word"``: its score is the ``word_agg`` of its tokens' scores, and it is in the ground truth when one of its
tokens is; how human rationales, marked on words, are scored). A record without ``ground_truth`` raises
``ValueError``; a record whose ground truth has no attributable token (e.g. truncated away) scores NaN. A sentence
pair's units are those of both segments; a span (IoU F1) never runs across the two.

Binarizing for token F1 / IoU F1: the predicted rationale is the top-``k``% of tokens (``k`` given) or, by
default, the top-|ground truth| tokens — the oracle length, the usual choice when no threshold is tuned (MaRC
tunes a kernel regressor instead; pass its percentage as ``k``).
"""

from __future__ import annotations

import numpy as np

from amlx.metrics import Metric, register_metric
from amlx.metrics.perturb import UNITS, n_units_for, unit_index
from amlx.records import AGGREGATIONS, Attribution, aggregate


class AgreementMetric(Metric):
    """Scores units (tokens or words) against ``record.ground_truth``; subclasses implement ``score``."""

    kind = "agreement"

    def __init__(self, unit: str = "token", word_agg: str = "max") -> None:
        if unit not in UNITS:
            raise ValueError(f"{self.name}: unit must be one of {UNITS}, got {unit!r}")
        if word_agg not in AGGREGATIONS:
            raise ValueError(f"{self.name}: word_agg must be one of {AGGREGATIONS}, got {word_agg!r}")
        self.unit, self.word_agg = unit, word_agg

    def __call__(self, record: Attribution, model=None) -> float:
        if record.ground_truth is None:
            raise ValueError(
                f"{self.name} compares with ground truth, but {record.where()} has none; set "
                "Attribution.ground_truth (a token mask; Attribution.spans_to_tokens converts character spans)"
            )
        units, n = unit_index(record, self.unit)
        sel = units >= 0  # the attributable tokens
        groups = units[sel]
        gt = np.zeros(n, dtype=bool)
        np.logical_or.at(gt, groups, record.ground_truth[sel])
        if not gt.any():
            return float("nan")
        scores = aggregate(groups, record.scores[sel], n, self.word_agg)
        rank = np.empty(n, dtype=np.int64)
        rank[np.argsort(-scores, kind="stable")] = np.arange(n)  # 0 = most attributed; ties: earlier unit first
        first = np.unique(groups, return_index=True)[1]  # each unit's first token
        segment = record.segment_ids()[sel][first]
        return self.score(scores, gt, rank, segment)

    def score(self, scores: np.ndarray, gt: np.ndarray, rank: np.ndarray, segment: np.ndarray) -> float:
        """``scores``, ``gt`` (bool), ``rank`` (0 = top), ``segment`` (0, or 1 in a pair's text_pair): [units]."""
        raise NotImplementedError


@register_metric
class GroundTruthOverlap(AgreementMetric):
    """Fraction of the ground-truth tokens among the top-|ground truth| tokens (= thesis GT overlap when |L| = 1)."""

    name, direction = "gt_overlap", "higher"

    def score(self, scores: np.ndarray, gt: np.ndarray, rank: np.ndarray, segment: np.ndarray) -> float:
        k = int(gt.sum())
        return float((gt & (rank < k)).sum() / k)


@register_metric
class MeanRankPercentage(AgreementMetric):
    """Smallest fraction r/n of the ranking that contains every ground-truth token (thesis §2.2.3.1); in (0, 1]."""

    name, direction = "mean_rank_pct", "lower"

    def score(self, scores: np.ndarray, gt: np.ndarray, rank: np.ndarray, segment: np.ndarray) -> float:
        return float((rank[gt].max() + 1) / len(rank))


class _Binarized(AgreementMetric):
    def __init__(self, k: float | None = None, rounding: str = "floor", unit: str = "token", word_agg: str = "max") -> None:
        super().__init__(unit, word_agg)
        self.k = k
        self.rounding = rounding

    def predicted(self, gt: np.ndarray, rank: np.ndarray) -> np.ndarray:
        m = int(gt.sum()) if self.k is None else n_units_for(len(rank), self.k, self.rounding)
        return rank < m


@register_metric
class TokenF1(_Binarized):
    """Token-level F1 between the predicted rationale (top-k%, default top-|gt|) and the ground truth (ERASER)."""

    name, direction = "token_f1", "higher"

    def score(self, scores: np.ndarray, gt: np.ndarray, rank: np.ndarray, segment: np.ndarray) -> float:
        pred = self.predicted(gt, rank)
        return _f1(int((pred & gt).sum()), int(pred.sum()), int(gt.sum()))


@register_metric
class IouF1(_Binarized):
    """ERASER IoU F1: a span counts as matched when some span on the other side has IoU ≥ 0.5 (token spans)."""

    name, direction = "iou_f1", "higher"
    threshold = 0.5

    def score(self, scores: np.ndarray, gt: np.ndarray, rank: np.ndarray, segment: np.ndarray) -> float:
        pred_spans, gt_spans = _runs(self.predicted(gt, rank), segment), _runs(gt, segment)
        if not pred_spans:
            return 0.0
        iou = np.array([[_iou(p, g) for g in gt_spans] for p in pred_spans])  # [pred, gt]
        hit = iou >= self.threshold
        precision = hit.any(1).mean()
        recall = hit.any(0).mean()
        return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


@register_metric
class Auprc(AgreementMetric):
    """Area under the precision–recall curve of the scores against the ground truth (average precision, ERASER).

    Tied scores form one threshold (as sklearn's ``average_precision_score``).
    """

    name, direction = "auprc", "higher"

    def score(self, scores: np.ndarray, gt: np.ndarray, rank: np.ndarray, segment: np.ndarray) -> float:
        order = np.argsort(-scores, kind="stable")
        s, y = scores[order], gt[order]
        last_of_tie = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
        tp = np.cumsum(y)[last_of_tie]
        predicted = last_of_tie + 1
        precision, recall = tp / predicted, tp / y.sum()
        return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _f1(tp: int, n_pred: int, n_true: int) -> float:
    return 0.0 if n_pred + n_true == 0 else 2 * tp / (n_pred + n_true)


def _runs(mask: np.ndarray, segment: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True within one segment as [start, end) index pairs."""
    runs = []
    for seg in np.unique(segment):
        idx = np.flatnonzero(segment == seg)  # a segment's units are contiguous
        edges = np.diff(np.r_[0, mask[idx].astype(np.int8), 0])
        runs += [(idx[0] + s, idx[0] + e) for s, e in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))]
    return [(int(s), int(e)) for s, e in runs]


def _iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / ((a[1] - a[0]) + (b[1] - b[0]) - inter)
