"""Visual grounding P(box | expression, image): a box-regression head and coordinate tokens.

Regression (MDETR / TransVG style): a ViT encodes the image into tokens; a bidirectional text
encoder reads the referring expression and cross-attends to them in every block; its pooled
output goes through an MLP to sigmoid (cx, cy, w, h), converted to (x0, y0, x1, y1). Trained
with `box_loss` = l1_weight * L1 + giou_weight * (1 - GIoU) (DETR's weights 5 and 2).

Coordinate tokens (Pix2Seq / OFA): the `Captioner`'s vocabulary is the word vocabulary followed
by `num_bins` coordinate tokens (id = word_vocab_size + bin). A row is BOS + expression + the 4
quantised corners (x0, y0, x1, y1) + EOS, the prompt masked out of the loss. Boxes are decoded
by `mmjax.decoding.greedy` over a step function that allows only coordinate tokens at the 4 box
steps (`restrict_to_coordinates`), and read back from the bin centres.

All boxes are normalised to [0, 1] (fractions of the image width and height).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax import decoding
from mmjax.data.tokenizer import Tokenizer
from mmjax.metrics.boxes import generalized_box_iou
from mmjax.models.captioner import Captioner
from mmjax.nn.transformer import dense, layer_norm

Dtype = Any
NUM_BOX_TOKENS = 4  # x0, y0, x1, y1


# -- box formats and losses ---------------------------------------------------------------------

def _check_boxes(boxes, name: str) -> None:
  if boxes.shape[-1:] != (4,):
    raise ValueError(f"{name} must have shape [..., 4], got {tuple(boxes.shape)}")


def cxcywh_to_xyxy(boxes: jax.Array) -> jax.Array:
  """(cx, cy, w, h) `[..., 4]` -> (x0, y0, x1, y1) `[..., 4]`."""
  _check_boxes(boxes, "boxes")
  centre, size = boxes[..., :2], boxes[..., 2:]
  return jnp.concatenate([centre - size / 2, centre + size / 2], axis=-1)


def xyxy_to_cxcywh(boxes: jax.Array) -> jax.Array:
  """(x0, y0, x1, y1) `[..., 4]` -> (cx, cy, w, h) `[..., 4]`."""
  _check_boxes(boxes, "boxes")
  low, high = boxes[..., :2], boxes[..., 2:]
  return jnp.concatenate([(low + high) / 2, high - low], axis=-1)


def box_loss(pred_boxes: jax.Array, target_boxes: jax.Array, l1_weight: float = 5.0,
             giou_weight: float = 2.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """DETR's matched-box loss: l1_weight * L1 + giou_weight * (1 - GIoU), batch mean.

  Args:
    pred_boxes: `[B, 4]` predicted (x0, y0, x1, y1) in [0, 1].
    target_boxes: `[B, 4]` target boxes, same format.
    l1_weight, giou_weight: the two terms' weights (DETR: 5 and 2).
  Returns:
    scalar loss and {"l1": mean over boxes of the summed |coordinate error|,
    "giou": mean GIoU} (float32 scalars).
  """
  if pred_boxes.ndim != 2 or pred_boxes.shape != target_boxes.shape or pred_boxes.shape[1] != 4:
    raise ValueError(f"pred_boxes and target_boxes must both be [B, 4] (x0, y0, x1, y1), got "
                     f"{tuple(pred_boxes.shape)} and {tuple(target_boxes.shape)}")
  pred_boxes = pred_boxes.astype(jnp.float32)
  target_boxes = target_boxes.astype(jnp.float32)
  l1 = jnp.abs(pred_boxes - target_boxes).sum(-1).mean()
  giou = generalized_box_iou(pred_boxes, target_boxes, eps=1e-7).mean()
  return l1_weight * l1 + giou_weight * (1 - giou), {"l1": l1, "giou": giou}


# -- regression head ----------------------------------------------------------------------------

class RegressionGrounder(nn.Module):
  """ViT image tokens -> image-grounded expression encoder -> pooled -> MLP -> box.

  Attributes:
    image_encoder: `VisionTransformer`: images `[B, H, W, 3]` -> (tokens `[B, S, Wi]`, pooled).
    text_encoder: `TextTransformer` with `cross_attention=True` (and usually `causal=False`):
      (expression ids `[B, L]`, image tokens) -> (features, pooled `[B, Wt]`).
    hidden_dim: width of the MLP's hidden layer.
  """
  image_encoder: nn.Module
  text_encoder: nn.Module
  hidden_dim: int = 256
  dtype: Dtype = jnp.float32

  def setup(self):
    self.head_norm = layer_norm("head_norm", self.dtype)
    self.head_hidden = dense(self.hidden_dim, "head_hidden", ("embed", "mlp"), dtype=self.dtype)
    self.head_out = dense(4, "head_out", ("mlp", None), dtype=self.dtype)

  def encode_image(self, images: jax.Array) -> jax.Array:
    """`[B, H, W, 3]` -> image tokens `[B, S, Wi]` (class token first)."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be float [B, H, W, 3], got shape {tuple(images.shape)}")
    tokens, _ = self.image_encoder(images)
    return tokens

  def predict_boxes(self, image_tokens: jax.Array, expressions: jax.Array) -> jax.Array:
    """Boxes `[B, 4]` float32 (x0, y0, x1, y1) for expressions int `[B, L]` on image tokens."""
    if expressions.ndim != 2 or expressions.shape[0] != image_tokens.shape[0]:
      raise ValueError(f"expressions must be int [B={image_tokens.shape[0]}, L], got shape "
                       f"{tuple(expressions.shape)}")
    _, pooled = self.text_encoder(expressions, image_tokens)
    hidden = nn.gelu(self.head_hidden(self.head_norm(pooled)))
    cxcywh = nn.sigmoid(self.head_out(hidden).astype(jnp.float32))
    return cxcywh_to_xyxy(cxcywh)

  def __call__(self, images: jax.Array, expressions: jax.Array) -> jax.Array:
    """Boxes `[B, 4]` float32 for images `[B, H, W, 3]` and expression ids `[B, L]`."""
    return self.predict_boxes(self.encode_image(images), expressions)


# -- coordinate tokens --------------------------------------------------------------------------

def quantize_coordinates(coordinates, num_bins: int):
  """Bin indices int32 of coordinates in [0, 1]: bin k covers [k / n, (k + 1) / n).

  Coordinates outside [0, 1] are clipped into the first or last bin; 1.0 is in the last.
  Works on numpy and jax arrays of any shape.
  """
  xp = jnp if isinstance(coordinates, jax.Array) else np
  if num_bins < 1:
    raise ValueError(f"num_bins must be >= 1, got {num_bins}")
  bins = xp.floor(xp.asarray(coordinates, xp.float32) * num_bins)
  return xp.clip(bins, 0, num_bins - 1).astype(xp.int32)


def dequantize_coordinates(bins, num_bins: int):
  """Bin centres (k + 0.5) / n float32 of bin indices: within half a bin of the original."""
  xp = jnp if isinstance(bins, jax.Array) else np
  return ((xp.asarray(bins).astype(xp.float32) + 0.5) / num_bins).astype(xp.float32)


def coordinate_example(expression_ids: Sequence[int], box: np.ndarray, context_length: int,
                       tokenizer: Tokenizer, num_bins: int) -> dict[str, np.ndarray]:
  """One training row for the coordinate-token head.

  Args:
    expression_ids: word ids of the referring expression, without specials.
    box: `[4]` (x0, y0, x1, y1) in [0, 1].
    context_length: L, the row length (the Captioner's `max_length` or less).
    tokenizer: the word tokenizer; coordinate token k has id `tokenizer.vocab_size + k`.
    num_bins: number of coordinate tokens.
  Returns:
    tokens int32 `[L]` = BOS + expression + 4 coordinate tokens + EOS + pad, prompt_mask bool
    `[L]` (True at BOS and the expression), prompt int32 `[L]` (BOS + expression, pad-filled)
    and prompt_length int32 `[]`.
  """
  box = np.asarray(box, np.float32)
  if box.shape != (4,):
    raise ValueError(f"box must be float [4] (x0, y0, x1, y1), got shape {box.shape}")
  coordinate_ids = tokenizer.vocab_size + quantize_coordinates(box, num_bins)
  row = [tokenizer.bos_id, *expression_ids, *coordinate_ids.tolist(), tokenizer.eos_id]
  if len(row) > context_length:
    raise ValueError(f"expression + box take {len(row)} tokens with BOS and EOS, more than "
                     f"context_length={context_length}")
  prompt_length = 1 + len(expression_ids)
  tokens = np.full(context_length, tokenizer.pad_id, np.int32)
  tokens[:len(row)] = row
  prompt = np.full(context_length, tokenizer.pad_id, np.int32)
  prompt[:prompt_length] = row[:prompt_length]
  return {"tokens": tokens, "prompt_mask": np.arange(context_length) < prompt_length,
          "prompt": prompt, "prompt_length": np.int32(prompt_length)}


def restrict_to_coordinates(step_fn: decoding.StepFn, prompt_lengths: jax.Array,
                            first_coordinate_id: int, num_bins: int,
                            num_box_tokens: int = NUM_BOX_TOKENS) -> decoding.StepFn:
  """Wraps a decoder step so the `num_box_tokens` steps after the prompt emit coordinates only.

  Row b's generated token t is predicted by the logits at position `prompt_lengths[b] - 1 + t`;
  for t < num_box_tokens every non-coordinate logit there is set to -inf. Other positions
  (the prompt, later steps) pass through unchanged, so the wrapper composes with any decoding
  function of `mmjax.decoding`.

  Args:
    step_fn: the decoder step `(tokens [B, T], cache, positions [B, T]) -> (logits [B, T, V],
      cache)`.
    prompt_lengths: int32 `[B]` valid prompt tokens per row (as given to the decoding call);
      with beam search or `num_return_sequences`, which expand rows after prefill, pass them
      repeated to the expanded rows (`decoding.expand_rows`) instead.
    first_coordinate_id: id of coordinate token 0; tokens [first, first + num_bins) are
      coordinates.
  """
  def restricted_step(tokens, cache, positions):
    logits, cache = step_fn(tokens, cache, positions)
    generated_index = positions - (prompt_lengths[:, None] - 1)               # [B, T]
    is_box_step = (generated_index >= 0) & (generated_index < num_box_tokens)
    vocab = jnp.arange(logits.shape[-1])
    is_coordinate = (vocab >= first_coordinate_id) & (vocab < first_coordinate_id + num_bins)
    blocked = is_box_step[..., None] & ~is_coordinate                          # [B, T, V]
    return jnp.where(blocked, -jnp.inf, logits), cache
  return restricted_step


class CoordinateDecoder:
  """Decodes boxes with a coordinate-token `Captioner` (greedy, coordinates only).

  Attributes:
    model: the Captioner, vocab_size = word_vocab_size + num_bins.
    word_vocab_size: id of coordinate token 0.
    num_bins: number of coordinate tokens.
  """

  def __init__(self, model: Captioner, word_vocab_size: int, num_bins: int, pad_id: int = 0):
    if model.vocab_size != word_vocab_size + num_bins:
      raise ValueError(f"the Captioner's vocab_size={model.vocab_size} must equal the word "
                       f"vocabulary ({word_vocab_size}) + num_bins ({num_bins})")
    self.model, self.word_vocab_size, self.num_bins = model, word_vocab_size, num_bins
    self.pad_id = pad_id

  def decode_tokens(self, params, images: jax.Array, prompt: jax.Array,
                    prompt_lengths: jax.Array, **encoder_inputs) -> jax.Array:
    """Greedy coordinate tokens int32 `[B, 4]` (traceable: call under `jax.jit`).

    Args:
      images: `[B, H, W, 3]`.
      prompt: int32 `[B, P]` BOS + expression, right-padded; P + 4 <= the model's max_length.
      prompt_lengths: int32 `[B]`.
      encoder_inputs: keyword inputs of the model's `init_cache` after the images (OFA: the
        grounding instruction `[B, Ls]`, with prompt = BOS).
    """
    max_length = prompt.shape[1] + NUM_BOX_TOKENS
    if max_length > self.model.max_length:
      raise ValueError(f"prompts of {prompt.shape[1]} tokens + {NUM_BOX_TOKENS} box tokens "
                       f"exceed the Captioner's max_length={self.model.max_length}")
    cache = self.model.init_cache(params, images, max_length, **encoder_inputs)
    prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
    step_fn = restrict_to_coordinates(functools.partial(self.model.decode_step, params),
                                      prompt_lengths, self.word_vocab_size, self.num_bins)
    # The EOS after the box is not needed to read the box: stop after 4 tokens.
    return decoding.greedy(step_fn, cache, prompt, prompt_lengths, max_new_tokens=NUM_BOX_TOKENS,
                           eos_id=None, pad_id=self.pad_id).tokens

  def tokens_to_boxes(self, tokens: jax.Array) -> jax.Array:
    """Coordinate tokens int `[B, 4]` -> boxes float32 `[B, 4]` (bin centres)."""
    return dequantize_coordinates(tokens - self.word_vocab_size, self.num_bins)

  def decode_boxes(self, params, images, prompt, prompt_lengths, **encoder_inputs) -> jax.Array:
    """Boxes float32 `[B, 4]` (x0, y0, x1, y1) from greedy coordinate decoding."""
    return self.tokens_to_boxes(self.decode_tokens(params, images, prompt, prompt_lengths,
                                                   **encoder_inputs))
