"""Fixed position embeddings of patch grids (DiT's and the image projectors' "sincos")."""
import numpy as np


def sincos_2d_positions(height: int, width: int, dim: int) -> np.ndarray:
  """Fixed 2-D sin-cos positions `[height * width, dim]` (row-major tokens), float32.

  The first half of the features encodes the row, the second the column; each half is
  [sin(p w_k), cos(p w_k)] for frequencies w_k = 10000^(-k / (dim / 4)), k < dim / 4.
  """
  if dim % 4:
    raise ValueError(f"2-D sin-cos positions need a width divisible by 4, got {dim}")
  quarter = dim // 4
  freqs = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)

  def encode(pos):
    angles = pos[:, None] * freqs[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  rows, cols = np.meshgrid(np.arange(height, dtype=np.float64),
                           np.arange(width, dtype=np.float64), indexing="ij")
  return np.concatenate([encode(rows.ravel()), encode(cols.ravel())], axis=1).astype(np.float32)
