"""One experiment on cached embeddings against one end to end, on the same slides.

    TF_USE_LEGACY_KERAS=1 .venv/bin/python bench/frozen_encoder.py [--data demo/data]
        [--encoder resnet50_trunc] [--workdir DIR]

Three `histopipe run`s with the demo preset on the same data folder (made
with `histopipe synth --slides 150 --seed 0`, as `make demo` makes it, when
--data is not there), each a process of its own, each step's time read from
the run's own progress lines ("[k/n] Trainer: done in S s"):

  end_to_end   the demo as `make demo` runs it: ResNet50 on 8 tiles of 64 px
               a bag, trained end to end (12 epochs).
  frozen       the same slides with model.encoder (default resnet50_trunc,
               Keras' ResNet50 to conv4 and average pooling, random weights
               unless --imagenet-weights: nothing is downloaded) on every
               tissue tile (tiling.tiles_per_slide 0, up to 64 a slide): the
               TileEmbedder embeds each tile once, the Trainer fits the head.
  experiment   the frozen run again with another head (mean pooling): the
               tiling and the embeddings come from the cache, the Trainer
               alone runs: what one more experiment costs.

Prints each run's step times, the Trainer's time of `experiment` against
`end_to_end`'s (target <= 1/20), and each run's eval kappa; writes --out.
The kappas say what each model learnt of these synthetic slides; with a
random encoder the frozen head sees random-convolution features.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_LINE = re.compile(r"^\[\d+/\d+\] (\w+): (done in (\d+) s|cached)$")
KAPPA_LINE = re.compile(r"eval quadratic weighted kappa: ([-\d.]+)")


def histopipe(*args: str) -> str:
  env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
  done = subprocess.run([sys.executable, "-m", "histopipe", *args], env=env, cwd=REPO,
                        capture_output=True, text=True)
  if done.returncode != 0:
    raise RuntimeError(f"histopipe {' '.join(args)} failed:\n{done.stdout[-3000:]}"
                       f"{done.stderr[-3000:]}")
  return done.stdout + done.stderr  # the step lines go to stderr, the summary to stdout


def run(data: str, out: str, config: dict, workdir: str, name: str) -> dict:
  config_path = os.path.join(workdir, f"{name}.json")
  with open(config_path, "w") as f:
    json.dump(config, f)
  start = time.perf_counter()
  printed = histopipe("run", "--data", data, "--out", out, "--config", config_path)
  wall = time.perf_counter() - start
  steps = {}
  for line in printed.splitlines():
    match = STEP_LINE.match(line.strip())
    if match:
      steps[match.group(1)] = "cached" if match.group(2) == "cached" else int(match.group(3))
  kappa = KAPPA_LINE.search(printed)
  result = {"wall_s": wall, "steps_s": steps, "kappa": float(kappa.group(1)) if kappa else None}
  print(f"{name}: {wall:.0f} s wall, kappa {result['kappa']}; steps: " +
        ", ".join(f"{step} {value}" for step, value in steps.items()), flush=True)
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", default=os.path.join(REPO, "demo", "data"))
  parser.add_argument("--encoder", default="resnet50_trunc")
  parser.add_argument("--imagenet-weights", default="")
  parser.add_argument("--max-tiles", type=int, default=64)
  parser.add_argument("--workdir", default="/tmp/histopipe_bench_frozen_encoder")
  parser.add_argument("--out", default="frozen_encoder_results.json")
  args = parser.parse_args(argv)
  os.makedirs(args.workdir, exist_ok=True)
  if not os.path.exists(os.path.join(args.data, "train.csv")):
    histopipe("synth", "--out", args.data, "--slides", "150", "--seed", "0")
  frozen = {"preset": "demo",
            "tiling": {"tiles_per_slide": 0, "max_tiles": args.max_tiles},
            "model": {"encoder": args.encoder, "imagenet_weights": args.imagenet_weights}}
  experiment = {**frozen, "model": {**frozen["model"], "pooling": "mean"}}
  results = {"encoder": args.encoder, "imagenet_weights": args.imagenet_weights or "random"}
  results["end_to_end"] = run(args.data, os.path.join(args.workdir, "end_to_end"),
                              {"preset": "demo"}, args.workdir, "end_to_end")
  frozen_out = os.path.join(args.workdir, "frozen")
  results["frozen"] = run(args.data, frozen_out, frozen, args.workdir, "frozen")
  results["experiment"] = run(args.data, frozen_out, experiment, args.workdir, "experiment")
  trained = results["experiment"]["steps_s"]["Trainer"]
  end_to_end = results["end_to_end"]["steps_s"]["Trainer"]
  results["trainer_ratio"] = trained / end_to_end
  print(f"Trainer: one more experiment on cached embeddings {trained} s, end to end "
        f"{end_to_end} s: {results['trainer_ratio']:.3f} (target <= 0.05); embedding once "
        f"{results['frozen']['steps_s'].get('TileEmbedder')} s")
  with open(args.out, "w") as f:
    json.dump(results, f, indent=2)
  print(f"results: {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
