"""ShapeWorld language: captions, questions/answers and referring expressions.

Everything here is generated from a closed set of templates and attribute words, so `VOCAB`
covers every word ShapeWorld ever emits (tests check there is no unknown token).

Spatial relations use the tight boxes: A is "left of" B iff A's right edge is left of B's left
edge (likewise "right of", "above", "below"). ShapeWorld places objects so that every pair is
separated along x or y, so every pair has at least one true relation.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from mmjax.data.shapeworld_render import SHAPES
from mmjax.data.tokenizer import WordTokenizer, split_words

COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "white")
SIZES = ("small", "large")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "cross": "crosses", "diamond": "diamonds"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")
RELATIONS = ("left of", "right of", "above", "below")
_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_REL_LONG = {"left of": "to the left of", "right of": "to the right of", "above": "above",
             "below": "below"}
_EXTREMES = ("leftmost", "rightmost", "topmost", "bottommost")
# Position of a centre in the 3x3 grid of thirds: [row][col].
_WHERE = (("in the top left", "at the top", "in the top right"),
          ("on the left", "in the center", "on the right"),
          ("in the bottom left", "at the bottom", "in the bottom right"))

# Caption templates. {full}: "a small red circle"; {cs}: "a red circle"; {ss}: "a small circle".
SINGLE_TEMPLATES = (
    "{full}.",  # Canonical: always caption 0.
    "there is {full}.",
    "a picture of {full}.",
    "an image of {full}.",
    "{cs}.",
    "{full} on a dark background.",
    "{ss} that is {colour}.",
    "{full} {where}.",
)
# {list}: "a small red circle and a large blue star"; {n}: number word.
LIST_TEMPLATES = (
    "{list}.",  # Canonical: always caption 0.
    "there are {n} shapes.",
    "{list} on a dark background.",
    "from left to right, {list_lr}.",
    "{n} shapes including {some}.",
    "an image of {n} shapes.",
)
# {a}, {b}: full phrases of a related pair; {a_cs}, {b_cs}: without size.
RELATION_TEMPLATES = (
    "{a} {rel} {b}.",
    "{a} is {rel_long} {b}.",
    "there is {a} {rel} {b}.",
    "{a_cs} {rel} {b_cs}.",
)
QUESTION_WORDS = ("how many shapes are there ? what colour is the what shape is the object "
                  "what size is the is there a is the yes no the")


@dataclasses.dataclass(frozen=True)
class Obj:
  """One drawn object: attribute indices and tight box (x0, y0, x1, y1) in [0, 1]."""
  shape: int
  colour: int
  size: int
  box: tuple[float, float, float, float]

  @property
  def centre(self) -> tuple[float, float]:
    return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

  def words(self, attrs=("size", "colour", "shape")) -> list[str]:
    table = {"size": SIZES[self.size], "colour": COLOURS[self.colour], "shape": SHAPES[self.shape]}
    return [table[a] for a in attrs]


def relation_holds(a: Obj, b: Obj, rel: str) -> bool:
  """Whether `a rel b` holds between tight boxes (strict separation)."""
  if rel == "left of":
    return a.box[2] < b.box[0]
  if rel == "right of":
    return a.box[0] > b.box[2]
  if rel == "above":
    return a.box[3] < b.box[1]
  if rel == "below":
    return a.box[1] > b.box[3]
  raise ValueError(f"unknown relation {rel!r}; expected one of {RELATIONS}")


def _article(words: list[str]) -> str:
  return ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)


def _full(o: Obj) -> str:
  return _article(o.words())


def _list(objs) -> str:
  phrases = [_full(o) for o in objs]
  if len(phrases) == 1:
    return phrases[0]
  return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _where(o: Obj) -> str:
  cx, cy = o.centre
  return _WHERE[min(int(cy * 3), 2)][min(int(cx * 3), 2)]


def _true_relations(objs, rng: np.random.Generator):
  """A random ordered pair (i, j) and a relation that holds between them."""
  pairs = [(i, j) for i in range(len(objs)) for j in range(len(objs)) if i != j]
  i, j = pairs[rng.integers(len(pairs))]
  rels = [r for r in RELATIONS if relation_holds(objs[i], objs[j], r)]
  if not rels:  # Placement guarantees separation; this guards future changes.
    raise AssertionError(f"objects {objs[i]} and {objs[j]} overlap on both axes")
  return i, j, rels[rng.integers(len(rels))]


def _relation_caption(template: str, objs, rng: np.random.Generator) -> str:
  i, j, rel = _true_relations(objs, rng)
  a, b = objs[i], objs[j]
  return template.format(a=_full(a), b=_full(b), a_cs=_article(a.words(("colour", "shape"))),
                         b_cs=_article(b.words(("colour", "shape"))), rel=rel,
                         rel_long=_REL_LONG[rel])


def captions(objs, rng: np.random.Generator, count: int = 5) -> tuple[str, ...]:
  """`count` distinct captions; caption 0 is canonical; >= 1 relation caption if >= 2 objects."""
  if len(objs) == 1:
    o = objs[0]
    fields = dict(full=_full(o), cs=_article(o.words(("colour", "shape"))),
                  ss=_article(o.words(("size", "shape"))), colour=COLOURS[o.colour],
                  where=_where(o))
    rest = rng.permutation(len(SINGLE_TEMPLATES) - 1)[:count - 1] + 1
    texts = [SINGLE_TEMPLATES[k].format(**fields) for k in [0, *rest]]
  else:
    fields = dict(list=_list(objs), n=NUMBER_WORDS[len(objs)],
                  list_lr=_list(sorted(objs, key=lambda o: o.centre[0])),
                  some=_full(objs[rng.integers(len(objs))]))
    # One relation caption is guaranteed; the other slots draw from both pools.
    pool = [("list", k) for k in range(1, len(LIST_TEMPLATES))] + [
        ("rel", k) for k in range(len(RELATION_TEMPLATES))]
    first_rel = int(rng.integers(len(RELATION_TEMPLATES)))
    pool.remove(("rel", first_rel))
    chosen = [("list", 0), ("rel", first_rel)] + [
        pool[k] for k in rng.permutation(len(pool))[:count - 2]]
    texts = [LIST_TEMPLATES[k].format(**fields) if kind == "list"
             else _relation_caption(RELATION_TEMPLATES[k], objs, rng) for kind, k in chosen]
  assert len(set(texts)) == count, texts
  return tuple(texts)


def refer(objs, k: int, attrs=("size", "colour", "shape"), noun: str | None = None) -> str | None:
  """Shortest unambiguous "the ..." phrase for object k using `attrs` (+ an extreme if needed).

  `noun` replaces the shape word (e.g. "object" when the shape is what a question asks).
  Returns None when no phrase singles k out.
  """
  target = objs[k]
  if noun is None:
    options = (("shape",), ("colour", "shape"), ("size", "shape"), ("size", "colour", "shape"))
  else:
    options = ((), ("colour",), ("size",), ("size", "colour"))
  options = [opt for opt in options if set(opt) <= set(attrs)]
  phrase_of = lambda o, opt: " ".join(o.words(opt) + ([noun] if noun else []))
  for opt in options:
    if sum(phrase_of(o, opt) == phrase_of(target, opt) for o in objs) == 1:
      return "the " + phrase_of(target, opt)
  opt = options[-1] if options else ()
  group = [o for o in objs if phrase_of(o, opt) == phrase_of(target, opt)]
  keys = (lambda o: o.centre[0], lambda o: -o.centre[0], lambda o: o.centre[1],
          lambda o: -o.centre[1])
  for extreme, key in zip(_EXTREMES, keys):
    if all(key(target) < key(o) for o in group if o is not target):
      return f"the {extreme} " + phrase_of(target, opt)
  return None


def _referable(objs, rng, attrs, noun=None):
  """(k, phrase) for a random object that `refer` can single out (one always can)."""
  for k in rng.permutation(len(objs)):
    phrase = refer(objs, int(k), attrs, noun)
    if phrase is not None:
      return int(k), phrase
  raise AssertionError(f"no object of {objs} can be referred to with {attrs}")


def questions(objs, rng: np.random.Generator, allowed_combos) -> tuple[tuple[str, ...],
                                                                       tuple[str, ...]]:
  """Five (question, answer) pairs: count, colour, shape, existence, relation (or size).

  `allowed_combos`: (colour, shape) index pairs this split may mention (held-out combos are
  never named in the train split's text either).
  """
  qa = [("how many shapes are there?", NUMBER_WORDS[len(objs)])]
  k, phrase = _referable(objs, rng, ("size", "shape"))
  qa.append((f"what colour is {phrase}?", COLOURS[objs[k].colour]))
  k, phrase = _referable(objs, rng, ("size", "colour"), noun="object")
  qa.append((f"what shape is {phrase}?", SHAPES[objs[k].shape]))
  present = {(o.colour, o.shape) for o in objs}
  if rng.random() < 0.5:
    colour, shape = sorted(present)[rng.integers(len(present))]
  else:
    absent = [c for c in allowed_combos if tuple(c) not in present]
    colour, shape = absent[rng.integers(len(absent))]
  answer = "yes" if (colour, shape) in present else "no"
  qa.append((f"is there {_article([COLOURS[colour], SHAPES[shape]])}?", answer))
  if len(objs) >= 2:
    i, j, rel = _true_relations(objs, rng)
    a = refer(objs, i)
    b = refer(objs, j)
    asked = rel if rng.random() < 0.5 else _INVERSE[rel]
    if a is not None and b is not None:
      qa.append((f"is {a} {asked} {b}?", "yes" if asked == rel else "no"))
  if len(qa) < 5:
    k, phrase = _referable(objs, rng, ("colour", "shape"))
    qa.append((f"what size is {phrase}?", SIZES[objs[k].size]))
  return tuple(q for q, _ in qa), tuple(a for _, a in qa)


def referring(objs, rng: np.random.Generator) -> tuple[str, int]:
  """A referring expression ("the small red circle") and the index of its object."""
  k, phrase = _referable(objs, rng, ("size", "colour", "shape"))
  return phrase, k


def _vocab() -> tuple[str, ...]:
  words = set(COLOURS) | set(SIZES) | set(SHAPES) | set(PLURALS.values()) | set(NUMBER_WORDS)
  texts = [*SINGLE_TEMPLATES, *LIST_TEMPLATES, *RELATION_TEMPLATES, *RELATIONS,
           *_REL_LONG.values(), *_EXTREMES, *(w for row in _WHERE for w in row), QUESTION_WORDS,
           "a an , and the object ."]
  for text in texts:
    stripped = text
    for field in ("{full}", "{cs}", "{ss}", "{colour}", "{where}", "{list}", "{n}", "{list_lr}",
                  "{some}", "{a}", "{b}", "{a_cs}", "{b_cs}", "{rel}", "{rel_long}"):
      stripped = stripped.replace(field, " ")
    if "{" in stripped:
      raise AssertionError(f"template {text!r} has an unlisted field")
    words.update(split_words(stripped))
  return tuple(sorted(words))


VOCAB: tuple[str, ...] = _vocab()


def shapeworld_tokenizer() -> WordTokenizer:
  """The word tokenizer over `VOCAB`, ShapeWorld's closed vocabulary (pad=0, bos=1, eos=2,
  unk=3)."""
  return WordTokenizer(VOCAB)
