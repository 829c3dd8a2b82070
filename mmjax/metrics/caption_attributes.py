"""Attribute accuracy of generated captions: do they name the objects their images show?

Judged against an image's structured labels (e.g. ShapeWorld's size, colour and shape indices
per object), on captions already split into words (`mmjax.data.tokenizer.split_words`), so this
module depends on no tokenizer or data set.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _first_word_index(words: Sequence[str], vocab: Sequence[str]) -> int:
  """Index in `vocab` of the first of `words` that is in it, or -1."""
  for word in words:
    if word in vocab:
      return list(vocab).index(word)
  return -1


def _names_together(words: Sequence[str], phrase: Sequence[str]) -> bool:
  """Whether `phrase` occurs as consecutive words in `words`."""
  words, phrase, n = list(words), list(phrase), len(phrase)
  return any(words[i:i + n] == phrase for i in range(len(words) - n + 1))


def attribute_metrics(caption_words: Sequence[Sequence[str]], labels: Mapping[str, np.ndarray],
                      vocabularies: Mapping[str, Sequence[str]]) -> dict[str, float]:
  """How well generated captions name the objects of their images.

  Args:
    caption_words: N generated captions, each as its list of words.
    labels: num_objects int `[N]` and, per attribute of `vocabularies`, int `[N, M]` indices
      into that attribute's vocabulary (-1 padded past num_objects).
    vocabularies: attribute name -> its words, in the order the words are said: ShapeWorld's
      {"size": SIZES, "colour": COLOURS, "shape": SHAPES} names "small red circle".
  Returns:
    object_accuracy: mean over images of the fraction of its objects whose attribute words
      appear together, in `vocabularies` order ("small red circle"), in the caption.
    For single-object images (if any): `<attribute>_accuracy`, the fraction whose first word
    of that attribute's vocabulary in the caption is the true one, and
    single_object_accuracy, all attributes right.
  """
  if len(caption_words) != len(labels["num_objects"]):
    raise ValueError(f"got {len(caption_words)} captions but labels for "
                     f"{len(labels['num_objects'])} images")
  missing = sorted(set(vocabularies) - set(labels))
  if missing:
    raise ValueError(f"labels have no {missing} (they have {sorted(labels)})")
  per_image, single, num_single = [], {name: [] for name in vocabularies}, 0
  for index, words in enumerate(caption_words):
    count = int(labels["num_objects"][index])
    named = [_names_together(words, [vocab[int(labels[name][index, k])]
                                     for name, vocab in vocabularies.items()])
             for k in range(count)]
    per_image.append(np.mean(named))
    if count == 1:
      num_single += 1
      for name, vocab in vocabularies.items():
        single[name].append(_first_word_index(words, vocab) == int(labels[name][index, 0]))
  results = {"object_accuracy": float(np.mean(per_image))}
  if num_single:
    for name, hits in single.items():
      results[f"{name}_accuracy"] = float(np.mean(hits))
    results["single_object_accuracy"] = float(np.mean(np.logical_and.reduce(
        [single[name] for name in vocabularies])))
  return results
