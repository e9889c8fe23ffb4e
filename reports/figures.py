"""The PNG figures of a report: confusion matrix, ROC curves, attention heatmap."""

from __future__ import annotations

import io
from typing import Dict, List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tfx.dsl.io import fileio  # noqa: E402

from histopipe.bags.bag_features import SlideBag  # noqa: E402


def save_png(figure, path: str) -> None:
  """The figure as PNG at `path` (local, a bucket, or TF's ram://), then closed."""
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=110)
  plt.close(figure)
  with fileio.open(path, "wb") as f:
    f.write(buffer.getvalue())


def confusion_matrix_png(confusion: np.ndarray, class_names: Sequence[str], path: str,
                         title: str) -> None:
  """Counts, with each true class's row share as the colour (rows sum to 1)."""
  confusion = np.asarray(confusion)
  shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
  size = 1.2 + 0.6 * len(class_names)
  figure, axes = plt.subplots(figsize=(size + 1, size))
  image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
  for (row, col), count in np.ndenumerate(confusion):
    axes.text(col, row, str(int(count)), ha="center", va="center",
              color="white" if shares[row, col] > 0.6 else "black")
  axes.set_xticks(range(len(class_names)), class_names)
  axes.set_yticks(range(len(class_names)), class_names)
  axes.set_xlabel("predicted")
  axes.set_ylabel("true")
  axes.set_title(title)
  figure.colorbar(image, ax=axes, fraction=0.046, label="share of the true class")
  figure.tight_layout()
  save_png(figure, path)


def roc_curves_png(curves: Dict[str, Tuple[np.ndarray, np.ndarray, float]], path: str,
                   title: str) -> None:
  """One ROC curve per name: (false positive rates, true positive rates, AUC)."""
  figure, axes = plt.subplots(figsize=(5, 5))
  axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
  for name, (fpr, tpr, auc) in curves.items():
    axes.plot(fpr, tpr, linewidth=2 if name == "overall" else 1.2,
              label=f"{name} (AUC {auc:.3f})")
  axes.set_xlim(0, 1)
  axes.set_ylim(0, 1.01)
  axes.set_xlabel("false positive rate")
  axes.set_ylabel("true positive rate")
  axes.set_title(title)
  axes.legend(loc="lower right", fontsize=8)
  figure.tight_layout()
  save_png(figure, path)


def attention_overlay(thumbnail_rgb: np.ndarray, thumbnail_downsample: float, bag: SlideBag,
                      attention: Sequence[float]) -> Tuple[np.ndarray, float]:
  """The thumbnail with each chosen tile filled by its attention weight
  (scaled to the bag's largest), blended at 55%. Returns (image, largest weight)."""
  overlay = thumbnail_rgb.astype(np.float32) / 255.0
  weights = [w for w, v in zip(attention, bag.tile_valid) if v]
  largest = max(weights) if weights else 0.0
  colormap = plt.get_cmap("inferno")
  side = bag.tile_size * bag.level_downsample / thumbnail_downsample
  height, width = overlay.shape[:2]
  for x, y, valid, weight in zip(bag.tile_x, bag.tile_y, bag.tile_valid, attention):
    if not valid:
      continue
    x0, y0 = int(round(x / thumbnail_downsample)), int(round(y / thumbnail_downsample))
    x1, y1 = min(width, int(round(x0 + side))), min(height, int(round(y0 + side)))
    colour = np.array(colormap(weight / largest if largest > 0 else 0.0)[:3], np.float32)
    overlay[y0:y1, x0:x1] = 0.45 * overlay[y0:y1, x0:x1] + 0.55 * colour
  return (overlay * 255).astype(np.uint8), largest


def attention_heatmap_png(thumbnail_rgb: np.ndarray, thumbnail_downsample: float,
                          bag: SlideBag, attention: Sequence[float], path: str,
                          title: str) -> None:
  """The slide with the chosen tiles coloured by attention, and a colour bar."""
  image, largest = attention_overlay(thumbnail_rgb, thumbnail_downsample, bag, attention)
  height, width = image.shape[:2]
  figure, axes = plt.subplots(figsize=(6, 6 * height / max(width, 1) + 0.6))
  axes.imshow(image)
  axes.set_axis_off()
  axes.set_title(title, fontsize=9)
  mappable = plt.cm.ScalarMappable(cmap="inferno",
                                   norm=matplotlib.colors.Normalize(0, largest or 1.0))
  figure.colorbar(mappable, ax=axes, fraction=0.04, label="attention weight")
  figure.tight_layout()
  save_png(figure, path)


def class_names(num_classes: int) -> List[str]:
  return ["0", "1"] if num_classes == 2 else [str(k) for k in range(num_classes)]


def colour_distributions_png(values_by_provider: Dict[str, Dict[str, np.ndarray]],
                             titles: Dict[str, str], path: str, title: str) -> None:
  """One panel per statistic (`titles`: key -> panel title), one histogram
  per data provider in each: how each site's bags look."""
  keys = list(titles)
  columns = min(3, len(keys))
  rows = -(-len(keys) // columns)
  figure, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.8 * rows), squeeze=False)
  axes = axes.reshape(-1)
  for axis in axes[len(keys):]:
    axis.axis("off")
  for axis, key in zip(axes, keys):
    series = [values[key] for values in values_by_provider.values()]
    low = min(float(np.min(s)) for s in series)
    high = max(float(np.max(s)) for s in series)
    bins = np.linspace(low, high if high > low else low + 1, 21)
    for provider, values in values_by_provider.items():
      axis.hist(values[key], bins=bins, alpha=0.5, label=f"{provider} ({len(values[key])})")
    axis.set_title(titles[key], fontsize=9)
    axis.tick_params(labelsize=7)
  axes[0].legend(fontsize=7)
  figure.suptitle(title, fontsize=10)
  figure.tight_layout()
  save_png(figure, path)


def coverage_curve_png(coverage: Sequence[float], metric: Sequence[float], metric_name: str,
                       chosen: Tuple[float, float], target: float, path: str,
                       title: str) -> None:
  """The metric of the accepted slides against the share accepted, with the
  model's referral threshold marked and the target as a line."""
  figure, axes = plt.subplots(figsize=(5, 4))
  axes.plot(coverage, metric, marker=".", linewidth=1.5, label="accepted slides")
  axes.axhline(target, color="grey", linestyle=":", linewidth=1, label=f"target {target:g}")
  axes.plot([chosen[0]], [chosen[1]], marker="o", markersize=9, color="crimson",
            label=f"model's threshold: {chosen[0]:.0%} accepted, {metric_name} {chosen[1]:.3f}")
  axes.set_xlim(0, 1.02)
  axes.set_xlabel("coverage (share of slides not referred)")
  axes.set_ylabel(f"{metric_name} of accepted slides")
  axes.set_title(title, fontsize=10)
  axes.legend(loc="lower left", fontsize=7)
  figure.tight_layout()
  save_png(figure, path)
