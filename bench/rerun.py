"""An unchanged re-run of `histopipe run` against the first run, in one process.

Run from the repository root:

    TF_USE_LEGACY_KERAS=1 .venv/bin/python bench/rerun.py [--slides N] [--workdir DIR]

Writes N synthetic PANDA slides (small ones, 2048 x 1536 at level 0), then runs
the pipeline twice on the same data, settings and output folder with the
`demo` preset (2 epochs), timing each `run_local` call (wall clock), and
reads from ML Metadata which steps the second run executed. With caching on,
the second run executes nothing: its time is TFX's launcher checking the
cache for each step, the input fingerprint (a listing of the slides and a
hash of the label file), and starting Beam for none of them. Prints a
Markdown table and writes `WORKDIR/rerun_results.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import shutil
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from histopipe.data import synthetic  # noqa: E402
from histopipe.core.configs import load_config  # noqa: E402
from histopipe.pipeline.local_runner import run_local  # noqa: E402
from histopipe.reports import lineage  # noqa: E402


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--slides", type=int, default=24)
  parser.add_argument("--workdir", default="/tmp/histopipe_bench_rerun")
  args = parser.parse_args(argv)
  shutil.rmtree(args.workdir, ignore_errors=True)
  data, out = os.path.join(args.workdir, "data"), os.path.join(args.workdir, "out")
  synthetic.write_dataset(data, args.slides, seed=0, level0_size=(2048, 1536))
  config = load_config(None, preset="demo")
  config = dataclasses.replace(config, training=dataclasses.replace(config.training, epochs=2))
  timings = {}
  for name in ("first", "unchanged"):
    start = time.perf_counter()
    paths = run_local(config, data, out, stream=io.StringIO())
    timings[name] = time.perf_counter() - start
    run = lineage.latest_run(paths.metadata_path)
    timings[name + "_executed"] = run.executed_steps
  ratio = timings["unchanged"] / timings["first"]
  table = "\n".join([
      "| run | wall time | steps executed |", "| --- | ---: | --- |",
      f"| first | {timings['first']:.1f} s | {len(timings['first_executed'])} |",
      f"| unchanged re-run | {timings['unchanged']:.1f} s | "
      f"{', '.join(timings['unchanged_executed']) or 'none'} |",
      f"| ratio | {ratio:.3f} | |"])
  print(table)
  with open(os.path.join(args.workdir, "rerun_results.json"), "w") as f:
    json.dump({"slides": args.slides, "timings": timings, "ratio": ratio}, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
