"""Tissue mask, tile scoring and selection on small arrays."""

import cv2
import numpy as np
import pytest

from histopipe.data import synthetic
from histopipe.slides import tissue

PINK = (230, 170, 205)
WHITE = (245, 245, 245)


def _image(height, width):
  image = np.empty((height, width, 3), np.uint8)
  image[:] = WHITE
  return image


def test_mask_finds_stained_tissue_and_ignores_glass():
  image = _image(100, 100)
  image[20:60, 30:90] = PINK
  mask = tissue.tissue_mask(image)
  assert mask[20:60, 30:90].mean() > 0.95
  assert mask.sum() - mask[20:60, 30:90].sum() < 40


def test_mask_of_blank_slide_is_empty_and_specks_are_removed():
  image = _image(200, 200)
  assert not tissue.tissue_mask(image).any()
  image[10, 10] = PINK  # one pixel of dust
  assert not tissue.tissue_mask(image).any()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
  return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def stained():
  """A synthetic H&E biopsy thumbnail and its tissue mask."""
  image = synthetic.render_tissue(np.random.default_rng(0), 768, 1024,
                                  synthetic.morphology_for_grade(2))
  return image, tissue.tissue_mask(image)


@pytest.mark.parametrize("saturation_kept", [0.0, 0.15])
def test_grayscale_and_faded_slides_have_the_tissue_of_the_stained_one(stained,
                                                                      saturation_kept):
  """The same biopsy with its colour gone or faded to 15% of its saturation:
  found by darkness, the mask matches the stained one's (saturation alone
  found 0% and 14% of it)."""
  image, reference = stained
  hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
  hsv[..., 1] = (hsv[..., 1] * saturation_kept).astype(np.uint8)
  faded = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
  assert reference.mean() > 0.15
  assert not tissue.is_fluorescence(faded)
  assert _iou(tissue.tissue_mask(faded), reference) > 0.9


def test_a_grayscale_scan_has_the_tissue_of_the_stained_one(stained):
  image, reference = stained
  gray = np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=-1)
  assert _iou(tissue.tissue_mask(gray), reference) > 0.9


def test_fluorescence_tissue_is_what_shines(stained):
  """A dark-field image (the stained biopsy's darkness as blue light, as a
  DAPI scan): tissue is the bright part, the dark background is not."""
  image, reference = stained
  light = 255 - cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
  dapi = np.zeros_like(image)
  dapi[..., 2] = light
  assert tissue.is_fluorescence(dapi)
  mask = tissue.tissue_mask(dapi)
  assert _iou(mask, reference) > 0.8
  assert not mask[0:20, 0:20].any() or reference[0:20, 0:20].any()


def test_tile_fractions_follow_the_mask_at_lower_resolution():
  mask = np.zeros((10, 20), bool)  # a 1/8 thumbnail of an 80 x 160 level
  mask[:5, :10] = True  # the top-left quarter is tissue
  fractions = tissue.tile_tissue_fractions(mask, level_width=160, level_height=80,
                                           tile_size=40)
  assert fractions.shape == (2, 4)
  np.testing.assert_allclose(fractions, [[1, 1, 0, 0], [0, 0, 0, 0]])


def test_partial_edge_tiles_count_their_missing_part_as_background():
  mask = np.ones((10, 10), bool)
  fractions = tissue.tile_tissue_fractions(mask, level_width=100, level_height=100,
                                           tile_size=60)
  assert fractions.shape == (2, 2)
  assert fractions[0, 0] == 1.0
  assert fractions[1, 1] == pytest.approx((40 * 40) / (60 * 60))  # 40 px of 60 inside


def test_select_tiles_keeps_best_above_minimum_with_stable_ties():
  fractions = np.array([[0.9, 0.2, 0.9], [0.5, 1.0, 0.05]])
  chosen = tissue.select_tiles(fractions, tiles_per_slide=3, min_tissue_fraction=0.3)
  assert [(c.row, c.col) for c in chosen] == [(1, 1), (0, 0), (0, 2)]
  all_chosen = tissue.select_tiles(fractions, tiles_per_slide=10, min_tissue_fraction=0.3)
  assert len(all_chosen) == 4  # 0.2 and 0.05 are under the minimum
  assert tissue.select_tiles(fractions, 3, min_tissue_fraction=1.01) == []
