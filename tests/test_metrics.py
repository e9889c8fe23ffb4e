"""Quadratic weighted kappa as a Keras metric agrees with scikit-learn's."""

import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import cohen_kappa_score

from histopipe.trainer.metrics import QuadraticWeightedKappa, ordinal_grade_from_probabilities


def _one_hot(grades, classes=6):
  return np.eye(classes, dtype=np.float32)[grades]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kappa_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 6, 200)
  predicted = np.clip(labels + rng.integers(-2, 3, 200), 0, 5)
  expected = cohen_kappa_score(labels, predicted, weights="quadratic")

  metric = QuadraticWeightedKappa(num_classes=6)
  for start in range(0, 200, 64):  # batches accumulate
    metric.update_state(labels[start:start + 64, None], _one_hot(predicted[start:start + 64]))
  assert float(metric.result()) == pytest.approx(expected, abs=1e-5)
  metric.reset_state()
  assert float(metric.result()) == 0.0


def test_perfect_and_reversed_predictions():
  labels = np.array([0, 1, 2, 3, 4, 5])
  metric = QuadraticWeightedKappa()
  metric.update_state(labels, _one_hot(labels))
  assert float(metric.result()) == pytest.approx(1.0)
  metric.reset_state()
  metric.update_state(labels, _one_hot(5 - labels))
  assert float(metric.result()) == pytest.approx(-1.0)


def test_grade_from_probabilities_is_the_median_class():
  probabilities = tf.constant([[0.3, 0.3, 0.4, 0, 0, 0],  # P(>=2) = 0.4 -> grade 1
                               [0.05, 0.05, 0.05, 0.05, 0.05, 0.75],
                               [1, 0, 0, 0, 0, 0]])
  assert ordinal_grade_from_probabilities(probabilities).numpy().tolist() == [1, 5, 0]


def test_cancer_auc_is_benign_against_any_grade_like_sklearn():
  from sklearn.metrics import roc_auc_score
  from histopipe.trainer.metrics import CancerAUC
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 6, 300)
  logits = rng.normal(size=(300, 6)) + 2.0 * _one_hot(labels)
  probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  expected = roc_auc_score(labels > 0, 1.0 - probabilities[:, 0])
  metric = CancerAUC(num_thresholds=2000)
  metric.update_state(labels[:, None], probabilities.astype(np.float32))
  assert float(metric.result()) == pytest.approx(expected, abs=2e-3)
  assert CancerAUC.from_config(metric.get_config()).name == "cancer_auc"


def test_grade_accuracy_scores_the_ordinal_grade_not_the_argmax():
  from histopipe.trainer.metrics import GradeAccuracy
  # P = [0.4, 0.05, 0.05, 0.5]: argmax says 3, the median (what `grade` serves) says 2
  # among 4 classes: P(>=1) = 0.6, P(>=2) = 0.55, P(>=3) = 0.5 -> grade 2.
  probabilities = np.array([[0.4, 0.05, 0.05, 0.5], [0.9, 0.05, 0.03, 0.02]], np.float32)
  metric = GradeAccuracy(num_classes=4)
  metric.update_state(np.array([[2], [0]]), probabilities)
  assert float(metric.result()) == 1.0
  argmax = tf.keras.metrics.SparseCategoricalAccuracy()
  argmax.update_state(np.array([[2], [0]]), probabilities)
  assert float(argmax.result()) == 0.5
  assert GradeAccuracy.from_config(metric.get_config()).num_classes == 4
