"""End-of-run PNGs (matplotlib, headless)."""
from __future__ import annotations

import pathlib
import textwrap

import numpy as np

from mmjax.train.logging import read_jsonl


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def loss_curve(workdir: pathlib.Path) -> pathlib.Path:
  """Plots train loss (train.jsonl) and eval metrics (metrics.jsonl) to `<workdir>/loss.png`."""
  plt = _pyplot()
  train = read_jsonl(workdir / "train.jsonl")
  evals = read_jsonl(workdir / "metrics.jsonl")
  fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(10, 4))
  if train:
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
  ax_loss.set_xlabel("step")
  ax_loss.set_ylabel("loss")
  ax_loss.set_yscale("log")
  ax_loss.legend()
  for key in sorted({k for r in evals for k in r} - {"step", "loss"}):
    points = [(r["step"], r[key]) for r in evals if isinstance(r.get(key), (int, float))]
    if points:
      ax_eval.plot(*zip(*points), marker="o", label=key)
  ax_eval.set_xlabel("step")
  ax_eval.set_ylim(0, 1.02)
  ax_eval.legend(fontsize=7)
  fig.tight_layout()
  path = workdir / "loss.png"
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def retrieval_grid(path: pathlib.Path, images: np.ndarray, captions: list[list[str]]
                   ) -> pathlib.Path:
  """A row per image `[N, H, W, 3]` in [0, 1], with its top retrieved captions beside it."""
  plt = _pyplot()
  rows = len(images)
  fig, axes = plt.subplots(rows, 2, figsize=(8, 1.6 * rows),
                           gridspec_kw={"width_ratios": [1, 3]}, squeeze=False)
  for (ax_img, ax_txt), image, caps in zip(axes, images, captions):
    ax_img.imshow(np.clip(image, 0, 1), interpolation="nearest")
    ax_img.axis("off")
    ax_txt.axis("off")
    text = "\n".join(f"{i + 1}. " + textwrap.shorten(c, 60) for i, c in enumerate(caps))
    ax_txt.text(0, 0.5, text, va="center", fontsize=9, family="monospace")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def save_image_grid(path: pathlib.Path, images: np.ndarray, columns: int, zoom: int = 1,
                    padding: int = 2) -> pathlib.Path:
  """Writes images `[N, H, W, 3]` in [0, 1] as a PNG grid of `columns` per row.

  Each image is upscaled `zoom` times (nearest); the PNG is
  `columns * (zoom W + padding) + padding` wide and `rows * (zoom H + padding) + padding` high.
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or not len(images):
    raise ValueError(f"images must be [N, H, W, 3] with N >= 1, got shape {images.shape}")
  count, height, width, _ = images.shape
  rows = -(-count // columns)
  cell_h, cell_w = zoom * height + padding, zoom * width + padding
  canvas = np.full((rows * cell_h + padding, columns * cell_w + padding, 3), 255, np.uint8)
  pixels = np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)
  pixels = pixels.repeat(zoom, axis=1).repeat(zoom, axis=2)
  for index, image in enumerate(pixels):
    top = padding + (index // columns) * cell_h
    left = padding + (index % columns) * cell_w
    canvas[top:top + zoom * height, left:left + zoom * width] = image
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(canvas).save(path)
  return path
