"""Synthetic PANDA-style prostate biopsy slides, for demos and tests.

Real PANDA slides cannot be downloaded here, so the generator writes files in
the same format (JPEG-compressed, tiled, pyramidal TIFF with three levels at
downsample 1, 4 and 16, plus a `train.csv` with
`image_id,data_provider,isup_grade,gleason_score`), and draws morphology that
depends on the ISUP grade so that a model has something real to learn:

* grade 0 (benign): few, large, round glands with wide white lumens, sparse
  small nuclei in pink stroma;
* rising grade: glands get smaller and more crowded, lumens shrink, nuclei get
  denser, larger and darker (hyperchromasia and pleomorphism);
* grade 5: glands are lost into solid sheets of crowded dark nuclei.

Tissue is one to three thin elongated cores (as in needle biopsies) at a random
position and rotation on a white background.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
from typing import Iterator, List

import cv2
import numpy as np
import tifffile

from histopipe.data.labels import PANDA_COLUMNS
from histopipe.core.storage import make_output_dir
from histopipe.core.progress import progress_bar

# The pyramid of a PANDA file: level k has downsample PANDA_DOWNSAMPLES[k].
PANDA_DOWNSAMPLES = (1, 4, 16)
# Radboud scans are about 0.48 um/px at level 0; stated in the TIFF resolution.
LEVEL0_MPP = 0.5
TIFF_TILE_SIZE = 256

PROVIDERS = ("radboud", "karolinska")
# ISUP grade -> Gleason scores that map to it (PANDA's train.csv vocabulary).
GLEASON_BY_ISUP = {
    0: ("0+0", "negative"),
    1: ("3+3",),
    2: ("3+4",),
    3: ("4+3",),
    4: ("4+4", "3+5", "5+3"),
    5: ("4+5", "5+4", "5+5"),
}

# Per-channel colour scale of each provider's scanner and staining.
PROVIDER_STAIN = {"radboud": np.array([1.0, 1.0, 1.0]),
                  "karolinska": np.array([0.96, 0.93, 1.0])}

STROMA_RGB = (232, 178, 208)  # eosin pink
BACKGROUND_RGB = (243, 243, 245)  # glass, slightly off-white like a scanner
EPITHELIUM_RGB = (205, 150, 200)
NUCLEUS_RGB_BENIGN = (120, 80, 160)
NUCLEUS_RGB_MALIGNANT = (55, 25, 105)


@dataclasses.dataclass(frozen=True)
class GradeMorphology:
  """What the generator draws for one ISUP grade (sizes in level-0 pixels)."""
  gland_radius: float  # mean gland radius
  glands_per_megapixel: float  # gland centres per 10^6 px of tissue
  lumen_fraction: float  # lumen radius / gland radius
  nuclei_per_megapixel: float  # stromal and epithelial nuclei density
  nucleus_radius: float
  nucleus_darkness: float  # 0 = benign colour, 1 = darkest malignant colour
  solid_sheets: bool  # glands fused into sheets (Gleason pattern 5)


def morphology_for_grade(isup_grade: int) -> GradeMorphology:
  """Monotone in grade: smaller, denser glands; denser, darker nuclei."""
  if not 0 <= isup_grade <= 5:
    raise ValueError(f"ISUP grade must be 0..5, got {isup_grade}")
  g = isup_grade
  return GradeMorphology(
      gland_radius=60.0 - 9.0 * g,
      glands_per_megapixel=25.0 + 30.0 * g if g < 5 else 40.0,
      lumen_fraction=max(0.0, 0.65 - 0.13 * g),
      nuclei_per_megapixel=900.0 + 900.0 * g,
      nucleus_radius=3.5 + 0.7 * g,
      nucleus_darkness=g / 5.0,
      solid_sheets=g == 5,
  )


@dataclasses.dataclass(frozen=True)
class SyntheticSlide:
  image_id: str
  path: str
  data_provider: str
  isup_grade: int
  gleason_score: str


def at_downsample(morph: GradeMorphology, downsample: float) -> GradeMorphology:
  """`morph` (level-0 pixels) expressed in pixels of an image at `downsample`."""
  area = downsample * downsample
  return dataclasses.replace(
      morph,
      gland_radius=morph.gland_radius / downsample,
      glands_per_megapixel=morph.glands_per_megapixel * area,
      nuclei_per_megapixel=morph.nuclei_per_megapixel * area,
      nucleus_radius=morph.nucleus_radius / downsample)


def _mix(a, b, t: float):
  return tuple(int(round((1 - t) * x + t * y)) for x, y in zip(a, b))


def _tissue_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """One to three thin, rotated cores; at least 5% of the slide is tissue."""
  mask = np.zeros((height, width), np.uint8)
  for _ in range(int(rng.integers(1, 4))):
    center = (int(rng.uniform(0.3, 0.7) * width), int(rng.uniform(0.3, 0.7) * height))
    long_axis = int(rng.uniform(0.30, 0.45) * min(width, height) * 1.4)
    short_axis = int(rng.uniform(0.06, 0.10) * min(width, height))
    angle = float(rng.uniform(0, 180))
    cv2.ellipse(mask, center, (long_axis, short_axis), angle, 0, 360, 255, -1)
  # Ragged edges: erode/dilate with noise so the border is not a perfect ellipse.
  noise = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 6)
  edge = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 8)
  return (edge + 0.6 * (noise - noise.mean()) * 4) > 0.5


def jittered(morph: GradeMorphology, rng: np.random.Generator,
             spread: float = 0.15) -> GradeMorphology:
  """Per-slide variation (log-normal, `spread` ~ 15%) so that neighbouring
  grades overlap as they do between real patients."""
  scale = lambda: float(rng.lognormal(0.0, spread))  # noqa: E731
  return dataclasses.replace(
      morph,
      gland_radius=morph.gland_radius * scale(),
      glands_per_megapixel=morph.glands_per_megapixel * scale(),
      nuclei_per_megapixel=morph.nuclei_per_megapixel * scale(),
      nucleus_radius=morph.nucleus_radius * scale(),
      nucleus_darkness=float(np.clip(morph.nucleus_darkness + rng.normal(0, spread / 2), 0, 1)))


def _tumour_region(rng: np.random.Generator, mask: np.ndarray,
                   tumour_fraction: float) -> np.ndarray:
  """Smooth blobs covering about `tumour_fraction` of the tissue."""
  if tumour_fraction >= 1.0:
    return mask
  if tumour_fraction <= 0.0:
    return np.zeros_like(mask)
  height, width = mask.shape
  small = rng.random((max(height // 16, 4), max(width // 16, 4))).astype(np.float32)
  field = cv2.resize(cv2.GaussianBlur(small, (0, 0), 6), (width, height),
                     interpolation=cv2.INTER_LINEAR)
  threshold = np.quantile(field[mask], 1.0 - tumour_fraction)
  return mask & (field >= threshold)


def render_tissue(rng: np.random.Generator, height: int, width: int,
                  morph: GradeMorphology, tumour_fraction: float = 1.0,
                  stain_scale=(1.0, 1.0, 1.0)) -> np.ndarray:
  """Level-0 RGB image of one biopsy.

  `tumour_fraction` of the tissue shows `morph`; the rest is benign (grade 0),
  as in real biopsies where cancer occupies part of the core. `stain_scale`
  multiplies the tissue colours per channel (scanner and staining variation).
  """
  mask = _tissue_mask(rng, height, width)
  if not mask.any():
    raise RuntimeError("synthetic tissue mask is empty")
  tumour = _tumour_region(rng, mask, tumour_fraction)
  tissue = np.empty((height, width, 3), np.uint8)
  tissue[:] = STROMA_RGB
  for region, region_morph in ((mask & ~tumour, morphology_for_grade(0)),
                               (tumour, morph)):
    _draw_morphology(rng, tissue, region, region_morph)

  # Scanner-like texture, then tissue on glass.
  tissue = _scanner_texture(rng, tissue, stain_scale)
  slide = np.empty_like(tissue)
  slide[:] = BACKGROUND_RGB
  slide[mask] = tissue[mask]
  return slide


def _draw_morphology(rng: np.random.Generator, tissue: np.ndarray, region: np.ndarray,
                     morph: GradeMorphology) -> None:
  """Glands and nuclei of `morph`, centred inside `region` (drawn in place)."""
  ys, xs = np.nonzero(region[::4, ::4])
  if len(ys) == 0:
    return
  area = float(region.sum())

  def random_points(per_megapixel: float) -> Iterator[tuple]:
    picks = rng.integers(0, len(ys), int(per_megapixel * area / 1e6))
    for i in picks:
      yield int(xs[i] * 4 + rng.integers(0, 4)), int(ys[i] * 4 + rng.integers(0, 4))

  if not morph.solid_sheets:
    for cx, cy in random_points(morph.glands_per_megapixel):
      radius = max(4, int(rng.normal(morph.gland_radius, 0.2 * morph.gland_radius)))
      axes = (radius, max(3, int(radius * rng.uniform(0.7, 1.0))))
      angle = float(rng.uniform(0, 180))
      cv2.ellipse(tissue, (cx, cy), axes, angle, 0, 360, EPITHELIUM_RGB, -1)
      if morph.lumen_fraction > 0:
        lumen = tuple(max(1, int(a * morph.lumen_fraction)) for a in axes)
        cv2.ellipse(tissue, (cx, cy), lumen, angle, 0, 360, BACKGROUND_RGB, -1)
  else:
    # Solid sheets: large epithelial patches without lumens.
    for cx, cy in random_points(morph.glands_per_megapixel):
      cv2.circle(tissue, (cx, cy), int(rng.uniform(60, 120)), EPITHELIUM_RGB, -1)

  nucleus_rgb = _mix(NUCLEUS_RGB_BENIGN, NUCLEUS_RGB_MALIGNANT, morph.nucleus_darkness)
  for cx, cy in random_points(morph.nuclei_per_megapixel):
    radius = max(1, int(rng.normal(morph.nucleus_radius, 0.25 * morph.nucleus_radius)))
    jitter = rng.integers(-12, 13, 3)
    colour = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(nucleus_rgb, jitter))
    cv2.circle(tissue, (cx, cy), radius, colour, -1)


def _scanner_texture(rng: np.random.Generator, tissue: np.ndarray,
                     stain_scale) -> np.ndarray:
  """Slight blur, per-channel stain variation and noise."""
  tissue = cv2.GaussianBlur(tissue, (0, 0), 0.8).astype(np.float32)
  tissue *= np.asarray(stain_scale, np.float32)
  tissue += rng.normal(0, 4, tissue.shape)
  return np.clip(tissue, 0, 255).astype(np.uint8)


def render_patch(rng: np.random.Generator, size: int, morph: GradeMorphology,
                 stain_scale=(1.0, 1.0, 1.0)) -> np.ndarray:
  """A `size` x `size` RGB patch filled with tissue of `morph` (no glass)."""
  tissue = np.empty((size, size, 3), np.uint8)
  tissue[:] = STROMA_RGB
  _draw_morphology(rng, tissue, np.ones((size, size), bool), morph)
  return _scanner_texture(rng, tissue, stain_scale)


def pyramid(level0: np.ndarray, downsamples=PANDA_DOWNSAMPLES) -> List[np.ndarray]:
  """Area-averaged levels; level k is ceil(size / downsample_k) as in PANDA."""
  height, width = level0.shape[:2]
  levels = []
  for downsample in downsamples:
    if downsample == 1:
      levels.append(level0)
      continue
    size = (-(-width // downsample), -(-height // downsample))
    levels.append(cv2.resize(level0, size, interpolation=cv2.INTER_AREA))
  return levels


def write_pyramidal_tiff(path: str, levels: List[np.ndarray],
                         level0_mpp: float = LEVEL0_MPP,
                         jpeg_quality: int = 90,
                         tile_size: int = TIFF_TILE_SIZE) -> None:
  """PANDA layout: one tiled JPEG IFD per level, largest first."""
  pixels_per_cm0 = 1e4 / level0_mpp
  with tifffile.TiffWriter(path) as tif:
    for index, level in enumerate(levels):
      downsample = levels[0].shape[1] / level.shape[1]
      tif.write(
          level,
          photometric="rgb",
          tile=(tile_size, tile_size),
          compression="jpeg",
          compressionargs={"level": jpeg_quality},
          subfiletype=1 if index else 0,
          resolution=(pixels_per_cm0 / downsample, pixels_per_cm0 / downsample),
          resolutionunit="CENTIMETER",
          metadata=None,
      )


def _balanced_labels(rng: np.random.Generator, count: int, classes: int) -> np.ndarray:
  """`count` labels cycling through 0..classes-1, shuffled: every class is
  present whenever count >= classes."""
  labels = np.tile(np.arange(classes), -(-count // classes))[:count]
  rng.shuffle(labels)
  return labels


def _image_id(seed: int, index: int) -> str:
  # PANDA ids are 32 hex characters; derive them from the seed for determinism.
  return hashlib.md5(f"histopipe-synth-{seed}-{index}".encode()).hexdigest()


def write_dataset(out_dir: str, slides: int, seed: int = 0,
                  level0_size: tuple = (3072, 2048), progress: bool = False
                  ) -> List[SyntheticSlide]:
  """Writes `slides` TIFFs under `out_dir/train_images/` and `out_dir/train.csv`.

  Grades cycle through 0..5 in a shuffled order so every grade is present
  whenever `slides >= 6` (real PANDA is skewed towards 0 and 1; the demo wants
  every class represented in a small sample).
  """
  if slides < 1:
    raise ValueError("slides must be >= 1")
  width, height = level0_size
  rng = np.random.default_rng(seed)
  grades = _balanced_labels(rng, slides, classes=6)
  images_dir = make_output_dir(os.path.join(out_dir, "train_images"))
  written = []
  counter = progress_bar("synthesizing slides", slides, enabled=progress)
  for index, grade in enumerate(grades):
    grade = int(grade)
    slide_rng = np.random.default_rng([seed, index])
    image_id = _image_id(seed, index)
    provider = PROVIDERS[int(slide_rng.integers(0, 2))]
    choices = GLEASON_BY_ISUP[grade]
    gleason = choices[int(slide_rng.integers(0, len(choices)))]
    path = os.path.join(images_dir, f"{image_id}.tiff")
    # Cancer covers 30-90% of a malignant core; scanners and stain batches
    # shift colours by a few percent per channel.
    tumour_fraction = float(slide_rng.uniform(0.3, 0.9)) if grade else 0.0
    stain = PROVIDER_STAIN[provider] * slide_rng.normal(1.0, 0.03, 3)
    level0 = render_tissue(slide_rng, height, width,
                           jittered(morphology_for_grade(grade), slide_rng),
                           tumour_fraction=tumour_fraction, stain_scale=stain)
    write_pyramidal_tiff(path, pyramid(level0))
    written.append(SyntheticSlide(image_id, path, provider, grade, gleason))
    counter.update()
  counter.close()
  write_labels(os.path.join(out_dir, "train.csv"), written)
  mark_synthetic(out_dir, seed)
  return written


# Written beside every synthetic dataset: the model card of a model trained
# on it says plainly that it saw no real tissue.
SYNTHETIC_MARKER = "SYNTHETIC_DATA.txt"


def mark_synthetic(out_dir: str, seed: int) -> None:
  with open(os.path.join(out_dir, SYNTHETIC_MARKER), "w") as f:
    f.write(f"Made by `histopipe synth` (seed {seed}): drawn, not scanned tissue. A model "
            "trained on it demonstrates the pipeline and must not be used on patients.\n")


def write_labels(path: str, slides) -> None:
  """PANDA's train.csv for objects with the four label attributes."""
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(PANDA_COLUMNS)
    for slide in slides:
      writer.writerow([getattr(slide, column) for column in PANDA_COLUMNS])


# PatchCamelyon: 96 x 96 px patches at 10x (~1 um/px), half the resolution
# the morphology above is drawn for.
PCAM_PATCH_SIZE = 96
PCAM_DOWNSAMPLE = 2.0
# A positive patch shows tumour morphology (drawn as ISUP grade 4 glands), a
# negative one benign tissue.
PCAM_TUMOUR_GRADE = 4


@dataclasses.dataclass(frozen=True)
class SyntheticPatch:
  id: str
  path: str
  label: int


def write_patch_dataset(out_dir: str, patches: int, seed: int = 0, progress: bool = False
                        ) -> List[SyntheticPatch]:
  """PatchCamelyon's Kaggle layout: `out_dir/train/<id>.tif` (96 x 96 RGB)
  and `out_dir/train_labels.csv` (`id,label`), labels balanced."""
  if patches < 1:
    raise ValueError("patches must be >= 1")
  rng = np.random.default_rng(seed)
  labels = _balanced_labels(rng, patches, classes=2)
  train_dir = make_output_dir(os.path.join(out_dir, "train"))
  written = []
  counter = progress_bar("synthesizing patches", patches, unit="patches", enabled=progress)
  for index, label in enumerate(labels):
    label = int(label)
    patch_rng = np.random.default_rng([seed, index, 96])
    grade = PCAM_TUMOUR_GRADE if label else 0
    morph = at_downsample(jittered(morphology_for_grade(grade), patch_rng), PCAM_DOWNSAMPLE)
    provider = PROVIDERS[int(patch_rng.integers(0, 2))]
    stain = PROVIDER_STAIN[provider] * patch_rng.normal(1.0, 0.03, 3)
    patch_id = hashlib.sha1(f"histopipe-pcam-{seed}-{index}".encode()).hexdigest()
    path = os.path.join(train_dir, f"{patch_id}.tif")
    tifffile.imwrite(path, render_patch(patch_rng, PCAM_PATCH_SIZE, morph, stain),
                     photometric="rgb")
    written.append(SyntheticPatch(patch_id, path, label))
    counter.update()
  counter.close()
  with open(os.path.join(out_dir, "train_labels.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["id", "label"])
    writer.writerows([p.id, p.label] for p in written)
  mark_synthetic(out_dir, seed)
  return written


IDC_PATCH_SIZE = 50  # the IDC dataset's patches: 50 x 50 px at 40x
IDC_PATCHES_PER_PATIENT = 4


def write_idc_dataset(out_dir: str, patches: int, seed: int = 0, progress: bool = False
                      ) -> List[SyntheticPatch]:
  """The breast IDC dataset's layout: `out_dir/<patient>/<0|1>/
  <patient>_idx5_x<X>_y<Y>_class<0|1>.png` (50 x 50 RGB PNG), the label in the
  folder and the name, the patch's position in its slide in the name;
  IDC_PATCHES_PER_PATIENT patches a patient, labels balanced."""
  if patches < 1:
    raise ValueError("patches must be >= 1")
  rng = np.random.default_rng(seed)
  labels = _balanced_labels(rng, patches, classes=2)
  written = []
  counter = progress_bar("synthesizing patches", patches, unit="patches", enabled=progress)
  for index, label in enumerate(labels):
    label = int(label)
    patch_rng = np.random.default_rng([seed, index, IDC_PATCH_SIZE])
    grade = PCAM_TUMOUR_GRADE if label else 0
    morph = at_downsample(jittered(morphology_for_grade(grade), patch_rng), PCAM_DOWNSAMPLE)
    stain = PROVIDER_STAIN[PROVIDERS[0]] * patch_rng.normal(1.0, 0.03, 3)
    patient = str(10000 + seed * 1000 + index // IDC_PATCHES_PER_PATIENT)
    x, y = (IDC_PATCH_SIZE * (1 + index % IDC_PATCHES_PER_PATIENT),
            IDC_PATCH_SIZE * (1 + index // IDC_PATCHES_PER_PATIENT))
    folder = make_output_dir(os.path.join(out_dir, patient, str(label)))
    name = f"{patient}_idx5_x{x}_y{y}_class{label}"
    path = os.path.join(folder, f"{name}.png")
    rgb = render_patch(patch_rng, IDC_PATCH_SIZE, morph, stain)
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
      raise OSError(f"{path}: cannot write")
    written.append(SyntheticPatch(name, path, label))
    counter.update()
  counter.close()
  mark_synthetic(out_dir, seed)
  return written
