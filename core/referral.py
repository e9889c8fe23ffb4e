"""Referral: which predictions a pathologist should look at, and the threshold.

Each slide's `uncertainty` is read off the model's own outputs:
* ISUP grade (ordinal): the probability mass not on the predicted grade,
  1 - P(grade = predicted), 0 when the model puts everything on one grade;
* binary: 1 - 2 |P(label 1) - 0.5|, 1 at the decision threshold, 0 at 0 or 1.
A slide is referred when its uncertainty is above the model's threshold.

The threshold is chosen on labelled slides (the Trainer uses its "valid"
split, which it already holds out for early stopping, so the Evaluator's
"eval" split stays an unbiased measure of it): the largest coverage (share of
slides accepted) at which the accepted slides still reach the target
(quadratic weighted kappa for ISUP, ROC AUC for binary), among coverages that
accept at least `MIN_ACCEPTED` slides. When no coverage reaches the target,
the one with the best metric is taken and `target_met` says so. The choice
travels in the model's contract, so every client refers the same slides.

Metrics are scikit-learn's (`cohen_kappa_score(weights="quadratic")`,
`roc_auc_score`): the reference implementations the tests also use.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional

import numpy as np

from histopipe.core.configs import ISUP_GRADES

# Fewer accepted slides than this make a coverage's metric meaningless.
MIN_ACCEPTED = 5
UNCERTAINTY_ISUP = "1 - P(predicted grade)"
UNCERTAINTY_BINARY = "1 - 2|P(positive) - 0.5|"


def uncertainty(probabilities, grades, task: str) -> np.ndarray:
  """[B] uncertainties from [B, K] class probabilities (or [B, 1] / [B]
  P(label 1) for binary) and the [B] predicted grades."""
  probabilities = np.asarray(probabilities, np.float64)
  if task == "binary":
    positive = probabilities.reshape(len(probabilities), -1)[:, -1]
    return 1.0 - 2.0 * np.abs(positive - 0.5)
  grades = np.asarray(grades, np.int64).reshape(-1)
  return 1.0 - probabilities[np.arange(len(grades)), grades]


def metric_of(labels, grades, scores, task: str) -> Optional[float]:
  """Kappa (ISUP: labels vs grades) or ROC AUC (binary: labels vs P(label 1));
  None where it is undefined (one class only)."""
  from sklearn.metrics import cohen_kappa_score, roc_auc_score  # pylint: disable=import-outside-toplevel
  labels = np.asarray(labels).reshape(-1)
  if len(np.unique(labels)) < 2:
    return None
  if task == "binary":
    return float(roc_auc_score(labels, np.asarray(scores).reshape(-1)))
  grades = np.asarray(grades).reshape(-1)
  if len(np.unique(np.concatenate([labels, grades]))) < 2:
    return None
  # The weights are by grade, not by position among the grades a subset holds.
  return float(cohen_kappa_score(labels, grades, weights="quadratic",
                                 labels=list(range(ISUP_GRADES))))


@dataclasses.dataclass(frozen=True)
class CurvePoint:
  threshold: float  # refer slides with uncertainty above this
  coverage: float  # share of slides accepted
  accepted: int
  metric: Optional[float]  # of the accepted slides


def coverage_curve(labels, grades, probabilities, task: str) -> List[CurvePoint]:
  """The metric of the accepted slides at each distinct uncertainty taken as
  threshold, from the most certain slides alone to all of them."""
  labels = np.asarray(labels).reshape(-1)
  grades = np.asarray(grades).reshape(-1)
  probabilities = np.asarray(probabilities, np.float64)
  scores = probabilities.reshape(len(labels), -1)[:, -1]
  uncertainties = uncertainty(probabilities, grades, task)
  order = np.argsort(uncertainties, kind="stable")
  points = []
  for threshold in np.unique(uncertainties):
    accepted = order[uncertainties[order] <= threshold]
    points.append(CurvePoint(float(threshold), len(accepted) / len(labels), len(accepted),
                             metric_of(labels[accepted], grades[accepted], scores[accepted],
                                       task)))
  return points


def choose_threshold(labels, grades, probabilities, task: str, target: float) -> dict:
  """The referral settings a model carries (see the module docstring)."""
  points = [p for p in coverage_curve(labels, grades, probabilities, task)
            if p.accepted >= min(MIN_ACCEPTED, len(np.asarray(labels).reshape(-1)))
            and p.metric is not None]
  metric = "auc" if task == "binary" else "kappa"
  settings = {"uncertainty": UNCERTAINTY_BINARY if task == "binary" else UNCERTAINTY_ISUP,
              "metric": metric, "target": target, "slides": int(np.asarray(labels).size)}
  if not points:
    # Too few labelled slides (or one class): refer nothing, and say so.
    return {**settings, "threshold": 1.0, "coverage": 1.0, "metric_at_threshold": None,
            "target_met": False, "note": "too few labelled slides to choose a threshold"}
  reaching = [p for p in points if p.metric >= target]
  chosen = (max(reaching, key=lambda p: (p.coverage, p.threshold)) if reaching
            else max(points, key=lambda p: (p.metric, p.coverage)))
  # Not rounded: a slide exactly at the threshold must stay accepted.
  return {**settings, "threshold": float(chosen.threshold),
          "coverage": round(chosen.coverage, 4),
          "metric_at_threshold": round(chosen.metric, 4), "target_met": bool(reaching)}


def refer(uncertainties, threshold: float) -> np.ndarray:
  """[B] booleans: refer to a pathologist."""
  return np.asarray(uncertainties) > threshold


def describe(settings: Optional[dict]) -> str:
  """One line for people."""
  if not settings:
    return "referral: the model carries no referral threshold"
  if settings.get("metric_at_threshold") is None:
    return f"referral: none ({settings.get('note', 'no threshold')})"
  name = {"kappa": "kappa", "auc": "AUC"}[settings["metric"]]
  reached = ("target met" if settings["target_met"]
             else f"target {settings['target']:g} not reached: best point taken")
  return (f"referral: uncertainty > {settings['threshold']:.3f} is referred; on the valid "
          f"split {settings['coverage']:.0%} of {settings['slides']} slides accepted at "
          f"{name} {settings['metric_at_threshold']:.3f} (target {settings['target']:g}; "
          f"{reached})")
