"""Referral of uncertain slides (issue 15, part 3): uncertainty, the coverage
curve and the threshold, against values worked out by hand on small arrays
and against a sweep computed here, with scikit-learn's metrics, from the
contract in core/referral.py:

* uncertainty: ISUP 1 - P(predicted grade); binary 1 - 2 |P(label 1) - 0.5|;
* a slide is accepted at threshold t when its uncertainty is <= t, referred
  when it is above; coverage = accepted slides / all slides;
* the curve has one point per distinct uncertainty; its metric is
  `cohen_kappa_score(labels, grades, weights="quadratic", labels=range(6))`
  (ISUP) or `roc_auc_score(labels, P(label 1))` (binary) of the accepted
  slides, undefined (None) when they hold one label only;
* the threshold: the largest coverage whose metric reaches the target, among
  points with at least 5 accepted slides (or all of them, when fewer); when
  none reaches it, the point with the best metric.
"""

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from histopipe.core import referral

GRADES_0_TO_5 = list(range(6))
# The fewest accepted slides a chosen point may have (the module docstring's MIN_ACCEPTED).
MIN_ACCEPTED = 5


def _kappa(labels, grades):
  if len(set(labels.tolist())) < 2:
    return None
  return cohen_kappa_score(labels, grades, weights="quadratic", labels=GRADES_0_TO_5)


def _auc(labels, positive):
  if len(set(labels.tolist())) < 2:
    return None
  return roc_auc_score(labels, positive)


def _reference_curve(uncertainties, metric_of_accepted):
  """[(threshold, coverage, accepted, metric)] at each distinct uncertainty,
  computed here from the contract (accepted: uncertainty <= threshold)."""
  curve = []
  for threshold in sorted(set(uncertainties.tolist())):
    accepted = uncertainties <= threshold
    curve.append((threshold, accepted.mean(), int(accepted.sum()),
                  metric_of_accepted(accepted)))
  return curve


def _assert_curve_is(points, expected):
  assert len(points) == len(expected)
  for point, (threshold, coverage, accepted, metric) in zip(points, expected):
    assert point.threshold == pytest.approx(threshold)
    assert point.coverage == pytest.approx(coverage)
    assert point.accepted == accepted
    if metric is None:
      assert point.metric is None, point
    else:
      assert point.metric == pytest.approx(metric), point


def _expected_choice(curve, target, slides):
  """The point the contract chooses: (threshold, coverage, metric, target met)."""
  eligible = [p for p in curve if p[2] >= min(MIN_ACCEPTED, slides) and p[3] is not None]
  reaching = [p for p in eligible if p[3] >= target]
  if reaching:
    chosen = max(reaching, key=lambda p: p[1])
  else:
    chosen = max(eligible, key=lambda p: (p[3], p[1]))
  return chosen[0], chosen[1], chosen[3], bool(reaching)


def test_uncertainty_is_the_mass_off_the_grade_or_the_distance_from_the_threshold():
  probabilities = np.array([[0.9, 0.1, 0, 0, 0, 0], [0.2, 0.3, 0.5, 0, 0, 0]])
  assert referral.uncertainty(probabilities, [0, 2], "isup") == pytest.approx([0.1, 0.5])
  # The mass off the *predicted* grade, even where it is not the most likely one.
  assert referral.uncertainty(probabilities, [1, 0], "isup") == pytest.approx([0.9, 0.8])
  positive = np.array([[0.5], [0.0], [0.75], [1.0], [0.375]])
  assert referral.uncertainty(positive, [1, 0, 1, 1, 0], "binary") == pytest.approx(
      [1.0, 0.0, 0.5, 0.0, 0.75])
  assert referral.uncertainty(positive[:, 0], [1, 0, 1, 1, 0], "binary") == pytest.approx(
      [1.0, 0.0, 0.5, 0.0, 0.75])


def test_a_slide_at_the_threshold_is_accepted_one_above_it_referred():
  assert referral.refer([0.1, 0.3, 0.30001, 0.6], 0.3).tolist() == [False, False, True, True]
  assert referral.refer([0.0, 1.0], 1.0).tolist() == [False, False]


# Four slides worked out by hand. Uncertainties 0.1, 0.1, 0.3, 0.6.
#   A: grade 0 (P 0.9), label 0    B: grade 5 (P 0.9), label 5
#   C: grade 0 (P 0.7), label 5    D: grade 2 (P 0.4), label 2
_HAND_PROBABILITIES = np.array([[0.9, 0.1, 0, 0, 0, 0], [0, 0, 0, 0, 0.1, 0.9],
                                [0.7, 0, 0, 0, 0, 0.3], [0.2, 0.2, 0.4, 0.2, 0, 0]])
_HAND_GRADES = np.array([0, 5, 0, 2])
_HAND_LABELS = np.array([0, 5, 5, 2])


def test_the_curve_of_four_slides_worked_out_by_hand():
  """Quadratic weights w = (i - j)^2 / 25 over grades 0-5, kappa = 1 - sum(w O) / sum(w E)
  with E the outer product of the marginals over N:
  * t = 0.1, A and B: both right, kappa 1;
  * t = 0.3, A B C: sum(w O) = 1 (C: 5 vs 0); labels {0: 1, 5: 2}, grades {0: 2, 5: 1},
    sum(w E) = (1 * 1 + 2 * 2) / 3 = 5/3, kappa = 1 - 3/5 = 0.4;
  * t = 0.6, all four: sum(w O) = 1; labels {0: 1, 2: 1, 5: 2}, grades {0: 2, 2: 1, 5: 1},
    sum(w E) = (29 + 17 + 118) / 25 / 4 = 41/25, kappa = 1 - 25/41 = 16/41."""
  points = referral.coverage_curve(_HAND_LABELS, _HAND_GRADES, _HAND_PROBABILITIES, "isup")
  _assert_curve_is(points, [(0.1, 0.5, 2, 1.0), (0.3, 0.75, 3, 0.4), (0.6, 1.0, 4, 16 / 41)])
  # The hand values are sklearn's too.
  assert cohen_kappa_score([0, 5, 5], [0, 5, 0], weights="quadratic",
                           labels=GRADES_0_TO_5) == pytest.approx(0.4)
  assert cohen_kappa_score(_HAND_LABELS, _HAND_GRADES, weights="quadratic",
                           labels=GRADES_0_TO_5) == pytest.approx(16 / 41)
  # Four slides are fewer than five: only the point that accepts them all may be chosen.
  chosen = referral.choose_threshold(_HAND_LABELS, _HAND_GRADES, _HAND_PROBABILITIES,
                                     "isup", 0.3)
  assert chosen["threshold"] == pytest.approx(0.6) and chosen["coverage"] == 1.0
  assert chosen["metric_at_threshold"] == round(16 / 41, 4) and chosen["target_met"]


def test_the_binary_curve_of_five_slides_worked_out_by_hand():
  """P(label 1) 0, 1, 0.75, 0.375, 0.5 with labels 0, 1, 0, 1, 1: uncertainties
  0, 0, 0.5, 0.75, 1. AUC = share of (positive, negative) pairs ranked right:
  {B} vs {A}: 1; {B} vs {A, C}: 1; {B, D} vs {A, C}: 3/4 (D 0.375 < C 0.75);
  {B, D, E} vs {A, C}: 4/6 (E 0.5 beats A only)."""
  positive = np.array([[0.0], [1.0], [0.75], [0.375], [0.5]])
  labels, grades = np.array([0, 1, 0, 1, 1]), np.array([0, 1, 1, 0, 1])
  points = referral.coverage_curve(labels, grades, positive, "binary")
  _assert_curve_is(points, [(0.0, 0.4, 2, 1.0), (0.5, 0.6, 3, 1.0), (0.75, 0.8, 4, 0.75),
                            (1.0, 1.0, 5, 4 / 6)])


def test_a_threshold_chosen_by_hand():
  """Five slides right and sure (uncertainty 0.1), one wrong and unsure (0.5):
  accepting the five gives kappa 1 at coverage 5/6."""
  grades = np.array([0, 1, 3, 5, 2, 4])
  labels = np.array([0, 1, 3, 5, 2, 0])
  probabilities = np.zeros((6, 6))
  probabilities[np.arange(5), grades[:5]] = 0.9
  probabilities[np.arange(5), (grades[:5] + 1) % 6] = 0.1
  probabilities[5] = [0.3, 0, 0, 0, 0.5, 0.2]
  chosen = referral.choose_threshold(labels, grades, probabilities, "isup", 0.95)
  assert chosen["threshold"] == pytest.approx(0.1)
  assert chosen["coverage"] == round(5 / 6, 4) and chosen["metric_at_threshold"] == 1.0
  assert chosen["target_met"] and chosen["metric"] == "kappa" and chosen["slides"] == 6
  assert chosen["uncertainty"] == "1 - P(predicted grade)"
  # The five sure slides sit exactly at the threshold: accepted, the sixth referred.
  uncertainties = 1 - probabilities[np.arange(6), grades]  # 1 - 0.9 (in floating point) and 0.5
  assert referral.refer(uncertainties, chosen["threshold"]).tolist() == [False] * 5 + [True]
  # A target no point reaches: the best point (kappa 1, the five) is taken, and said so.
  unreachable = referral.choose_threshold(labels, grades, probabilities, "isup", 1.5)
  assert not unreachable["target_met"] and unreachable["threshold"] == pytest.approx(0.1)
  assert unreachable["metric_at_threshold"] == 1.0
  # All six: the target 0.9 is above their kappa.
  assert cohen_kappa_score(labels, grades, weights="quadratic", labels=GRADES_0_TO_5) < 0.9


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


def _isup_reference(labels, grades, probabilities):
  uncertainties = 1 - probabilities[np.arange(len(grades)), grades]
  return uncertainties, _reference_curve(
      uncertainties, lambda accepted: _kappa(labels[accepted], grades[accepted]))


def test_the_curve_is_sklearns_kappa_of_the_accepted_slides():
  labels, grades, probabilities = _ordinal_predictions(0)
  _, expected = _isup_reference(labels, grades, probabilities)
  points = referral.coverage_curve(labels, grades, probabilities, "isup")
  _assert_curve_is(points, expected)
  assert expected[-1][1] == 1.0 and expected[-1][3] == pytest.approx(cohen_kappa_score(
      labels, grades, weights="quadratic", labels=GRADES_0_TO_5))
  # Referring the uncertain slides helps: the most certain half beats everything.
  half = [p for p in expected if p[1] >= 0.5][0]
  assert half[3] > expected[-1][3] + 0.1


def test_the_threshold_is_the_largest_coverage_reaching_the_target():
  labels, grades, probabilities = _ordinal_predictions(1)
  uncertainties, curve = _isup_reference(labels, grades, probabilities)
  target = 0.9
  threshold, coverage, metric, met = _expected_choice(curve, target, len(labels))
  assert met and 0 < coverage < 1
  chosen = referral.choose_threshold(labels, grades, probabilities, "isup", target)
  assert chosen["target_met"] and chosen["metric_at_threshold"] >= target
  assert chosen["threshold"] == pytest.approx(threshold)
  assert chosen["coverage"] == pytest.approx(coverage, abs=1e-4)
  assert chosen["metric_at_threshold"] == pytest.approx(metric, abs=1e-4)
  # Applied to the same slides, the threshold accepts that coverage.
  assert (uncertainties <= chosen["threshold"]).mean() == pytest.approx(coverage)
  np.testing.assert_array_equal(referral.refer(uncertainties, chosen["threshold"]),
                                uncertainties > chosen["threshold"])
  unreachable = referral.choose_threshold(labels, grades, probabilities, "isup", 1.5)
  threshold, coverage, metric, met = _expected_choice(curve, 1.5, len(labels))
  assert not met and not unreachable["target_met"]
  assert unreachable["metric_at_threshold"] == pytest.approx(metric, abs=1e-4)
  assert unreachable["coverage"] == pytest.approx(coverage, abs=1e-4)
  assert unreachable["threshold"] == pytest.approx(threshold)
  assert "not reached" in referral.describe(unreachable)


def test_binary_referral_uses_sklearns_auc():
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 2, 300)
  positive = np.clip(labels * 0.6 + rng.normal(0.2, 0.35, 300), 0, 1)[:, None]
  grades = (positive[:, 0] >= 0.5).astype(int)
  uncertainties = 1 - 2 * np.abs(positive[:, 0] - 0.5)
  curve = _reference_curve(uncertainties,
                           lambda accepted: _auc(labels[accepted], positive[accepted, 0]))
  _assert_curve_is(referral.coverage_curve(labels, grades, positive, "binary"), curve)
  threshold, coverage, metric, met = _expected_choice(curve, 0.96, len(labels))
  chosen = referral.choose_threshold(labels, grades, positive, "binary", 0.96)
  assert chosen["threshold"] == pytest.approx(threshold)
  assert chosen["coverage"] == pytest.approx(coverage, abs=1e-4)
  accepted = uncertainties <= chosen["threshold"]
  assert chosen["metric_at_threshold"] == pytest.approx(
      roc_auc_score(labels[accepted], positive[accepted, 0]), abs=1e-4)
  assert chosen["metric"] == "auc" and chosen["target_met"] and met and 0 < coverage < 1
  assert chosen["uncertainty"] == "1 - 2|P(positive) - 0.5|"
  assert roc_auc_score(labels, positive[:, 0]) < 0.96  # all slides would miss the target


def test_kappa_weighs_by_grade_when_a_subset_lacks_grades():
  """Accepted slides often lack some grades: the quadratic weights stay those
  of grades 0-5 (as TFMA's kappa and the report compute them)."""
  labels, grades = np.array([0, 0, 1, 1, 5, 5, 0, 1]), np.array([0, 5, 1, 0, 5, 1, 0, 1])
  assert referral.metric_of(labels, grades, None, "isup") == pytest.approx(
      cohen_kappa_score(labels, grades, weights="quadratic", labels=GRADES_0_TO_5))
  assert referral.metric_of(labels, grades, None, "isup") != pytest.approx(
      cohen_kappa_score(labels, grades, weights="quadratic"))
  # By hand, with the weights of grades 0-5, (i - j)^2 / 25: the errors 0->5,
  # 1->0 and 5->1 weigh 1, 1/25 and 16/25: sum(w O) = 42/25. Labels and grades
  # both {0: 3, 1: 3, 5: 2}: sum(w E) = 2 * (3 * 3 * 1/25 + 3 * 2 * 1 + 3 * 2 * 16/25) / 8
  # = 51/20; kappa = 1 - (42/25) / (51/20) = 29/85.
  assert referral.metric_of(labels, grades, None, "isup") == pytest.approx(29 / 85)


def test_too_few_slides_refer_nothing_and_say_so():
  chosen = referral.choose_threshold([1, 1], [1, 1], np.eye(6)[[1, 1]], "isup", 0.8)
  assert chosen["threshold"] == 1.0 and not chosen["target_met"]
  assert chosen["metric_at_threshold"] is None
  assert "too few" in referral.describe(chosen)
