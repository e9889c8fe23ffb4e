"""The Evaluator's metrics: quadratic weighted kappa (the PANDA metric), the
ROC AUC of cancer vs benign, and the accuracy of the served grade, as tf_keras
metrics, and the names the Evaluator reports them under.

TFMA has no kappa; TFMA accepts any Keras metric by module and class name, so
the same class serves training (early stopping) and the Evaluator's gate.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras


# Names in the Evaluator's results (the gate, the run summary and the report read them).
KAPPA = "kappa"
AUC = "auc"  # binary tasks: P(label 1)
CANCER_AUC = "cancer_auc"  # ISUP: grade >= 1 vs benign
ACCURACY = "accuracy"  # of the served grade (ISUP), or of the 0/1 label


def ordinal_grade_from_probabilities(probabilities: tf.Tensor) -> tf.Tensor:
  """Grade = number of k >= 1 with P(grade >= k) > 0.5 (the median class).

  For the ordinal model this equals counting cumulative sigmoids above 0.5.
  """
  at_least = tf.cumsum(probabilities, axis=-1, reverse=True)[..., 1:]
  return tf.reduce_sum(tf.cast(at_least > 0.5, tf.int32), axis=-1)


@keras.utils.register_keras_serializable(package="histopipe")
class QuadraticWeightedKappa(keras.metrics.Metric):
  """Kappa between integer labels and the ordinal grade of class probabilities."""

  def __init__(self, num_classes: int = 6, name: str = KAPPA, **kwargs):
    super().__init__(name=name, **kwargs)
    self.num_classes = num_classes
    self.confusion = self.add_weight(
        name="confusion", shape=(num_classes, num_classes), initializer="zeros",
        dtype=tf.float64)

  def update_state(self, y_true, y_pred, sample_weight=None):
    labels = tf.reshape(tf.cast(y_true, tf.int32), [-1])
    predicted = tf.reshape(ordinal_grade_from_probabilities(
        tf.reshape(y_pred, [-1, self.num_classes])), [-1])
    weights = None
    if sample_weight is not None:
      weights = tf.reshape(tf.cast(sample_weight, tf.float64), [-1])
    batch = tf.math.confusion_matrix(labels, predicted, self.num_classes,
                                     weights=weights, dtype=tf.float64)
    self.confusion.assign_add(batch)

  def result(self):
    confusion = self.confusion
    classes = self.num_classes
    total = tf.reduce_sum(confusion)
    index = tf.range(classes, dtype=tf.float64)
    weights = tf.square(index[:, None] - index[None, :]) / float((classes - 1) ** 2)
    expected = tf.tensordot(tf.reduce_sum(confusion, 1), tf.reduce_sum(confusion, 0),
                            axes=0) / tf.maximum(total, 1.0)
    observed_cost = tf.reduce_sum(weights * confusion)
    expected_cost = tf.reduce_sum(weights * expected)
    # Undefined when labels and predictions are all one class: report 0.
    kappa = tf.where(expected_cost > 0,
                     1.0 - observed_cost / tf.maximum(expected_cost, 1e-12),
                     tf.constant(0.0, tf.float64))
    return tf.cast(kappa, tf.float32)

  def reset_state(self):
    self.confusion.assign(tf.zeros_like(self.confusion))

  def get_config(self):
    return {**super().get_config(), "num_classes": self.num_classes}


@keras.utils.register_keras_serializable(package="histopipe")
class CancerAUC(keras.metrics.AUC):
  """ROC AUC of "cancer vs benign" (ISUP grade >= 1) for the ISUP model:
  label > 0, scored by 1 - P(grade 0) from the class probabilities."""

  def __init__(self, name: str = CANCER_AUC, **kwargs):
    kwargs.pop("curve", None)  # always ROC
    super().__init__(name=name, curve="ROC", **kwargs)

  def update_state(self, y_true, y_pred, sample_weight=None):
    cancer = tf.cast(tf.reshape(y_true, [-1]) > 0, tf.float32)
    p_cancer = 1.0 - tf.reshape(y_pred, [tf.shape(cancer)[0], -1])[:, 0]
    return super().update_state(cancer, p_cancer, sample_weight)


@keras.utils.register_keras_serializable(package="histopipe")
class GradeAccuracy(keras.metrics.Mean):
  """Share of bags whose served grade (the ordinal median, as the model's
  `grade` output and the kappa metric use) equals the label. Not the argmax of
  the class probabilities, which can differ for an ordinal model."""

  def __init__(self, num_classes: int = 6, name: str = ACCURACY, **kwargs):
    super().__init__(name=name, **kwargs)
    self.num_classes = num_classes

  def update_state(self, y_true, y_pred, sample_weight=None):
    labels = tf.reshape(tf.cast(y_true, tf.int32), [-1])
    grades = ordinal_grade_from_probabilities(tf.reshape(y_pred, [-1, self.num_classes]))
    return super().update_state(tf.cast(tf.equal(labels, grades), tf.float32), sample_weight)

  def get_config(self):
    return {**super().get_config(), "num_classes": self.num_classes}
