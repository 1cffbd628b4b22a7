"""Expert-load heatmaps drawn with NumPy, for TensorBoard image summaries."""

import numpy as np

# Side of the square of pixels that draws one (language, expert) cell of an
# expert-load heatmap: 32 experts give a 256-pixel-wide image.
HEATMAP_CELL_PIXELS = 8


def expert_load_heatmap(counts: np.ndarray,
                        cell_pixels: int = HEATMAP_CELL_PIXELS) -> np.ndarray:
  """Draws a [languages, experts] table of routed slots as an RGB image.

  Each row is normalised to the language's load fractions, and the colour
  shows the fraction relative to the balanced load 1 / E. White is
  balanced. Below it the colour goes through blue to black at no slots, and
  above it through red to dark red at twice the balanced load or more.

  Args:
    counts: [R, E] non-negative routed-slot counts, one row per language.
    cell_pixels: side in pixels of the square that draws one cell.

  Returns:
    [R * cell_pixels, E * cell_pixels, 3] uint8 image (HWC).
  """
  counts = np.asarray(counts, np.float64)
  num_experts = counts.shape[1]
  totals = np.maximum(counts.sum(axis=1, keepdims=True), 1e-12)
  # 0 = no slots, 0.5 = balanced, 1 = twice the balanced load or more.
  level = np.clip(counts / totals * num_experts / 2, 0.0, 1.0)
  anchors = np.array([[0, 0, 0], [40, 90, 200], [255, 255, 255],
                      [220, 50, 40], [110, 0, 0]], np.float64)
  positions = np.linspace(0.0, 1.0, len(anchors))
  rgb = np.stack([np.interp(level, positions, anchors[:, c])
                  for c in range(3)], axis=-1)
  image = np.repeat(np.repeat(rgb, cell_pixels, axis=0), cell_pixels, axis=1)
  return np.round(image).astype(np.uint8)
