"""Training input throughput: the Trainer's tf.data pipeline vs the model's own
step rate vs an `ImageDataGenerator` loader of the same tiles.

Run from the repository root:

    TF_USE_LEGACY_KERAS=1 .venv/bin/python bench/train_input.py [--slides N]
        [--input-batches B] [--model-steps S] [--workdir DIR]

What it does, in one process, with the `full` preset (bags of 36 JPEG tiles of
256 px, resized to 224 px, 4 bags a batch, ResNet50 + gated attention):

1. Bags. Tiles `--slides` synthetic PANDA-size slides (the ones
   bench/tiling.py draws and caches, 25,000 x 15,000 px) with `run_tile_job`,
   and runs the Transform's analysis (`trainer.preprocessing.preprocessing_fn`
   through `tft_beam.AnalyzeDataset`, as the Transform component does) over
   them, giving the same transform graph the Trainer loads.
2. Timings, each measured once after a warm-up, wall clock:
   (i)   the Trainer's input pipeline, `trainer.inputs.model_batches` on the
         bags (repeated, shuffled): parse, TFT layer (decode, resize to 224,
         normalize), training augmentation (flips, rot90, colour and HED
         stain jitter, tile order), class weights, parallel map, prefetch;
   (i0)  the same without augmentation (the eval path);
   (ii)  the model's own training step: `train_on_batch` of the `full`
         model on one batch already in memory, so no input work at all;
   (iii) the loader of the source notebooks: the same tiles, one JPEG file
         each (the very bytes of the bags) in per-grade folders, through
         `ImageDataGenerator(rescale=1/255, horizontal_flip=True,
         vertical_flip=True).flow_from_directory(target_size=(224, 224))`
         in batches of as many tiles as (i) delivers per batch: flips only,
         the least work such a loader does;
   (iv)  the same with the augmentation closest to (i)'s that
         `ImageDataGenerator` offers: also `rotation_range=90` (any angle:
         it has no exact quarter turns), `brightness_range=(0.92, 1.08)` and
         `channel_shift_range=20` (it has no stain or hue jitter).
   Rates are tiles (images) per second.
3. Prints a Markdown table with the ratios (i)/(ii) (the input must not be
   the bottleneck: >= 3), (i)/(iii), (i)/(iv) and (i0)/(iii) (the target is
   >= 3 against the notebooks' loader), and writes it, with the raw numbers,
   to `WORKDIR/train_input_results.json`.

On this CPU machine (ii) is a CPU training step; a GPU trains ResNet50 much
faster, so docs/benchmarks.md also states the input rate per CPU core, to size a GPU
node's cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # the project needs Keras 2
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tensorflow_transform.beam as tft_beam  # noqa: E402
import tf_keras as keras  # noqa: E402
from tensorflow_transform.tf_metadata import dataset_metadata  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiling as tiling_bench  # noqa: E402  (bench/tiling.py: the cached slides)

from histopipe.bags import bag_features  # noqa: E402
from histopipe.beam.tile_job import bag_files, run_tile_job  # noqa: E402
from histopipe.core.configs import PipelineConfig, full_config  # noqa: E402
from histopipe.trainer import features  # noqa: E402
from histopipe.trainer.model import build_mil_model  # noqa: E402
from histopipe.trainer.preprocessing import preprocessing_fn  # noqa: E402
from histopipe.trainer.fit import compile_model  # noqa: E402
from histopipe.trainer.inputs import model_batches  # noqa: E402

DEFAULT_WORKDIR = os.path.join(tempfile.gettempdir(), "histopipe-bench", "train_input")
RESULTS_FILE = "train_input_results.json"


@dataclasses.dataclass
class Rate:
  key: str
  method: str
  seconds: float
  images: int
  notes: str = ""

  @property
  def images_per_s(self) -> float:
    return self.images / self.seconds

  def to_dict(self) -> Dict[str, object]:
    return {**dataclasses.asdict(self), "images_per_s": self.images_per_s}


def raw_feature_spec(tiles_per_slide: int) -> Dict[str, tf.io.FixedLenFeature]:
  """The bag features the Transform reads (as SchemaGen infers them)."""
  return {bag_features.TILES: tf.io.FixedLenFeature([tiles_per_slide], tf.string),
          bag_features.TILE_VALID: tf.io.FixedLenFeature([tiles_per_slide], tf.int64),
          bag_features.LABEL: tf.io.FixedLenFeature([1], tf.int64)}


def read_bags(files: Sequence[str], compression: str,
              spec: Dict[str, tf.io.FixedLenFeature]) -> List[Dict[str, np.ndarray]]:
  return [{k: v.numpy() for k, v in tf.io.parse_single_example(record, spec).items()}
          for record in tf.data.TFRecordDataset(list(files), compression_type=compression)]


def analyze(bags: List[Dict[str, np.ndarray]], spec, config: PipelineConfig,
            out_dir: str) -> tft.TFTransformOutput:
  """The Transform's analysis over `bags`: the transform graph the Trainer loads."""
  shutil.rmtree(out_dir, ignore_errors=True)
  custom_config = {"input_size": config.model.input_size}
  metadata = dataset_metadata.DatasetMetadata.from_feature_spec(spec)
  with beam.Pipeline() as pipeline:
    with tft_beam.Context(temp_dir=os.path.join(out_dir, "tmp")):
      raw = pipeline | beam.Create(bags, reshuffle=False)
      transform_fn = (raw, metadata) | tft_beam.AnalyzeDataset(
          lambda inputs: preprocessing_fn(inputs, custom_config))
      _ = transform_fn | tft_beam.WriteTransformFn(out_dir)
  return tft.TFTransformOutput(out_dir)


def raw_batches(files: Sequence[str], compression: str, spec, batch_size: int,
                seed: int) -> tf.data.Dataset:
  """Serialized bags -> parsed raw batches, as the TFX data accessor yields them."""
  records = tf.data.TFRecordDataset(list(files), compression_type=compression)
  return (records.cache().repeat().shuffle(64, seed=seed).batch(batch_size, drop_remainder=True)
          .map(lambda serialized: tf.io.parse_example(serialized, spec),
               num_parallel_calls=tf.data.AUTOTUNE))


def time_batches(dataset: tf.data.Dataset, batches: int, warm_up: int,
                 images_per_batch: int) -> (float, int):
  iterator = iter(dataset)
  for _ in range(warm_up):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return time.perf_counter() - start, batches * images_per_batch


def time_model_steps(config: PipelineConfig, batch, steps: int) -> (float, int):
  model = build_mil_model(config.model, config.tiling.tiles_per_slide, config.num_classes)
  compile_model(model, config)
  inputs, targets = batch[0], batch[1]
  model.train_on_batch(inputs, targets)  # warm-up: builds and traces the step
  start = time.perf_counter()
  for _ in range(steps):
    model.train_on_batch(inputs, targets)
  images = steps * int(np.prod(inputs[features.TILES_XF].shape[:2]))
  return time.perf_counter() - start, images


def write_tile_files(bags: List[Dict[str, np.ndarray]], out_dir: str) -> int:
  """Each valid tile of the bags as its own file, `OUT/<grade>/<bag>_<k>.jpg`."""
  shutil.rmtree(out_dir, ignore_errors=True)
  count = 0
  for index, bag in enumerate(bags):
    grade_dir = os.path.join(out_dir, str(int(bag[bag_features.LABEL][0])))
    os.makedirs(grade_dir, exist_ok=True)
    for k, (data, valid) in enumerate(zip(bag[bag_features.TILES],
                                          bag[bag_features.TILE_VALID])):
      if valid:
        with open(os.path.join(grade_dir, f"{index:04d}_{k:02d}.jpg"), "wb") as f:
          f.write(data)
        count += 1
  return count


NOTEBOOK_AUGMENTATION = {"horizontal_flip": True, "vertical_flip": True}
CLOSEST_AUGMENTATION = {**NOTEBOOK_AUGMENTATION, "rotation_range": 90,
                        "brightness_range": (0.92, 1.08), "channel_shift_range": 20.0}


def time_image_data_generator(tile_dir: str, size: int, batch_size: int, batches: int,
                              seed: int, augmentation: Dict[str, object]) -> (float, int):
  generator = keras.preprocessing.image.ImageDataGenerator(rescale=1 / 255, **augmentation)
  flow = generator.flow_from_directory(tile_dir, target_size=(size, size),
                                       batch_size=batch_size, class_mode="sparse",
                                       shuffle=True, seed=seed)
  next(flow)  # warm-up
  start = time.perf_counter()
  images = 0
  for _ in range(batches):
    x, _ = next(flow)
    images += len(x)
  return time.perf_counter() - start, images


def markdown_table(rates: Dict[str, Rate], ratios: Dict[str, float],
                   context: Dict[str, object]) -> str:
  lines = [
      f"Training input on {context['slides']} bags of {context['tiles_per_slide']} JPEG tiles "
      f"({context['tile_size']} px, resized to {context['input_size']}), batches of "
      f"{context['batch_size']} bags, {context['cpus']} CPU cores, one run each:",
      "",
      "| | method | time (s) | images | images/s |",
      "| --- | --- | ---: | ---: | ---: |",
  ]
  for key, r in rates.items():
    lines.append(f"| ({key}) | {r.method} | {r.seconds:.2f} | {r.images} | "
                 f"{r.images_per_s:.0f} |")
  lines += ["", "| ratio | value |", "| --- | ---: |"]
  lines += [f"| {name} | {value:.1f} |" for name, value in ratios.items()]
  return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--slides", type=int, default=12, help="slides to tile (default 12)")
  parser.add_argument("--input-batches", type=int, default=30,
                      help="batches timed for (i), (i0) and (iii) (default 30)")
  parser.add_argument("--model-steps", type=int, default=3,
                      help="training steps timed for (ii) (default 3)")
  parser.add_argument("--workdir", default=DEFAULT_WORKDIR)
  parser.add_argument("--slide-workdir", default=tiling_bench.DEFAULT_WORKDIR,
                      help="where bench/tiling.py caches its slides")
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
  os.makedirs(args.workdir, exist_ok=True)
  config = full_config()
  tiles_per_slide = config.tiling.tiles_per_slide
  images_per_batch = config.training.batch_size * tiles_per_slide

  log(f"tiling {args.slides} PANDA-size slides ...")
  slides = tiling_bench.cached_slides(args.slide_workdir, args.slides, args.seed, 25000, 15000,
                                      log)
  data_dir = tiling_bench.make_data_dir(args.workdir, slides)
  bags_dir = os.path.join(args.workdir, "bags")
  shutil.rmtree(bags_dir, ignore_errors=True)
  run_tile_job(data_dir, bags_dir, config, previews=False, progress=False,
               beam_pipeline_args=("--direct_running_mode=in_memory",))
  files, compression = bag_files(bags_dir)
  spec = raw_feature_spec(tiles_per_slide)
  bags = read_bags(files, compression, spec)
  log("Transform analysis (tft_beam.AnalyzeDataset) ...")
  tf_transform_output = analyze(bags, spec, config, os.path.join(args.workdir, "transform"))

  rates: Dict[str, Rate] = {}
  warm_up = 3
  for key, training, method in (
      ("i", True, "Trainer input pipeline (`model_batches`, training: augmentation on)"),
      ("i0", False, "the same, eval path (no augmentation)")):
    log(f"({key}) {method}")
    dataset = model_batches(raw_batches(files, compression, spec, config.training.batch_size,
                                        args.seed),
                            tf_transform_output, config, training=training)
    seconds, images = time_batches(dataset, args.input_batches, warm_up, images_per_batch)
    rates[key] = Rate(key, method, seconds, images)

  log("(ii) model training step, batch in memory")
  batch = next(iter(model_batches(
      raw_batches(files, compression, spec, config.training.batch_size, args.seed),
      tf_transform_output, config, training=True)))
  seconds, images = time_model_steps(config, batch, args.model_steps)
  rates["ii"] = Rate("ii", f"model step alone (`train_on_batch`, {config.model.backbone}, "
                     "all layers trainable)", seconds, images)

  log("(iii), (iv) ImageDataGenerator.flow_from_directory on the same tiles")
  tile_dir = os.path.join(args.workdir, "tile_files")
  tile_files = write_tile_files(bags, tile_dir)
  for key, augmentation, method in (
      ("iii", NOTEBOOK_AUGMENTATION, "`ImageDataGenerator(rescale, flips).flow_from_directory`"),
      ("iv", CLOSEST_AUGMENTATION, "the same, also rotation, brightness, channel shift")):
    seconds, images = time_image_data_generator(tile_dir, config.model.input_size,
                                                images_per_batch, args.input_batches, args.seed,
                                                augmentation)
    rates[key] = Rate(key, method, seconds, images,
                      notes=f"{tile_files} tile files; {augmentation}")

  ratios = {"(i)/(ii)": rates["i"].images_per_s / rates["ii"].images_per_s,
            "(i)/(iii)": rates["i"].images_per_s / rates["iii"].images_per_s,
            "(i)/(iv)": rates["i"].images_per_s / rates["iv"].images_per_s,
            "(i0)/(iii)": rates["i0"].images_per_s / rates["iii"].images_per_s}
  context = {"slides": len(bags), "tiles_per_slide": tiles_per_slide,
             "tile_size": config.tiling.tile_size, "input_size": config.model.input_size,
             "batch_size": config.training.batch_size, "cpus": os.cpu_count()}
  table = markdown_table(rates, ratios, context)
  report = {"context": context, "rates": {k: r.to_dict() for k, r in rates.items()},
            "ratios": ratios, "markdown": table,
            "environment": {"python": platform.python_version(), "tensorflow": tf.__version__,
                            "tf_keras": keras.__version__, "tft": tft.__version__}}
  results_path = os.path.join(args.workdir, RESULTS_FILE)
  with open(results_path, "w") as f:
    json.dump(report, f, indent=2)
  print(table)
  print(f"\nresults: {results_path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
