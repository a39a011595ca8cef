"""Maps that use no model, the floors a trained model must beat.

`centre_prior` is a fixed guess at the image centre: photographers and
benchmark generators put objects near the middle, so a model's pointing has
to beat this guess, not only chance.
"""

from __future__ import annotations

import numpy as np


def centre_prior(n: int, size: int, sigma_fraction: float = 0.25) -> np.ndarray:
  """float32 `[n, size, size]`: an isotropic Gaussian bump at the image centre
  with sigma `sigma_fraction * size`, the same for every sample."""
  c = (size - 1) / 2
  y, x = np.mgrid[0:size, 0:size]
  sigma = sigma_fraction * size
  bump = np.exp(-((x - c) ** 2 + (y - c) ** 2) / (2 * sigma ** 2)).astype(np.float32)
  return np.broadcast_to(bump, (n, size, size))
