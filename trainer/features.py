"""Names the trainer module uses, derived from the bag's feature keys."""

from histopipe.bags import bag_features
from histopipe.core.signatures import ATTENTION, GRADE, PROBABILITIES  # noqa: F401 (model outputs)

LABEL_KEY = bag_features.LABEL
# Raw features the model needs at serving time; everything else in a bag is
# metadata that serving clients need not send.
MODEL_INPUT_KEYS = (bag_features.TILES, bag_features.TILE_VALID)


def transformed_name(key: str) -> str:
  return key + "_xf"


TILES_XF = transformed_name(bag_features.TILES)  # float [N, size, size, 3], normalized
TILE_VALID_XF = transformed_name(bag_features.TILE_VALID)  # float [N], 1 real / 0 pad
# The normalization's per-channel statistics, repeated per bag, so training
# augmentation can work on pixels and normalize again.
CHANNEL_MEAN_XF = "channel_mean_xf"  # float [3]
CHANNEL_STD_XF = "channel_std_xf"  # float [3]
# TFT vocabulary asset of the training split's labels with their counts.
LABEL_COUNTS_VOCABULARY = "label_counts"

# The training-only output (the serving outputs are named in core/signatures.py).
ORDINAL_LOGITS = "ordinal_logits"
