"""Fast concept binding for Flamingo on ShapeWorld: VQA whose answers are words that only the
prompt's own support chunks define (the open-ended "fast binding" episodes of Frozen,
Tsimpoukelli et al. 2021, on ShapeWorld's colour and shape questions).

An episode draws a question slot of `BINDING_SLOTS` (the colour or the shape question), `ways`
distinct true answers to it, and as many distinct binding words of the `words` new tokens, the
j-th answer bound to the j-th word. Each chunk is an image whose true answer is one of the
episode's, asked its question in that slot and answered by the bound word:

  "<image> what shape is the red object ? <w3> <eoc>"     (the red object is a circle; circle -> w3)

A word means nothing outside its episode (the binding is drawn afresh each time), so with no
support the query is at chance (1 / words); once each answer has a support chunk the words in
context leave 1 / ways, and only matching the query image to the support images does better.
That is in-context learning the shots must carry, which ShapeWorld's ordinary questions (they
name their task and answer type) do not need.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BINDING_SLOTS = (1, 2)  # ShapeWorld's colour and shape questions (mmjax/train/tasks/vqa.py)


def answers_by_slot(source, slots: Sequence[int] = BINDING_SLOTS
                    ) -> dict[int, dict[str, np.ndarray]]:
  """{slot: {true answer: int32 indices of the items of `source` whose question in that slot
  has it}}, answers sorted (each pool's episodes draw from the answers it holds)."""
  found: dict[int, dict[str, list[int]]] = {slot: {} for slot in slots}
  for i in range(len(source)):
    answers = source[i]["answers"]
    for slot in slots:
      found[slot].setdefault(answers[slot], []).append(i)
  return {slot: {a: np.asarray(found[slot][a], np.int32) for a in sorted(found[slot])}
          for slot in slots}


def check_binding_sizes(words: int, ways: int) -> None:
  """ValueError unless an episode of `ways` >= 2 answers can draw `ways` distinct words."""
  if ways < 2 or words < ways:
    raise ValueError(f"binding needs ways >= 2 and words >= ways, got ways={ways}, "
                     f"words={words} (data.binding.ways, data.binding.words)")


class BindingEpisodes:
  """Draws binding episodes over a pool of ShapeWorld items.

  Attributes:
    index: `answers_by_slot` of the pool.
    words: number of binding words (new tokens); an episode uses `ways` of them.
    ways: true answers per episode (2: Frozen's 2-way).
  """

  def __init__(self, index: dict[int, dict[str, np.ndarray]], words: int, ways: int):
    check_binding_sizes(words, ways)
    for slot, answers in index.items():
      if len(answers) < ways:
        raise ValueError(f"the binding pool holds {len(answers)} answers to question slot {slot}, "
                         f"fewer than ways={ways}: use a larger pool")
    self.index, self.words, self.ways = index, words, ways

  def training_chunks(self, rng: np.random.Generator, count: int
                      ) -> tuple[int, list[int], list[int]]:
    """One training row's episode: (slot, `count` pool indices, their binding word ids in
    [0, words)); each chunk's answer is drawn uniformly from the episode's `ways`."""
    slot = BINDING_SLOTS[int(rng.integers(len(BINDING_SLOTS)))]
    answers = sorted(self.index[slot])
    chosen = rng.choice(len(answers), size=self.ways, replace=False)
    words = rng.choice(self.words, size=self.ways, replace=False)
    classes = rng.integers(self.ways, size=count)
    indices = [int(rng.choice(self.index[slot][answers[chosen[c]]])) for c in classes]
    return slot, indices, [int(words[c]) for c in classes]

  def support(self, rng: np.random.Generator, slot: int, query_answer: str, count: int
              ) -> tuple[int, list[int], list[int]]:
    """A test query's episode: (the query's word, `count` support pool indices, their words).

    The query's true answer and `ways - 1` others each get a word; the support goes through
    the answers in rounds, each round every answer once in a random order, so any k-shot
    prefix with k >= ways shows every answer. KeyError if the pool lacks `query_answer`."""
    answers = self.index[slot]
    if query_answer not in answers:
      raise KeyError(f"the binding support pool has no image answering {query_answer!r} to "
                     f"question slot {slot}: use more eval.support_images")
    others = [a for a in answers if a != query_answer]
    episode = [query_answer] + [others[i] for i in rng.choice(len(others), size=self.ways - 1,
                                                               replace=False)]
    words = rng.choice(self.words, size=self.ways, replace=False)
    classes: list[int] = []
    while len(classes) < count:
      classes.extend(int(c) for c in rng.permutation(self.ways))
    classes = classes[:count]
    indices = [int(rng.choice(answers[episode[c]])) for c in classes]
    return int(words[0]), indices, [int(words[c]) for c in classes]
