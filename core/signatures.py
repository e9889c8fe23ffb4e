"""The exported model's interface, named once.

The trainer writes these signatures and outputs into the SavedModel; the
serving client, the development server, batch scoring and the reports read
them. Neither side imports the other: both import this module.
"""

SERVING_DEFAULT = "serving_default"  # serialized tf.Example bags in
PREDICT_TILES = "predict_tiles"  # the encoded tiles of one bag in
TRANSFORM_FEATURES = "transform_features"  # for the Evaluator
# A model on a frozen encoder (model.encoder) has these too, so that a client
# can send a slide's thousands of tiles in chunks:
EMBED_TILES = "embed_tiles"  # encoded tiles [n] in, their EMBEDDINGS [n, D] out
PREDICT_EMBEDDINGS = "predict_embeddings"  # one bag's EMBEDDINGS [n, D] in, the outputs
EMBEDDING_BAGS = "embedding_bags"  # serialized embedding bags in (the Evaluator's)
EMBEDDINGS = "embeddings"  # float [n, D]
# The model's contract (core/model_contract) as one JSON string. It takes one
# input it ignores because TF Serving's REST API refuses a signature without
# inputs ("Failed to get input map", tensorflow/serving#1676).
METADATA = "metadata"
METADATA_REQUEST = "request"  # DT_STRING [None], any value, ignored
CONTRACT = "contract"  # DT_STRING []: ModelContract.to_json()

# Inputs.
EXAMPLES = "examples"  # serialized tf.Example bags, DT_STRING [B]
TILES = "tiles"  # encoded PNG/JPEG tiles of one bag, DT_STRING [N]

# Outputs of serving_default and predict_tiles.
GRADE = "grade"  # int64 [B]: ISUP grade (ordinal median), or the 0/1 label
PROBABILITIES = "probabilities"  # float [B, 6], or [B, 1] = P(label 1) for binary tasks
ATTENTION = "attention"  # float [B, N]: MIL attention per tile of the bag
OUTPUTS = (GRADE, PROBABILITIES, ATTENTION)
