"""Image and text embeddings of a public CLIP checkpoint or of a trained mmjax run.

`EmbeddingModel` gives both sources one interface (`embed_images`, `embed_texts`,
`logit_scale`, `image_size`):

- `EmbeddingModel.from_checkpoint(path)`: an open_clip / OpenAI CLIP ViT `.safetensors` (or
  `.npz`) through `mmjax.convert.load_clip`. Images are resized / centre-cropped to the model's
  size and normalised with OpenAI's mean and std (`normalize_images`, as open_clip's
  preprocessing); texts go through CLIP's BPE (`ClipTokenizer`, the packaged merges or
  `vocab_path`) at the model's context length.
- `EmbeddingModel.from_workdir(workdir)`: the newest checkpoint that restores of a `mmjax train`
  run of a two-tower task (contrastive, BLIP), read-only (nothing in the workdir is written or
  renamed). Images are fed as the task's data pipeline fed them in training: float32 in [0, 1]
  at `config.data.image_size` (`config.data.resize`); texts go through the task's tokenizer at
  `config.data.context_length`.

Embeddings are the model's `encode_image` / `encode_text`: float32 `[N, E]`, L2-normalised,
computed in fixed-size batches (one compilation) sharded over the devices' data axis.
"""
from __future__ import annotations

import functools
import math
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmjax import image_folder
from mmjax.data.folder import to_square_rgb
from mmjax.data.tokenizer import check_text
from mmjax.errors import CheckpointMismatchError, UserError
from mmjax.train import sharding

# How pixels reach the image tower: "clip" = OpenAI mean/std normalisation, "unit" = [0, 1].
PIXEL_MODES = ("clip", "unit")
DEFAULT_BATCH_SIZE = 64
_TWO_TOWER_METHODS = ("encode_image", "encode_text", "logit_params")


@functools.partial(jax.jit, static_argnums=(0, 1))
def _encode_images(model, pixels: str, params, images):
  """uint8 `[B, S, S, 3]` -> normalised float32 `[B, E]`."""
  if pixels == "clip":
    from mmjax.convert.clip import normalize_images
    inputs = normalize_images(images)
  else:
    inputs = images.astype(jnp.float32) / jnp.float32(255)
  return model.apply({"params": params}, inputs, method=model.encode_image)


@functools.partial(jax.jit, static_argnums=(0,))
def _encode_texts(model, params, tokens):
  """int32 `[B, L]` -> normalised float32 `[B, E]`."""
  return model.apply({"params": params}, tokens, method=model.encode_text)


def _check_batch_size(batch_size: int) -> int:
  if int(batch_size) < 1:
    raise ValueError(f"batch size must be >= 1, got {batch_size}")
  return int(batch_size)


def _vit_image_size(model, params) -> int:
  """The side S a `load_clip` model was trained at: its cls-pooled ViT has 1 + (S / p)^2
  position embeddings."""
  grid = math.isqrt(params["image_encoder"]["pos_embed"].shape[0] - 1)
  return grid * model.image_encoder.patch_size


class EmbeddingModel:
  """A two-tower image-text model ready to embed host images and texts (module docstring).

  Attributes:
    model: the Flax module (`encode_image`, `encode_text`, `logit_params`).
    params: its params, placed on `mesh`.
    mesh: the device mesh the batches are sharded over.
    tokenizer: the text tokenizer (`encode_batch(texts, context_length)`).
    context_length: token rows L fed to the text tower.
    image_size: side S of the square images fed to the image tower.
    pixels: "clip" (OpenAI mean/std normalisation) or "unit" ([0, 1] floats).
    resize: how an image becomes square ("center_crop" or "stretch").
    logit_scale: the inverse temperature exp(logit_scale) (clipped at 100, as in training):
      zero-shot logits are `logit_scale * cosine`.
    description: where the model came from, for people and output files.
  """

  def __init__(self, model: Any, params: Any, mesh: jax.sharding.Mesh, *, tokenizer: Any,
               context_length: int, image_size: int, pixels: str, resize: str = "center_crop",
               description: str = ""):
    if pixels not in PIXEL_MODES:
      raise ValueError(f"pixels must be one of {PIXEL_MODES}, got {pixels!r}")
    self.model, self.params, self.mesh = model, params, mesh
    self.tokenizer, self.context_length = tokenizer, int(context_length)
    self.image_size, self.pixels, self.resize = int(image_size), pixels, resize
    self.description = description
    log_scale = model.apply({"params": params}, method=model.logit_params)["logit_scale"]
    self.logit_scale = float(np.exp(sharding.to_host(log_scale)))

  def __repr__(self) -> str:
    return (f"EmbeddingModel({self.description}, image_size={self.image_size}, "
            f"context_length={self.context_length})")

  @classmethod
  def from_checkpoint(cls, path: str | pathlib.Path, *, quick_gelu: bool | None = None,
                      vocab_path: str | pathlib.Path | None = None,
                      vision_heads: int | None = None, text_heads: int | None = None,
                      devices: Sequence[jax.Device] | None = None) -> "EmbeddingModel":
    """An open_clip / OpenAI CLIP ViT state dict (`load_clip`'s arguments); `vocab_path`: a CLIP
    merges file for the tokenizer (None: the packaged OpenAI one)."""
    from mmjax.convert.clip import load_clip
    from mmjax.data.clip_tokenizer import ClipTokenizer
    model, params = load_clip(path, quick_gelu=quick_gelu, vision_heads=vision_heads,
                              text_heads=text_heads)
    tokenizer = ClipTokenizer(vocab_path)
    text_tower = model.text_encoder
    if (tokenizer.vocab_size, tokenizer.eos_id) != (text_tower.vocab_size, text_tower.eos_id):
      raise CheckpointMismatchError(
          f"the tokenizer {tokenizer} has {tokenizer.vocab_size} tokens (end of text "
          f"{tokenizer.eos_id}) but {path} has {text_tower.vocab_size} (end of text "
          f"{text_tower.eos_id}); pass --vocab with the merges file the checkpoint was trained "
          "with")
    mesh = sharding.make_mesh({"data": -1}, devices)
    return cls(model, sharding.replicate_from_host(params, mesh), mesh, tokenizer=tokenizer,
               context_length=text_tower.context_length,
               image_size=_vit_image_size(model, params), pixels="clip",
               description=f"checkpoint {path}")

  @classmethod
  def from_workdir(cls, workdir: str | pathlib.Path, *,
                   devices: Sequence[jax.Device] | None = None) -> "EmbeddingModel":
    """The newest checkpoint that restores of the `mmjax train` run in `workdir` (read-only)."""
    from mmjax.train.config import load_run_config
    from mmjax.train.restore import restore_params
    workdir = pathlib.Path(workdir)
    config = load_run_config(workdir, hint="--workdir takes the folder `mmjax train "
                                           "--workdir` trained in")
    run = restore_params(config, workdir, devices=devices, read_only=True)
    model = run.task.model
    missing = [m for m in _TWO_TOWER_METHODS if not hasattr(model, m)]
    if missing or not hasattr(run.task, "tokenizer"):
      raise UserError(f"the run in {workdir} trains task {config.task!r}, whose model "
                      f"{type(model).__name__} has no {' / '.join(missing) or 'tokenizer'}; "
                      "embeddings need a two-tower image-text run (task 'contrastive' or "
                      "'blip')")
    data = config.data
    return cls(model, run.params, run.mesh, tokenizer=run.task.tokenizer,
               context_length=data.context_length, image_size=data.image_size, pixels="unit",
               resize=data.get("resize", "center_crop"),
               description=f"run {workdir} (step {run.step})")

  # -- images ---------------------------------------------------------------------------------

  def _embed_pixels(self, images: np.ndarray, batch_size: int) -> np.ndarray:
    """uint8 `[n, S, S, 3]`, n <= batch_size -> `[n, E]` (padded to `batch_size` rows)."""
    encode = functools.partial(_encode_images, self.model, self.pixels, self.params)
    [(count, embeddings)] = sharding.map_in_chunks(encode, (images,), self.mesh, batch_size)
    return np.asarray(embeddings[:count], np.float32)

  def _embed_stream(self, images: Iterable[np.ndarray], count: int,
                    batch_size: int) -> np.ndarray:
    batch_size = min(_check_batch_size(batch_size), count)
    chunks, pending = [], []
    for image in images:
      pending.append(image)
      if len(pending) == batch_size:
        chunks.append(self._embed_pixels(np.stack(pending), batch_size))
        pending = []
    if pending:
      chunks.append(self._embed_pixels(np.stack(pending), batch_size))
    return np.concatenate(chunks)

  def _square(self, image: Any) -> np.ndarray:
    if isinstance(image, np.ndarray):
      if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"an image array must be uint8 [H, W] or [H, W, C], got {image.dtype} "
                         f"{image.shape}")
      return to_square_rgb(image, self.image_size, self.resize)
    return image_folder.read_image(image, self.image_size, self.resize)

  def embed_images(self, images: Sequence[str | pathlib.Path | np.ndarray], *,
                   batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Image files or uint8 arrays `[H, W(, C)]` -> float32 `[N, E]`, L2-normalised.

    Each image is made square at `image_size` first (`resize`); an unreadable file is a
    DataError naming it.
    """
    if not len(images):
      raise ValueError("embed_images needs at least one image, got none")
    return self._embed_stream(map(self._square, images), len(images), batch_size)

  def embed_image_files(self, paths: Sequence[pathlib.Path], *, skip_bad: bool = False,
                        batch_size: int = DEFAULT_BATCH_SIZE
                        ) -> tuple[np.ndarray, list[pathlib.Path]]:
    """(float32 `[N', E]`, the N' paths embedded) of image files, read one batch at a time.

    An unreadable file is a DataError naming it, or with `skip_bad` is skipped with a warning.
    """
    if not len(paths):
      raise ValueError("embed_image_files needs at least one path, got none")
    kept = []

    def images():
      for path, image in image_folder.readable_images(paths, self.image_size, self.resize,
                                                       skip_bad=skip_bad):
        kept.append(path)
        yield image

    embeddings = self._embed_stream(images(), len(paths), batch_size)
    return embeddings, kept

  # -- texts ----------------------------------------------------------------------------------

  def embed_texts(self, texts: Sequence[str], *,
                  batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Texts -> float32 `[N, E]`, L2-normalised (tokenised at `context_length`, longer texts
    truncated as the tokenizer does). An empty text is a ValueError naming its index."""
    if isinstance(texts, str) or not len(texts):
      raise ValueError(f"embed_texts needs a non-empty sequence of str, got {texts!r}")
    for index, text in enumerate(texts):
      check_text(text, f"text {index}")
    batch_size = min(_check_batch_size(batch_size), len(texts))
    encode = functools.partial(_encode_texts, self.model, self.params)
    chunks = []
    for start in range(0, len(texts), batch_size):
      tokens = self.tokenizer.encode_batch(list(texts[start:start + batch_size]),
                                           self.context_length)
      [(count, embeddings)] = sharding.map_in_chunks(encode, (tokens,), self.mesh, batch_size)
      chunks.append(np.asarray(embeddings[:count], np.float32))
    return np.concatenate(chunks)
