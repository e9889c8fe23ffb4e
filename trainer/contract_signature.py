"""The `metadata` signature every export carries: the model contract, for
clients of a Predict server, which serves no model files
(core/signatures.py: METADATA)."""

from __future__ import annotations

import tensorflow as tf

from histopipe.core import signatures
from histopipe.core.model_contract import ModelContract


def metadata_signature(contract: ModelContract):
  contract_json = contract.to_json()

  @tf.function(input_signature=[
      tf.TensorSpec([None], tf.string, name=signatures.METADATA_REQUEST)])
  def metadata(request):
    del request  # see signatures.METADATA
    return {signatures.CONTRACT: tf.constant(contract_json)}

  return metadata
