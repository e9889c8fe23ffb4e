"""Latency of `histopipe predict` for one slide, and where the time goes.

One request per slide, as `histopipe predict` sends them: tile the slide
(slides.tiling.cut_bag, the SlideExampleGen's code), serialize the bag,
call Predict over gRPC on the development server (serving/dev_server.py,
in this process, on localhost). Per slide and repeat:

  tiling   cut_bag
  request  the gRPC call minus the model: protos, (de)serialization, transport
  model    the same signature called directly on the same bag, in process
  total    tiling + serialization + the gRPC call

Prints p50/p95 of `total` and each part's median and share, and writes
JSON to --out.

With `--concurrency 1,4,16`, a load phase follows against `histopipe
serve-dev` in its own process (as a client meets a server): for each N, N
threads each running `histopipe predict`'s per-slide step
(`slide_predictions.predict_one`: tile, send, answer) over the slides x
repeats, as `predict --concurrency N` does; per slide the time from its
tiling's start to its answer, p50/p95/p99, and slides per second (with its
ratio to the first N given). The model is whatever --model-dir holds: `make demo`'s
pushed model (8 tiles of 64 px), or a `full`-preset one (36 tiles, 224 px).

    python bench/serving.py --model-dir demo/out/serving_model --data demo/data

With `--batching on,off` (and `--run`, a finished `histopipe run`: its
Trainer's weights and Transform graph), the model is exported twice from the
same weights, its tile encoder in TensorFlow's BatchFunction op (config
`serving`, trainer/encoder_batching.py) and not, and the server alone is
loaded: bags cut once beforehand, N threads sending them to a `serve-dev`
process of each export in turn (the tiling of a client runs elsewhere in
production; here it would take the server's cores). Writes
`{"batching": {"on": {"16": {"slides_per_s", "p50_ms", "p99_ms"}}, "off": ...}}`
to --out and prints the table with each N's ratio, on to off.

    python bench/serving.py --run demo/out --data demo/data --batching on,off \
        --concurrency 1,4,16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent import futures

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from histopipe.bags import bag_features  # noqa: E402
from histopipe.slides.tiling import cut_bag  # noqa: E402
from histopipe.core.configs import load_config  # noqa: E402
from histopipe.serving.client import GrpcPredictClient  # noqa: E402
from histopipe.serving.dev_server import DevServer  # noqa: E402
from histopipe.serving.slide_predictions import (find_slides, predict_one,  # noqa: E402
                                                 predict_slides)


def _percentile(values, q: float) -> float:
  return float(np.percentile(np.asarray(values), q))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model-dir", help="SavedModel or serving base")
  parser.add_argument("--data", required=True, help="folder with slides (searched recursively)")
  parser.add_argument("--config", help="the JSON config the model was trained with")
  parser.add_argument("--preset", default="demo", choices=["demo", "full"])
  parser.add_argument("--slides", type=int, default=8, help="slides to use (default 8)")
  parser.add_argument("--repeats", type=int, default=5, help="passes over them (default 5)")
  parser.add_argument("--out", default="serving_results.json")
  parser.add_argument("--concurrency", default="",
                      help="comma-separated slides in flight for the load phase, e.g. 1,4,16")
  parser.add_argument("--batching", default="",
                      help="on,off: the server with the encoder batched in the graph and not "
                           "(needs --run and --concurrency)")
  parser.add_argument("--run", help="a finished `histopipe run --out` folder, for --batching")
  args = parser.parse_args(argv)

  config = load_config(args.config, preset=args.preset)
  paths = find_slides([args.data])[:args.slides]
  if not paths:
    parser.error(f"no slides under {args.data}")
  if args.batching:
    if not args.run or not args.concurrency:
      parser.error("--batching needs --run and --concurrency")
    return compare_batching(args.run, paths, config, args.batching.split(","),
                            [int(n) for n in args.concurrency.split(",")], args.repeats,
                            args.out)
  if not args.model_dir:
    parser.error("--model-dir is required (or --batching with --run)")
  timings = {"tiling": [], "request": [], "model": [], "total": []}
  with DevServer(args.model_dir, "histopipe") as server:
    client = GrpcPredictClient(f"localhost:{server.port}", "histopipe")
    examples = {}
    for path in paths:  # warm-up: graph tracing, page cache, channel set-up
      bag = cut_bag(path, "slide", config.tiling).bag
      examples[path] = np.array([bag_features.serialize_request(bag, "warm")], dtype=object)
      client.predict({"examples": examples[path]})
      server.model.run("serving_default", {"examples": examples[path]})
    for repeat in range(args.repeats):
      for path in paths:
        start = time.perf_counter()
        bag = cut_bag(path, "slide", config.tiling).bag
        tiled = time.perf_counter()
        example = np.array([bag_features.serialize_request(bag, "bench")], dtype=object)
        sent = time.perf_counter()
        client.predict({"examples": example})
        done = time.perf_counter()
        server.model.run("serving_default", {"examples": example})
        model = time.perf_counter() - done
        timings["tiling"].append(tiled - start)
        timings["model"].append(model)
        timings["request"].append(max(done - sent - model, 0.0) + (sent - tiled))
        timings["total"].append(done - start)
      print(f"pass {repeat + 1}/{args.repeats}: median total "
            f"{np.median(timings['total'][-len(paths):]) * 1e3:.0f} ms", flush=True)
    client.close()

  medians = {key: float(np.median(values)) for key, values in timings.items()}
  parts = ("tiling", "request", "model")
  parts_sum = sum(medians[p] for p in parts)
  results = {
      "model_dir": server.model.path, "slides": len(paths), "repeats": args.repeats,
      "tiles_per_slide": config.tiling.tiles_per_slide, "tile_size": config.tiling.tile_size,
      "p50_ms": _percentile(timings["total"], 50) * 1e3,
      "p95_ms": _percentile(timings["total"], 95) * 1e3,
      "median_ms": {key: value * 1e3 for key, value in medians.items()},
      "share_of_median_parts": {p: medians[p] / parts_sum for p in parts},
  }
  print(f"\n{len(paths)} slides x {args.repeats}: predict p50 {results['p50_ms']:.0f} ms, "
        f"p95 {results['p95_ms']:.0f} ms")
  for part in parts:
    print(f"  {part:8s} median {medians[part] * 1e3:7.1f} ms  "
          f"({results['share_of_median_parts'][part]:.0%})")
  if args.concurrency:
    results["load"] = load_phase(args.model_dir, paths * args.repeats, config,
                                 [int(n) for n in args.concurrency.split(",")])
  with open(args.out, "w") as f:
    json.dump(results, f, indent=2)
  print(f"results: {args.out}")
  return 0


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def load_phase(model_dir: str, paths, config, levels) -> list:
  """predict's loop at each concurrency against a serve-dev process."""
  port = _free_port()
  server = subprocess.Popen([sys.executable, "-m", "histopipe", "serve-dev", "--model-dir",
                             model_dir, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  rows = []
  client = GrpcPredictClient(f"localhost:{port}", "histopipe", retries=8)
  try:
    client.signatures()  # waits until it serves
    list(predict_slides(paths[:4], client, config))  # warm-up
    print(f"\nload: slides in flight | p50 ms | p95 ms | p99 ms | slides/s | vs {levels[0]}")
    for level in levels:
      latencies = []

      def timed(path):
        start = time.perf_counter()
        record = predict_one(path, client, config)
        latencies.append(time.perf_counter() - start)
        return record

      start = time.perf_counter()
      with futures.ThreadPoolExecutor(level) as pool:
        records = list(pool.map(timed, paths))
      wall = time.perf_counter() - start
      rejected = sum("rejected" in r for r in records)
      if rejected:
        raise RuntimeError(f"{rejected} slide(s) rejected at concurrency {level}")
      row = {"concurrency": level, "slides": len(paths),
             "p50_ms": _percentile(latencies, 50) * 1e3,
             "p95_ms": _percentile(latencies, 95) * 1e3,
             "p99_ms": _percentile(latencies, 99) * 1e3,
             "slides_per_s": len(paths) / wall}
      row["throughput_vs_first"] = row["slides_per_s"] / rows[0]["slides_per_s"] if rows else 1.0
      rows.append(row)
      print(f"  {level:4d} | {row['p50_ms']:6.0f} | {row['p95_ms']:6.0f} | "
            f"{row['p99_ms']:6.0f} | {row['slides_per_s']:8.2f} | "
            f"{row['throughput_vs_first']:.2f}", flush=True)
  finally:
    client.close()
    server.kill()
    server.wait()
  return rows


def exports_of_run(run_dir: str, config, variants, workdir: str) -> dict:
  """{variant: SavedModel dir}: the run's trained model exported again with
  its encoder batched ("on") and not ("off"), weights and preprocessing the
  same (trainer/export.py, as the Trainer exports); "trained": the Trainer's."""
  import tensorflow_transform as tft

  from histopipe.core.layout import TRAINER_SERVING_SUBDIR, RunPaths
  from histopipe.reports import lineage
  from histopipe.trainer.export import export
  from histopipe.trainer.model import build_mil_model
  run = lineage.latest_run(RunPaths(os.path.abspath(run_dir)).metadata_path, complete=True)
  model_dir = os.path.join(run.output("Trainer", "model").uri, TRAINER_SERVING_SUBDIR)
  transform = tft.TFTransformOutput(run.output("Transform", "transform_graph").uri)
  model = build_mil_model(config.model, config.tiles_per_bag, config.num_classes)
  model.load_weights(os.path.join(model_dir, "variables", "variables")).expect_partial()
  exported = {"trained": model_dir}
  for variant in variants:
    serving = dataclasses.replace(config.serving, batching=variant == "on")
    exported[variant] = os.path.join(workdir, f"batching_{variant}", "1")
    export(model, transform, dataclasses.replace(config, serving=serving), exported[variant])
  return exported


def _check_same_answers(model_dirs: dict, example) -> None:
  """Each export answers a bag as the Trainer's does: the same weights, not
  a model of random ones."""
  import tensorflow as tf
  answers = {variant: tf.saved_model.load(path).signatures["serving_default"](
      examples=tf.constant(example))["probabilities"].numpy()
      for variant, path in model_dirs.items()}
  for variant, answer in answers.items():
    if not np.allclose(answer, answers["trained"], atol=1e-5):
      raise RuntimeError(f"the {variant} export answers {answer}, the Trainer's model "
                         f"{answers['trained']}: the weights did not load")


def server_load(model_dir: str, examples, levels) -> dict:
  """{N: {"slides_per_s", "p50_ms", "p99_ms"}}: N threads sending the bags
  to a serve-dev process of `model_dir`, each bag once per level."""
  port = _free_port()
  server = subprocess.Popen([sys.executable, "-m", "histopipe", "serve-dev", "--model-dir",
                             model_dir, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  client = GrpcPredictClient(f"localhost:{port}", "histopipe", retries=8)
  rows = {}
  try:
    client.signatures()  # waits until it serves
    for example in examples[:4]:  # warm-up
      client.predict({"examples": example})
    for level in levels:
      latencies = []

      def send(example):
        start = time.perf_counter()
        client.predict({"examples": example})
        latencies.append(time.perf_counter() - start)

      start = time.perf_counter()
      with futures.ThreadPoolExecutor(level) as pool:
        list(pool.map(send, examples))
      wall = time.perf_counter() - start
      rows[str(level)] = {"slides_per_s": len(examples) / wall,
                          "p50_ms": _percentile(latencies, 50) * 1e3,
                          "p99_ms": _percentile(latencies, 99) * 1e3}
  finally:
    client.close()
    server.kill()
    server.wait()
  return rows


def compare_batching(run_dir: str, paths, config, variants, levels, repeats: int,
                     out: str) -> int:
  workdir = tempfile.mkdtemp(prefix="histopipe-bench-batching-")
  model_dirs = exports_of_run(run_dir, config, variants, workdir)
  examples = [np.array([bag_features.serialize_request(cut_bag(path, "slide",
                                                               config.tiling).bag, "bench")],
                       dtype=object) for path in paths] * repeats
  _check_same_answers(model_dirs, examples[0])
  results = {"batching": {}, "slides": len(paths), "requests_per_level": len(examples),
             "tiles_per_bag": config.tiles_per_bag,
             "serving": dataclasses.asdict(config.serving)}
  for variant in variants:
    print(f"batching {variant}: {model_dirs[variant]}", flush=True)
    results["batching"][variant] = server_load(model_dirs[variant], examples, levels)
  print(batching_table(results, levels))
  with open(out, "w") as f:
    json.dump(results, f, indent=2)
  print(f"results: {out}")
  return 0


def batching_table(results: dict, levels) -> str:
  """Markdown: per N, each variant's slides/s, p50, p99, and on/off ratios."""
  by_variant = results["batching"]
  lines = ["| in flight | " + " | ".join(
      f"{v}: slides/s | {v}: p50 ms | {v}: p99 ms" for v in by_variant) +
      (" | throughput on/off | p99 on/off |" if {"on", "off"} <= set(by_variant) else " |"),
      "| ---: " * (1 + 3 * len(by_variant) + 2 * ({"on", "off"} <= set(by_variant))) + "|"]
  for level in levels:
    key = str(level)
    cells = [key]
    for rows in by_variant.values():
      row = rows[key]
      cells += [f"{row['slides_per_s']:.2f}", f"{row['p50_ms']:.0f}", f"{row['p99_ms']:.0f}"]
    if {"on", "off"} <= set(by_variant):
      on, off = by_variant["on"][key], by_variant["off"][key]
      cells += [f"{on['slides_per_s'] / off['slides_per_s']:.2f}",
                f"{on['p99_ms'] / off['p99_ms']:.2f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


if __name__ == "__main__":
  sys.exit(main())
