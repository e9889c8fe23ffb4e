"""Referral of uncertain slides (issue 15, part 3): uncertainty, the coverage
curve and the threshold, against scikit-learn's metrics computed here."""

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from histopipe.core import referral


def test_uncertainty_is_the_mass_off_the_grade_or_the_distance_from_the_threshold():
  probabilities = np.array([[0.9, 0.1, 0, 0, 0, 0], [0.2, 0.3, 0.5, 0, 0, 0]])
  assert referral.uncertainty(probabilities, [0, 2], "isup") == pytest.approx([0.1, 0.5])
  positive = np.array([[0.5], [0.0], [0.75], [1.0]])
  assert referral.uncertainty(positive, [1, 0, 1, 1], "binary") == pytest.approx(
      [1.0, 0.0, 0.5, 0.0])


def _ordinal_predictions(seed: int, count: int = 200):
  """Grades that are right when the model is sure and noisy when it is not."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 6, count)
  sure = rng.uniform(0.3, 1.0, count)
  wrong = rng.uniform(size=count) > sure
  grades = np.where(wrong, rng.integers(0, 6, count), labels)
  probabilities = np.full((count, 6), 0.0)
  probabilities[np.arange(count), grades] = sure
  probabilities += (1 - sure)[:, None] / 6
  return labels, grades, probabilities


def test_the_curve_is_sklearns_kappa_of_the_accepted_slides():
  labels, grades, probabilities = _ordinal_predictions(0)
  uncertainties = 1 - probabilities[np.arange(len(grades)), grades]
  points = referral.coverage_curve(labels, grades, probabilities, "isup")
  assert points[-1].coverage == 1.0
  grades_0_to_5 = list(range(6))
  assert points[-1].metric == pytest.approx(cohen_kappa_score(
      labels, grades, weights="quadratic", labels=grades_0_to_5))
  for point in points[::17]:
    accepted = uncertainties <= point.threshold
    assert point.accepted == accepted.sum()
    expected = cohen_kappa_score(labels[accepted], grades[accepted], weights="quadratic",
                                 labels=grades_0_to_5) if len(set(labels[accepted])) > 1 else None
    assert point.metric == pytest.approx(expected)
  # Referring the uncertain slides helps: the most certain half beats everything.
  half = [p for p in points if p.coverage >= 0.5][0]
  assert half.metric > points[-1].metric + 0.1


def test_the_threshold_is_the_largest_coverage_reaching_the_target():
  labels, grades, probabilities = _ordinal_predictions(1)
  points = [p for p in referral.coverage_curve(labels, grades, probabilities, "isup")
            if p.metric is not None and p.accepted >= referral.MIN_ACCEPTED]
  target = 0.9
  chosen = referral.choose_threshold(labels, grades, probabilities, "isup", target)
  assert chosen["target_met"] and chosen["metric_at_threshold"] >= target
  assert chosen["coverage"] == pytest.approx(max(p.coverage for p in points
                                                 if p.metric >= target), abs=1e-4)
  # Applied to the same slides, the threshold accepts that coverage.
  uncertainties = referral.uncertainty(probabilities, grades, "isup")
  assert (~referral.refer(uncertainties, chosen["threshold"])).mean() == pytest.approx(
      chosen["coverage"], abs=1e-4)
  unreachable = referral.choose_threshold(labels, grades, probabilities, "isup", 1.5)
  assert not unreachable["target_met"]
  assert unreachable["metric_at_threshold"] == pytest.approx(max(p.metric for p in points),
                                                             abs=1e-4)
  assert "not reached" in referral.describe(unreachable)


def test_binary_referral_uses_sklearns_auc():
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 2, 300)
  positive = np.clip(labels * 0.6 + rng.normal(0.2, 0.35, 300), 0, 1)[:, None]
  grades = (positive[:, 0] >= 0.5).astype(int)
  chosen = referral.choose_threshold(labels, grades, positive, "binary", 0.96)
  accepted = ~referral.refer(referral.uncertainty(positive, grades, "binary"),
                             chosen["threshold"])
  assert chosen["metric_at_threshold"] == pytest.approx(
      roc_auc_score(labels[accepted], positive[accepted, 0]), abs=1e-4)
  assert chosen["metric"] == "auc" and chosen["target_met"] and 0 < chosen["coverage"] < 1
  assert roc_auc_score(labels, positive[:, 0]) < 0.96  # all slides would miss the target


def test_kappa_weighs_by_grade_when_a_subset_lacks_grades():
  """Accepted slides often lack some grades: the quadratic weights stay those
  of grades 0-5 (as TFMA's kappa and the report compute them)."""
  labels, grades = np.array([0, 0, 1, 1, 5, 5, 0, 1]), np.array([0, 5, 1, 0, 5, 1, 0, 1])
  assert referral.metric_of(labels, grades, None, "isup") == pytest.approx(
      cohen_kappa_score(labels, grades, weights="quadratic", labels=list(range(6))))
  assert referral.metric_of(labels, grades, None, "isup") != pytest.approx(
      cohen_kappa_score(labels, grades, weights="quadratic"))


def test_too_few_slides_refer_nothing_and_say_so():
  chosen = referral.choose_threshold([1, 1], [1, 1], np.eye(6)[[1, 1]], "isup", 0.8)
  assert chosen["threshold"] == 1.0 and not chosen["target_met"]
  assert "too few" in referral.describe(chosen)
