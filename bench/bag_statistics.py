"""What the bag image statistics cost the tiling: their share of `cut_bag`.

Tiles synthetic slides (made once under --workdir) with a preset's tiling,
timing `cut_bag` per slide and, inside it, `bag_statistics.image_statistics`
(wrapped, so the same calls are timed). Prints both per slide and the share.

    python bench/bag_statistics.py --preset full --slides 6 --repeats 3
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from histopipe.slides import bag_statistics
from histopipe.data import synthetic
from histopipe.slides import tiling  # noqa: E402
from histopipe.core.configs import load_config  # noqa: E402


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--preset", default="full", choices=["demo", "full"])
  parser.add_argument("--slides", type=int, default=6)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--size", default="8192x6144", help="level-0 width x height")
  parser.add_argument("--workdir", default="/tmp/histopipe_bench_bag_statistics")
  args = parser.parse_args(argv)
  width, height = (int(v) for v in args.size.split("x"))
  data = os.path.join(args.workdir, f"{args.size}_{args.slides}")
  if not os.path.exists(os.path.join(data, "train.csv")):
    synthetic.write_dataset(data, args.slides, seed=3, level0_size=(width, height))
  paths = sorted(glob.glob(os.path.join(data, "train_images", "*.tiff")))
  config = load_config(None, preset=args.preset).tiling
  original = bag_statistics.image_statistics
  spent = [0.0]

  def timed(*a, **k):
    start = time.perf_counter()
    result = original(*a, **k)
    spent[0] += time.perf_counter() - start
    return result

  bag_statistics.image_statistics = timed
  for path in paths:  # warm-up: page cache, imports
    tiling.cut_bag(path, "slide", config)
  spent[0] = 0.0
  start = time.perf_counter()
  for _ in range(args.repeats):
    for path in paths:
      tiling.cut_bag(path, "slide", config)
  total = time.perf_counter() - start
  count = args.repeats * len(paths)
  print(f"{args.preset} preset, {count} slides of {args.size}: cut_bag "
        f"{total / count * 1000:.1f} ms a slide, of which image statistics "
        f"{spent[0] / count * 1000:.2f} ms ({spent[0] / total:.1%})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
