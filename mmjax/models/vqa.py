"""Visual question answering: a classifier head over an image-grounded question encoder, and
a generative answerer built on the `Captioner`.

Classifier (the spec's P(a | q, I) = softmax(W Fusion(f_Q(q), f_I(I)))): a ViT encodes the image
into tokens f_I(I); a bidirectional text encoder reads the question and cross-attends to those
tokens in every block (the fusion); its pooled output goes through an MLP to logits over a closed
answer vocabulary.

Generative: a `Captioner` is trained on BOS + question + answer + EOS with the prompt (BOS +
question) masked out of the loss, and answers by greedy decoding constrained by a `PrefixTrie`
to the answer list, so every decoded answer is in the list. For single-token answers (all of
ShapeWorld's), constrained greedy picks argmax over the list of log P(answer | question, image),
i.e. the same answer as ranking the list with `mmjax.decoding.sequence_log_probs` on the answer
tokens (without EOS).
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
from mmjax.data.shapeworld_render import SHAPES
from mmjax.data.shapeworld_text import COLOURS, NUMBER_WORDS, SIZES
from mmjax.data.tokenizer import Tokenizer
from mmjax.models.captioner import Captioner
from mmjax.nn.transformer import dense, layer_norm

Dtype = Any


def shapeworld_answers() -> tuple[str, ...]:
  """Every answer a ShapeWorld question can have: number words, colours, shapes, sizes, yes/no.

  Taken from the data module's word lists, so a new colour or shape there is a new answer here.
  """
  answers = (*NUMBER_WORDS, *COLOURS, *SHAPES, *SIZES, "yes", "no")
  if len(set(answers)) != len(answers):
    raise AssertionError(f"ShapeWorld answer words are not distinct: {answers}")
  return answers


SHAPEWORLD_ANSWERS: tuple[str, ...] = shapeworld_answers()


def _check_images(images: jax.Array) -> None:
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be float [B, H, W, 3], got shape {tuple(images.shape)}")


class VQAClassifier(nn.Module):
  """ViT image tokens -> image-grounded question encoder -> pooled -> MLP -> answer logits.

  Attributes:
    image_encoder: `VisionTransformer`: images `[B, H, W, 3]` -> (tokens `[B, S, Wi]`, pooled).
    question_encoder: `TextTransformer` with `cross_attention=True` (and usually `causal=False`):
      (question ids `[B, L]`, image tokens) -> (features, pooled `[B, Wt]`).
    num_answers: A, the size of the answer vocabulary.
    hidden_dim: width of the MLP's hidden layer.
  """
  image_encoder: nn.Module
  question_encoder: nn.Module
  num_answers: int
  hidden_dim: int = 256
  dtype: Dtype = jnp.float32

  def setup(self):
    self.head_norm = layer_norm("head_norm", self.dtype)
    self.head_hidden = dense(self.hidden_dim, "head_hidden", ("embed", "mlp"), dtype=self.dtype)
    self.head_out = dense(self.num_answers, "head_out", ("mlp", None), dtype=self.dtype)

  def encode_image(self, images: jax.Array) -> jax.Array:
    """`[B, H, W, 3]` -> image tokens `[B, S, Wi]` (class token first)."""
    _check_images(images)
    tokens, _ = self.image_encoder(images)
    return tokens

  def answer_logits(self, image_tokens: jax.Array, questions: jax.Array) -> jax.Array:
    """Logits `[B, A]` float32 of questions int `[B, L]` about encoded images `[B, S, Wi]`."""
    if questions.ndim != 2 or questions.shape[0] != image_tokens.shape[0]:
      raise ValueError(f"questions must be int [B={image_tokens.shape[0]}, L], got shape "
                       f"{tuple(questions.shape)}")
    _, pooled = self.question_encoder(questions, image_tokens)
    hidden = nn.gelu(self.head_hidden(self.head_norm(pooled)))
    return self.head_out(hidden).astype(jnp.float32)

  def __call__(self, images: jax.Array, questions: jax.Array) -> jax.Array:
    """Answer logits `[B, A]` float32 for images `[B, H, W, 3]` and question ids `[B, L]`."""
    return self.answer_logits(self.encode_image(images), questions)


# -- generative answering with the Captioner --------------------------------------------------

def generative_example(question_ids: Sequence[int], answer_ids: Sequence[int],
                       context_length: int, tokenizer: Tokenizer) -> dict[str, np.ndarray]:
  """One training row: BOS + question + answer + EOS, and which tokens are the prompt.

  Args:
    question_ids, answer_ids: token ids without specials.
    context_length: L, the row length (the Captioner's `max_length` or less).
  Returns:
    tokens int32 `[L]` (pad-filled), prompt_mask bool `[L]` (True at BOS and the question),
    prompt int32 `[L]` (BOS + question, pad-filled) and prompt_length int32 `[]`.
  """
  row = [tokenizer.bos_id, *question_ids, *answer_ids, tokenizer.eos_id]
  if len(row) > context_length:
    raise ValueError(f"question + answer take {len(row)} tokens with BOS and EOS, more than "
                     f"context_length={context_length}")
  prompt_length = 1 + len(question_ids)
  tokens = np.full(context_length, tokenizer.pad_id, np.int32)
  tokens[:len(row)] = row
  prompt = np.full(context_length, tokenizer.pad_id, np.int32)
  prompt[:prompt_length] = row[:prompt_length]
  return {"tokens": tokens, "prompt_mask": np.arange(context_length) < prompt_length,
          "prompt": prompt, "prompt_length": np.int32(prompt_length)}


def answer_token_table(answers: Sequence[str], tokenizer: Tokenizer) -> np.ndarray:
  """int32 `[A, T]` token ids of each answer, pad-filled (T = longest answer)."""
  encoded = [tokenizer.encode(answer) for answer in answers]
  for answer, ids in zip(answers, encoded):
    if tokenizer.unk_id in ids:
      raise ValueError(f"answer {answer!r} has a word outside the tokenizer's vocabulary")
  table = np.full((len(answers), max(map(len, encoded))), tokenizer.pad_id, np.int32)
  for row, ids in enumerate(encoded):
    table[row, :len(ids)] = ids
  return table


class GenerativeAnswerer:
  """Constrained greedy answering with a `Captioner` over a closed answer list.

  Attributes:
    model: the Captioner (its `max_length` bounds prompt + answer + EOS).
    answer_tokens: int32 `[A, T]` answer ids (pad-filled), e.g. from `answer_token_table`.
    trie: the `PrefixTrie` of the answers, each closed by `end_id`.
    end_id: the token that closes an answer: the tokenizer's EOS, or Flamingo's end-of-chunk.
  """

  def __init__(self, model: Captioner, answers: Sequence[str], tokenizer: Tokenizer,
               end_id: int | None = None):
    self.model, self.answers, self.tokenizer = model, tuple(answers), tokenizer
    self.end_id = tokenizer.eos_id if end_id is None else int(end_id)
    self.answer_tokens = answer_token_table(answers, tokenizer)
    self.answer_lengths = (self.answer_tokens != tokenizer.pad_id).sum(1).astype(np.int32)
    if len({tuple(row) for row in self.answer_tokens}) != len(answers):
      raise ValueError(f"answers {answers} do not tokenize to distinct sequences")
    self.trie = decoding.build_prefix_trie(
        [row[:n] for row, n in zip(self.answer_tokens, self.answer_lengths)], self.end_id)
    self.max_new_tokens = int(self.answer_tokens.shape[1]) + 1  # the answer, then its end

  def _cache(self, params, images: jax.Array, prompt: jax.Array, repeats: int,
             encoder_inputs: dict):
    # One image per row [B, H, W, 3], or Flamingo's several [B, M, H, W, 3].
    if images.ndim not in (4, 5) or images.shape[-1] != 3:
      raise ValueError(f"images must be float [B, H, W, 3] (or [B, M, H, W, 3] for several per "
                       f"row), got shape {tuple(images.shape)}")
    max_length = prompt.shape[1] + self.max_new_tokens
    if max_length > self.model.max_length:
      raise ValueError(f"prompts of {prompt.shape[1]} tokens + {self.max_new_tokens} answer "
                       f"tokens exceed the Captioner's max_length={self.model.max_length}")
    cache = self.model.init_cache(params, images, max_length, **encoder_inputs)
    return decoding.expand_rows(cache, repeats) if repeats > 1 else cache

  def decode(self, params, images: jax.Array, prompt: jax.Array, prompt_lengths: jax.Array,
             questions_per_image: int = 1, **encoder_inputs) -> decoding.DecodeOutput:
    """Constrained greedy answers (traceable: call under `jax.jit`).

    Args:
      images: `[B, H, W, 3]` (Flamingo: `[B, M, H, W, 3]`), encoded once each.
      prompt: int32 `[B * Q, P]` BOS + question, right-padded; rows b*Q .. b*Q+Q-1 ask about
        image b (Q = `questions_per_image`).
      prompt_lengths: int32 `[B * Q]`.
      encoder_inputs: keyword inputs of the model's `init_cache` after the images (OFA: the
        question as its `instruction` `[B, Ls]`, with prompt = BOS).
    Returns:
      DecodeOutput: tokens int32 `[B * Q, T + 1]` (answer + end, pad after), lengths, scores.
    """
    cache = self._cache(params, images, prompt, questions_per_image, encoder_inputs)
    return decoding.greedy(functools.partial(self.model.decode_step, params), cache, prompt,
                           prompt_lengths, max_new_tokens=self.max_new_tokens,
                           eos_id=self.end_id, pad_id=self.tokenizer.pad_id,
                           constraint=self.trie)

  def answer_log_probs(self, params, images: jax.Array, prompt: jax.Array,
                       prompt_lengths: jax.Array, questions_per_image: int = 1,
                       with_eos: bool = False, **encoder_inputs) -> jax.Array:
    """float32 `[B * Q, A]`: log P(answer tokens [+ end] | prompt, image) for every answer."""
    cache = self._cache(params, images, prompt, questions_per_image, encoder_inputs)
    candidates, lengths = self.answer_tokens, self.answer_lengths
    if with_eos:
      candidates = np.concatenate([candidates, np.full((len(candidates), 1), self.tokenizer.pad_id,
                                                       np.int32)], axis=1)
      candidates[np.arange(len(candidates)), lengths] = self.end_id
      lengths = lengths + 1
    return decoding.sequence_log_probs(functools.partial(self.model.decode_step, params), cache,
                                       prompt, prompt_lengths, jnp.asarray(candidates),
                                       jnp.asarray(lengths))

  def answer_indices(self, decoded_tokens: np.ndarray) -> np.ndarray:
    """int `[N]` index into the answer list of each decoded row `[N, T + 1]`; -1 if none."""
    decoded_tokens = np.asarray(decoded_tokens)
    width = self.max_new_tokens
    table = np.full((len(self.answers), width), self.tokenizer.pad_id, np.int32)
    table[:, :self.answer_tokens.shape[1]] = self.answer_tokens
    table[np.arange(len(self.answers)), self.answer_lengths] = self.end_id
    match = (decoded_tokens[:, None, :] == table[None]).all(-1)  # [N, A]
    return np.where(match.any(1), match.argmax(1), -1)
