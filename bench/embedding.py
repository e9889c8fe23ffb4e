"""Embedding throughput: the TileEmbedder's RunInference against the encoder's
own batched forward on the same tiles, and what the bags weigh.

    TF_USE_LEGACY_KERAS=1 .venv/bin/python bench/embedding.py [--slides 6]
        [--encoder resnet50_trunc] [--input-size 224] [--batch 64] [--max-tiles 200]

1. Bags. N synthetic PANDA slides (data.synthetic, --size at level 0, cached
   under --workdir) tiled as the issue's every-tile workload: every tile with
   tissue, 256 px at 2 um/px (level 1), JPEG q90, up to --max-tiles a slide
   (`slides.tiling.tile_slide`, the SlideExampleGen's code); each bag is
   taken --copies times under other ids (more tiles to time, of the same kind).
2. The tile embedding model (encoders/tile_embedding.py: the tile decoder,
   the encoder's pixel scaling, the encoder) saved once from --encoder
   (resnet50_trunc with random weights unless --imagenet-weights: the
   weights do not change the work).
3. Timed, each from the saved model to every tile's embedding, model loading
   included, on the same tiles:
   (a) direct: TensorFlow's loader, then the model's `embed_tiles` on the
       tiles in batches of --batch, one call each: the encoder's own batched
       forward with nothing around it.
   (b) RunInference: the TileEmbedder's Beam stages (the bags read from a
       TFRecord file as the step reads its input; EmbedBags: split the bags into keyed tiles, RunInference with batches of exactly --batch,
       group the embeddings back into bags) under the DirectRunner in
       memory with one worker, as `histopipe run` runs Beam steps; a trivial
       Beam pipeline runs first, untimed, so (b) does not pay Beam's imports.
   Prints tiles/s of each and (b)/(a) (target >= 0.8), the embeddings'
   largest difference between (a) and (b), and the bytes a slide's tile bag
   and its embedding bag take; writes --out (JSON).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from histopipe.bags import bag_features  # noqa: E402
from histopipe.components.tile_embedder.embedding_stages import EmbedBags  # noqa: E402
from histopipe.core.configs import EncoderSpec, ModelConfig, TilingConfig  # noqa: E402
from histopipe.data import synthetic  # noqa: E402
from histopipe.encoders.tile_embedding import (EMBED_SIGNATURE, EMBEDDINGS,  # noqa: E402
                                               TILES_INPUT, save_tile_embedding)
from histopipe.slides.tiling import tile_slide  # noqa: E402

BEAM_ARGS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def tile_bags(args) -> list:
  width, height = (int(v) for v in args.size.split("x"))
  data = os.path.join(args.workdir, f"slides_{args.size}_{args.slides}")
  if not os.path.exists(os.path.join(data, "train.csv")):
    synthetic.write_dataset(data, args.slides, seed=11, level0_size=(width, height))
  tiling = TilingConfig(tiles_per_slide=0, max_tiles=args.max_tiles, tile_size=256,
                        tile_format="jpeg")
  bags = []
  for index, path in enumerate(sorted(glob.glob(os.path.join(data, "train_images", "*")))):
    bag = tile_slide(path, tiling).bag
    for copy in range(args.copies):  # the same slide under another id: more work, same kind
      slide = f"slide{index}-{copy}"
      bags.append(bag_features.serialize_bag(bag, slide, slide, "lab", 0, "0+0"))
  return bags


def _tiles_of(serialized_bag: bytes) -> list:
  return list(tf.train.Example.FromString(serialized_bag).features.feature[
      bag_features.TILES].bytes_list.value)


def direct(model_path: str, tiles: list, batch: int):
  start = time.perf_counter()
  embed = tf.saved_model.load(model_path).signatures[EMBED_SIGNATURE]
  embeddings = [embed(**{TILES_INPUT: tf.constant(tiles[i:i + batch])})[EMBEDDINGS].numpy()
                for i in range(0, len(tiles), batch)]
  return time.perf_counter() - start, np.concatenate(embeddings)


def run_inference(model_path: str, bags: list, batch: int):
  out = tempfile.mkdtemp(prefix="embedding-bench-")
  source = os.path.join(out, "tile_bags.tfrecord")
  with tf.io.TFRecordWriter(source) as writer:  # read as the TileEmbedder reads its input
    for bag in bags:
      writer.write(bag)
  with beam.Pipeline(options=PipelineOptions(BEAM_ARGS)) as warm:  # Beam's imports
    _ = warm | beam.Create([1]) | beam.Map(lambda x: x)
  start = time.perf_counter()
  with beam.Pipeline(options=PipelineOptions(BEAM_ARGS)) as pipeline:
    _ = (pipeline | beam.io.ReadFromTFRecord(source) | EmbedBags(model_path, batch, batch)
         | beam.io.WriteToTFRecord(os.path.join(out, "embedding_bags"), num_shards=1))
  seconds = time.perf_counter() - start
  written = [r.numpy() for r in tf.data.TFRecordDataset(
      glob.glob(os.path.join(out, "embedding_bags*")))]
  return seconds, written


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--slides", type=int, default=6)
  parser.add_argument("--size", default="12288x8192", help="level-0 width x height")
  parser.add_argument("--max-tiles", type=int, default=200)
  parser.add_argument("--copies", type=int, default=12,
                      help="each slide's bag this many times, under other ids (default 12)")
  parser.add_argument("--encoder", default="resnet50_trunc")
  parser.add_argument("--imagenet-weights", default="")
  parser.add_argument("--input-size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--workdir", default="/tmp/histopipe_bench_embedding")
  parser.add_argument("--out", default="embedding_results.json")
  args = parser.parse_args(argv)
  bags = tile_bags(args)
  tiles = [tile for bag in bags for tile in _tiles_of(bag)]
  model = ModelConfig(encoder=args.encoder, input_size=args.input_size,
                      imagenet_weights=args.imagenet_weights,
                      encoder_spec=EncoderSpec(input_size=args.input_size))
  model_path = os.path.join(tempfile.mkdtemp(prefix="embedding-model-"), "model")
  embedding_size = save_tile_embedding(model, model_path)
  print(f"{len(bags)} slides, {len(tiles)} tiles of 256 px (JPEG); {args.encoder} at "
        f"{args.input_size} px, {embedding_size} features; batches of {args.batch}", flush=True)
  direct_s, reference = direct(model_path, tiles, args.batch)
  print(f"(a) direct embed_tiles: {direct_s:.1f} s, {len(tiles) / direct_s:.1f} tiles/s",
        flush=True)
  beam_s, written = run_inference(model_path, bags, args.batch)
  print(f"(b) RunInference (TileEmbedder stages): {beam_s:.1f} s, "
        f"{len(tiles) / beam_s:.1f} tiles/s", flush=True)
  by_id = {tf.train.Example.FromString(b).features.feature[bag_features.IMAGE_ID]
           .bytes_list.value[0].decode(): b for b in written}
  ids = [tf.train.Example.FromString(b).features.feature[bag_features.IMAGE_ID]
         .bytes_list.value[0].decode() for b in bags]
  from_beam = np.concatenate([np.array(tf.train.Example.FromString(by_id[image_id])
                                       .features.feature[bag_features.EMBEDDINGS]
                                       .float_list.value).reshape(-1, embedding_size)
                              for image_id in ids])
  difference = float(np.abs(from_beam - reference).max())
  tile_bytes = [len(b) for b in bags]
  embedding_bytes = [len(by_id[image_id]) for image_id in ids]
  results = {
      "slides": len(bags), "tiles": len(tiles), "encoder": args.encoder,
      "input_size": args.input_size, "embedding_size": embedding_size, "batch": args.batch,
      "direct_tiles_per_s": len(tiles) / direct_s,
      "run_inference_tiles_per_s": len(tiles) / beam_s,
      "ratio": direct_s / beam_s, "largest_difference": difference,
      "tile_bag_bytes_per_slide": float(np.mean(tile_bytes)),
      "embedding_bag_bytes_per_slide": float(np.mean(embedding_bytes)),
      "tiles_per_slide": len(tiles) / len(bags)}
  print(f"RunInference / direct: {results['ratio']:.2f} (target >= 0.8); embeddings' largest "
        f"difference {difference:.2g}")
  print(f"a slide ({results['tiles_per_slide']:.0f} tiles): tile bag "
        f"{results['tile_bag_bytes_per_slide'] / 1e6:.2f} MB, embedding bag "
        f"{results['embedding_bag_bytes_per_slide'] / 1e6:.2f} MB "
        f"({results['embedding_bag_bytes_per_slide'] / results['tile_bag_bytes_per_slide']:.2f}x)")
  with open(args.out, "w") as f:
    json.dump(results, f, indent=2)
  print(f"results: {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
