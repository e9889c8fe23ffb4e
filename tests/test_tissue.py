"""Tissue mask, tile scoring and selection on small arrays."""

import numpy as np
import pytest

from histopipe.components import tissue

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
