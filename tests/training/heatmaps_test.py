"""Tests for the expert-load heatmap."""

import numpy as np
from sutra_jax.training import heatmaps


def test_heatmap_shape_and_colours():
  counts = np.array([[5.0, 5.0, 5.0, 5.0],    # balanced
                     [20.0, 0.0, 0.0, 0.0]])  # all on expert 0

  image = heatmaps.expert_load_heatmap(counts, cell_pixels=3)

  assert image.shape == (6, 12, 3)
  assert image.dtype == np.uint8
  np.testing.assert_array_equal(image[:3], 255)
  # Four times the balanced load saturates; an idle expert is black.
  assert tuple(image[3, 0]) == (110, 0, 0)
  np.testing.assert_array_equal(image[3:, 3:], 0)
