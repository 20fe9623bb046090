"""Hallucination detectors side by side on grounded answers: which per-answer score tells correct answers from wrong ones.

``compare(fit, test)`` takes the labelled result lines of two ``ground`` runs (``run.RESULTS``): the
detectors that learn anything learn it on ``fit``, and every detector is measured on ``test``. A
detector scores an answer, higher meaning "more likely correct":

* read off the line, nothing fitted (``READ``): the grounding, the grounding of the words the answer
  adds to its question (``metrics.new_word_grounding``, computed from the line's tokens), grounding x
  citation relevance, the mean token log-probability, the copy rate of all heads, lexical overlap;
* logistic regressions fitted on ``fit`` (``FITTED``): Lookback-Lens (the layers x heads lookback
  ratios, Chuang et al. 2024) and the length-and-position cues (``metrics.length_position``).

Per detector and test run: AUROC with a bootstrap 95% interval over answers, and the balanced
accuracy ((true-positive rate + true-negative rate) / 2) on ``test`` at the score threshold that
maximised it on ``fit``: AUROC says how well the score ranks, the threshold's transfer says
whether a cut chosen on one set still works on another. Answers without a score (an empty answer
has no grounding and no lookback features) score lowest: an empty answer is flagged. Lines
without a label (abstentions, unlabelled items) are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError
from ..io import read_jsonl
from . import metrics
from .run import RESULTS, SCORES

MISSING = -1e9  # the score of an answer a detector cannot score: below every real score
READ = SCORES  # the per-answer scores ground's own summary reports
FITTED = (("Lookback-Lens LR", "lookback"), ("length and position LR", "length_position"))
L2 = 10.0  # the regressions' penalty, as benchmarks/grounding_eval.py fits Lookback-Lens


def labelled(records: Sequence[dict]) -> list[dict]:
    """The lines with a 0/1 label."""
    return [r for r in records if r.get("label") in (0, 1)]


def read_scores(records: Sequence[dict], field: str) -> np.ndarray:
    return np.array([MISSING if (v := read_score(r, field)) is None else float(v) for r in records])


def read_score(record: dict, field: str) -> float | None:
    """``field`` of a result line. A line written before ``ground`` recorded ``new_word_grounding`` gets it
    computed from its tokens, as ``ground`` computes it (None for an empty answer)."""
    if field == "new_word_grounding" and field not in record:
        if not record.get("tokens"):
            return None
        return metrics.new_word_grounding(record["answer"], record["tokens"], record["question"])
    return record.get(field)


def fitted_scores(fit: Sequence[dict], test: Sequence[dict], field: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(fit, test) probabilities of a regression on ``field``'s feature vectors fitted on ``fit``; None
    when ``fit`` lacks either class among the lines that have the features."""
    train = [r for r in fit if r.get(field) is not None]
    if len({r["label"] for r in train}) < 2:
        return None
    model = metrics.LogisticRegression(l2=L2).fit(np.array([r[field] for r in train]), [r["label"] for r in train])

    def score(records):
        have = [i for i, r in enumerate(records) if r.get(field) is not None]
        out = np.full(len(records), MISSING)
        if have:
            out[have] = model.predict_proba(np.array([records[i][field] for i in have]))
        return out

    return score(fit), score(test)


def balanced_accuracy(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float | None:
    """Mean of the true-positive rate (correct answers at or above ``threshold``) and the true-negative rate."""
    pos, neg = labels == 1, labels == 0
    if not pos.any() or not neg.any():
        return None
    return float(((scores[pos] >= threshold).mean() + (scores[neg] < threshold).mean()) / 2)


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """The threshold with the best balanced accuracy on these answers (ties: the lowest)."""
    candidates = np.unique(scores)
    accuracy = [balanced_accuracy(scores, labels, t) for t in candidates]
    if not len(candidates) or accuracy[0] is None:
        return None
    return float(candidates[int(np.argmax(accuracy))])


def detector_row(name: str, fit_scores: np.ndarray, fit_labels: np.ndarray, test_scores: np.ndarray,
                 test_labels: np.ndarray) -> dict:
    row = metrics.auroc_row(name, test_scores, test_labels)
    threshold = best_threshold(fit_scores, fit_labels)
    row["threshold"] = threshold
    row["balanced_accuracy"] = None if threshold is None else balanced_accuracy(test_scores, test_labels, threshold)
    row["fit_balanced_accuracy"] = None if threshold is None else balanced_accuracy(fit_scores, fit_labels, threshold)
    return row


def compare(fit: Sequence[dict], test: Sequence[dict]) -> list[dict]:
    """One row per detector (see the module docstring): ``score``, ``auroc``, ``ci_low``, ``ci_high``, ``n``,
    ``positives``, ``threshold`` (chosen on ``fit``), ``balanced_accuracy`` (on ``test`` at it) and
    ``fit_balanced_accuracy``."""
    fit, test = labelled(fit), labelled(test)
    if not fit or not test:
        raise UserError("both runs need labelled answers (ground --dataset, or items with labels or gold answers)")
    y_fit = np.array([r["label"] for r in fit])
    y_test = np.array([r["label"] for r in test])
    rows = [detector_row(name, read_scores(fit, field), y_fit, read_scores(test, field), y_test)
            for name, field in READ]
    for name, field in FITTED:
        scored = fitted_scores(fit, test, field)
        if scored is not None:
            rows.append(detector_row(name, scored[0], y_fit, scored[1], y_test))
    return rows


def evaluate_runs(fit_dir, test_dirs: Sequence) -> dict:
    """``compare`` for each test run against the fit run: ``{"fit": counts, "tests": [{**counts, "rows"}, ...]}``,
    counts being ``run_counts``."""
    fit = run_lines(fit_dir)
    summary = {"fit": run_counts(fit_dir, fit), "tests": []}
    for directory in test_dirs:
        test = run_lines(directory)
        summary["tests"].append({**run_counts(directory, test), "rows": compare(fit, test)})
    return summary


def run_lines(directory) -> list[dict]:
    """The result lines of a ground run directory."""
    path = Path(directory) / RESULTS
    if not path.exists():
        raise UserError(f"{directory} is not a ground run: no {RESULTS}")
    return list(read_jsonl(path))


def run_counts(directory, records: Sequence[dict]) -> dict:
    """``run``, ``answers``, ``labelled`` and ``correct`` of a run's result lines."""
    kept = labelled(records)
    return {"run": str(directory), "answers": len(records), "labelled": len(kept),
            "correct": int(sum(r["label"] for r in kept))}
