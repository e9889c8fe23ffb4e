"""TileEmbedder: a frozen encoder's embeddings of every tile, computed once.

With `model.encoder` set, the step after the SlideExampleGen. Beam stages
(embedding_stages.py): SplitTiles (each bag's real tiles keyed by slide and
index, the rest of the bag aside) -> EmbedTiles (Beam's RunInference with the
tile embedding model, model_handler.py, batched across slides) ->
JoinEmbeddings (one embedding bag a slide: `embeddings` [n x D] with its
tiles' coordinates, labels, provider, patient and image statistics) -> one
TFRecord file set per split, the same splits as the tile bags.

The model the workers run is saved once inside the output
(`tile_embedding_model/`, encoders/tile_embedding.py): model.encoder behind
the decoder every histopipe model uses, so the served model's `embed_tiles`
computes the very embeddings the head was trained on. The slide report and
bag statistics tables are copied beside the embedding bags: DriftCheck, the
Trainer's training statistics and the model card read them there.

Its cache key: the tile bags, the encoder's settings and digest (its bytes),
the batch sizes and this code. Training settings do not re-embed.
"""
