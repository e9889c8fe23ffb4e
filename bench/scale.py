"""Scale rehearsal: what each pipeline step costs as the number of slides grows.

Run from the repository root:

    TF_USE_LEGACY_KERAS=1 .venv/bin/python bench/scale.py [--slides N] [--factor K]
        [--workdir DIR] [--epochs E]

Draws N and K*N small synthetic PANDA-format slides (`histopipe synth`'s
generator: the point is counts, not pixels), compiles the pipeline for
Kubeflow (the `small_cnn` backbone, `--epochs` epochs, no Tuner, no GPU) and
runs the package with `histopipe kubeflow run-local` on each: every step in a
process of its own, as on a cluster, so each step's peak resident memory is
its own (`wait4` of its process, kubeflow/run_local.py). Writes
`WORKDIR/scale_results.json`:

    {"slides": [N, KN], "components": {"<step>": {"seconds": [a, b], "peak_rss_mb": [a, b]}}}

and prints a table with the growth of each step's time and memory from N to
K*N, against the targets (memory at K*N <= 1.25 x at N; time growing no
faster than K; DriftCheck and ModelCard not growing beyond reading their
kilobytes), and a linear projection of each step's time and memory to
PANDA's 10,616 slides.

What a projection from small slides cannot show: the cost of pixels (tiling
and training time per slide at PANDA's slide and tile sizes; see
docs/benchmarks.md), and a bucket's latency (the listing is one call a
folder: docs/data-in-buckets.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from histopipe.core.configs import config_from_overrides  # noqa: E402
from histopipe.data import synthetic  # noqa: E402
from histopipe.kubeflow import run_local  # noqa: E402
from histopipe.kubeflow.compile import compile_pipeline  # noqa: E402

DEFAULT_WORKDIR = os.path.join(tempfile.gettempdir(), "histopipe-bench", "scale")
RESULTS_FILE = "scale_results.json"
PANDA_SLIDES = 10_616
LEVEL0 = (1024, 768)  # a 256 x 192 middle level: enough for 4 tiles of 32 px
MEMORY_TARGET = 1.25
# `histopipe report`'s page, timed after the pipeline (not a pipeline step).
REPORT_STEP = "report"
# Steps that should read kilobytes whatever the number of slides.
FLAT_STEPS = ("DriftCheck", "ModelCard", REPORT_STEP)


def pipeline_overrides(epochs: int) -> dict:
  """Small tiles, a small CNN, no Tuner, no GPU: the counts, not the pixels."""
  return {
      "preset": "demo",
      "data": {"train_buckets": 2, "valid_buckets": 1, "eval_buckets": 1},
      "tiling": {"tiles_per_slide": 4, "tile_size": 32},
      "model": {"backbone": "small_cnn", "input_size": 32, "dense_units": 16,
                "attention_units": 8},
      "training": {"epochs": epochs, "batch_size": 4, "eval_batch_size": 4},
      "evaluation": {"min_kappa": -1.0, "max_kappa_drop": 2.0},
      "tuning": {"enabled": False},
      "kubeflow": {"trainer": {"cpu": 2, "memory_gb": 8, "gpus": 0},
                   "tuner": {"cpu": 2, "memory_gb": 8, "gpus": 0}},
  }


def run_once(slides: int, workdir: str, epochs: int, seed: int, log) -> Dict[str, dict]:
  """{step: {"seconds", "peak_rss_mb"}} of one run-local of the package on
  `slides` new synthetic slides."""
  data = os.path.join(workdir, f"data_{slides}")
  shutil.rmtree(data, ignore_errors=True)
  started = time.perf_counter()
  synthetic.write_dataset(data, slides=slides, seed=seed, level0_size=LEVEL0)
  log(f"{slides} slides drawn in {time.perf_counter() - started:.0f} s")
  run_dir = os.path.join(workdir, f"run_{slides}")
  shutil.rmtree(run_dir, ignore_errors=True)
  config = config_from_overrides(pipeline_overrides(epochs))
  package = os.path.join(run_dir, "pipeline.yaml")
  compile_pipeline(config, package, image="local", pipeline_root=os.path.join(run_dir, "root"),
                   data_root=data, serving_model_dir=os.path.join(run_dir, "serving"))
  ran = run_local.run_package(package, os.path.join(run_dir, "tasks"), stream=sys.stderr)
  measured = {task.name: {"seconds": task.seconds, "peak_rss_mb": task.peak_rss_mb}
              for task in ran.tasks if task.kind == "container" and not task.cached}
  measured[REPORT_STEP] = time_report(ran, os.path.join(run_dir, "report"))
  log(f"report written in {measured[REPORT_STEP]['seconds']:.0f} s")
  return measured


def time_report(ran: run_local.LocalRun, out_dir: str) -> dict:
  """`histopipe report`'s page of this run's artifacts, written in a process
  of its own (run-local keeps no ML Metadata for `report --run` to read, so
  the artifacts are named here): its seconds and peak resident memory."""
  artifacts = {"examples_uri": ran.output("SlideExampleGen", "examples")["uri"],
               "model_uri": ran.output("Trainer", "model")["uri"],
               "drift_uri": ran.output("DriftCheck", "drift_report")["uri"],
               "run_id": ran.run_id}
  started = time.perf_counter()
  code, peak_mb = run_local.run_measured(
      [sys.executable, os.path.abspath(__file__), "--report-of", json.dumps(artifacts),
       "--workdir", out_dir])
  if code != 0:
    raise RuntimeError(f"the report of {ran.run_id} failed (exit {code})")
  return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_mb}


def write_report_of(artifacts: dict, out_dir: str) -> str:
  """The report page of run-local artifacts (reports/run_report.write_page)."""
  from histopipe.reports import run_report, run_summary  # the report's process only
  with open(os.path.join(artifacts["drift_uri"], "drift.json")) as f:
    drift_report = json.load(f)
  summary = run_summary.RunSummary(examples_uri=artifacts["examples_uri"],
                                   model_uri=artifacts["model_uri"], drift=drift_report,
                                   run_id=artifacts["run_id"])
  return run_report.write_page(summary, out_dir, artifacts["run_id"])


def projected(values: List[float], counts: List[int], target: int) -> float:
  """The straight line through (counts[0], values[0]), (counts[1], values[1])
  at `target`, its slope no less than 0: a step measured faster (or smaller)
  at K*N was measured within its noise, not shrinking with the data."""
  slope = max(0.0, (values[1] - values[0]) / (counts[1] - counts[0]))
  return values[0] + slope * (target - counts[0])


def markdown_table(results: dict, factor: int) -> str:
  counts = results["slides"]
  lines = [f"Each step of the compiled pipeline in its own process (run-local), {counts[0]} "
           f"and {counts[1]} slides, one run each:", "",
           f"| step | s at {counts[0]} | s at {counts[1]} | time x | MB at {counts[0]} | "
           f"MB at {counts[1]} | memory x | s at {PANDA_SLIDES:,} | MB at {PANDA_SLIDES:,} | "
           "targets |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
  for step, measured in results["components"].items():
    seconds, memory = measured["seconds"], measured["peak_rss_mb"]
    time_growth, memory_growth = seconds[1] / seconds[0], memory[1] / memory[0]
    met = []
    met.append("memory " + ("met" if memory_growth <= MEMORY_TARGET else "NOT met"))
    time_target = 1.25 if step in FLAT_STEPS else factor
    met.append(f"time <= {time_target:g}x " + ("met" if time_growth <= time_target
                                                else "NOT met"))
    lines.append(
        f"| {step} | {seconds[0]:.0f} | {seconds[1]:.0f} | {time_growth:.2f} | "
        f"{memory[0]:,.0f} | {memory[1]:,.0f} | {memory_growth:.2f} | "
        f"{projected(seconds, counts, PANDA_SLIDES):,.0f} | "
        f"{projected(memory, counts, PANDA_SLIDES):,.0f} | {', '.join(met)} |")
  return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--slides", type=int, default=16, help="N (default 16)")
  parser.add_argument("--factor", type=int, default=4, help="K (default 4)")
  parser.add_argument("--epochs", type=int, default=1)
  parser.add_argument("--workdir", default=DEFAULT_WORKDIR)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--table-of", metavar="RESULTS",
                      help="only print the table of an earlier run's scale_results.json")
  # How time_report runs the report in a process of its own; not for people.
  parser.add_argument("--report-of", metavar="ARTIFACTS_JSON", help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
  if args.slides < 1 or args.factor < 2:
    print("scale.py: error: --slides must be >= 1 and --factor >= 2", file=sys.stderr)
    return 2
  if args.report_of:
    print(write_report_of(json.loads(args.report_of), args.workdir))
    return 0
  if args.table_of:
    with open(args.table_of) as f:
      earlier = json.load(f)
    print(markdown_table(earlier, earlier["slides"][1] // earlier["slides"][0]))
    return 0
  os.makedirs(args.workdir, exist_ok=True)
  counts = [args.slides, args.slides * args.factor]
  runs = [run_once(count, args.workdir, args.epochs, args.seed, log) for count in counts]
  steps = [step for step in runs[0] if step in runs[1]]
  results = {"slides": counts,
             "components": {step: {key: [runs[0][step][key], runs[1][step][key]]
                                   for key in ("seconds", "peak_rss_mb")} for step in steps}}
  table = markdown_table(results, args.factor)
  results["markdown"] = table
  path = os.path.join(args.workdir, RESULTS_FILE)
  with open(path, "w") as f:
    json.dump(results, f, indent=1)
  print(table)
  print(f"\nresults: {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
