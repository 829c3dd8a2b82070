"""ShapeWorld: determinism, held-out combos, captions/answers vs structured labels, boxes vs
pixels, closed vocabulary, speed.

Captions, questions and referring expressions are checked by an independent parser that reads
the text back into attributes and resolves it against the structured labels and boxes.
"""
import re
import time

import numpy as np
import pytest

from mmjax.data import shapeworld as sw
from mmjax.data.shapeworld_text import shapeworld_tokenizer

COLOURS, SHAPES, SIZES = sw.COLOURS, sw.SHAPES, sw.SIZES
NUMBERS = ("zero", "one", "two", "three")
_SIZE = "(?:(small|large) )?"
_COLOUR = f"(?:({'|'.join(COLOURS)}) )?"
_SHAPE = f"({'|'.join(SHAPES)})"
NOUN_PHRASE = re.compile(rf"\b{_SIZE}{_COLOUR}{_SHAPE}\b")
REL = "(left of|right of|above|below)"
RELATION_CAPTION = re.compile(
    rf"(?:a|an) (small|large)? ?({'|'.join(COLOURS)}) {_SHAPE} (?:is )?(?:to the )?{REL} "
    rf"(?:a|an) (small|large)? ?({'|'.join(COLOURS)}) {_SHAPE}\.")
REFERENCE = re.compile(rf"the (?:(leftmost|rightmost|topmost|bottommost) )?{_SIZE}{_COLOUR}"
                       rf"({'|'.join(SHAPES)}|object)")


def objects(ex):
  n = int(ex["num_objects"])
  return [dict(size=SIZES[ex["size"][k]], colour=COLOURS[ex["colour"][k]],
               shape=SHAPES[ex["shape"][k]], box=ex["boxes"][k]) for k in range(n)]


def matches(obj, size, colour, shape):
  return ((size is None or obj["size"] == size) and (colour is None or obj["colour"] == colour)
          and (shape in (None, "object") or obj["shape"] == shape))


def holds(a, b, rel):
  """Reference spatial relation between tight boxes (x0, y0, x1, y1)."""
  return {"left of": a["box"][2] < b["box"][0], "right of": a["box"][0] > b["box"][2],
          "above": a["box"][3] < b["box"][1], "below": a["box"][1] > b["box"][3]}[rel]


def resolve(objs, phrase):
  """The object index a "the [extreme] [size] [colour] shape|object" phrase denotes."""
  m = REFERENCE.fullmatch(phrase)
  assert m, phrase
  extreme, size, colour, shape = m.groups()
  group = [k for k, o in enumerate(objs) if matches(o, size, colour, shape)]
  assert group, phrase
  if extreme is None:
    assert len(group) == 1, f"{phrase!r} is ambiguous among {objs}"
    return group[0]
  centre = lambda k: ((objs[k]["box"][0] + objs[k]["box"][2]) / 2,
                      (objs[k]["box"][1] + objs[k]["box"][3]) / 2)
  key = {"leftmost": lambda k: centre(k)[0], "rightmost": lambda k: -centre(k)[0],
         "topmost": lambda k: centre(k)[1], "bottommost": lambda k: -centre(k)[1]}[extreme]
  return min(group, key=key)


@pytest.fixture(scope="module")
def train_examples():
  ds = sw.ShapeWorld("train", 1500, seed=3)
  return [ds[i] for i in range(len(ds))]


@pytest.fixture(scope="module")
def test_examples():
  ds = sw.ShapeWorld("test", 800, seed=3)
  return [ds[i] for i in range(len(ds))]


def test_item_layout():
  ds = sw.ShapeWorld("val", 10, image_size=48, num_objects=(2, 3))
  ex = ds[np.int64(4)]
  assert ex["image"].dtype == np.uint8 and ex["image"].shape == (48, 48, 3)
  n = int(ex["num_objects"])
  assert ex["num_objects"].dtype == np.int32 and 2 <= n <= 3
  for key in ("shape", "colour", "size"):
    assert ex[key].dtype == np.int32 and ex[key].shape == (3,)
    assert (ex[key][:n] >= 0).all() and (ex[key][n:] == -1).all()
  assert ex["boxes"].dtype == np.float32 and ex["boxes"].shape == (3, 4)
  assert (ex["boxes"][n:] == 0).all() and (ex["boxes"][:n] >= 0).all() and (
      ex["boxes"][:n] <= 1).all()
  assert len(ex["captions"]) == 5 and len(set(ex["captions"])) == 5
  assert len(ex["questions"]) == len(ex["answers"]) == 5
  assert ex["referring_box"].dtype == np.float32 and ex["referring_box"].shape == (4,)
  assert ex["label"] == ex["colour"][0] * len(SHAPES) + ex["shape"][0]


def test_deterministic_pure_function_of_seed_split_index():
  a = sw.ShapeWorld("train", 100, seed=7)
  b = sw.ShapeWorld("train", 100, seed=7)
  for i in (0, 13, 99):
    x, y = a[i], b[np.int32(i)]
    for key in x:
      assert np.array_equal(np.asarray(x[key]), np.asarray(y[key])), key
    assert x["image"].tobytes() == a[i]["image"].tobytes()  # Repeat access: no hidden state.
  assert a[1]["image"].tobytes() != a[2]["image"].tobytes()
  assert a[1]["image"].tobytes() != sw.ShapeWorld("val", 100, seed=7)[1]["image"].tobytes()
  assert a[1]["image"].tobytes() != sw.ShapeWorld("train", 100, seed=8)[1]["image"].tobytes()
  # Length does not change the examples (sources of any length share a prefix).
  assert a[5]["captions"] == sw.ShapeWorld("train", 10**9, seed=7)[5]["captions"]


def test_heldout_combos_absent_from_train_present_in_test(train_examples, test_examples):
  heldout = {(COLOURS.index(c), SHAPES.index(s)) for c, s in sw.HELDOUT_COMBOS}
  assert len(heldout) == len(sw.HELDOUT_COMBOS) >= 6
  assert {s for _, s in heldout} == set(range(len(SHAPES)))  # Every shape held out once.
  assert {c for c, _ in heldout} == set(range(len(COLOURS)))  # And every colour.
  for ex in train_examples:
    n = int(ex["num_objects"])
    assert not heldout & set(zip(ex["colour"][:n].tolist(), ex["shape"][:n].tolist()))
    text = " ".join(ex["captions"] + ex["questions"] + (ex["referring"],))
    for c, s in sw.HELDOUT_COMBOS:
      assert f"{c} {s}" not in text, (c, s, text)
  seen = set()
  for ex in test_examples:
    n = int(ex["num_objects"])
    seen |= set(zip(ex["colour"][:n].tolist(), ex["shape"][:n].tolist()))
  assert heldout <= seen
  assert len(seen) == len(COLOURS) * len(SHAPES)


def test_class_helpers():
  names = sw.class_names()
  assert len(names) == len(COLOURS) * len(SHAPES) >= 48
  assert names[sw.class_index(COLOURS.index("blue"), SHAPES.index("star"))] == "blue star"
  mask = sw.heldout_mask()
  assert mask.sum() == len(sw.HELDOUT_COMBOS)
  assert [sw.is_heldout_class(i) for i in range(len(names))] == mask.tolist()
  heldout_names = [f"{c} {s}" for c, s in sw.HELDOUT_COMBOS]
  assert sorted(names[i] for i in np.flatnonzero(mask)) == sorted(heldout_names)
  for template in sw.ZERO_SHOT_TEMPLATES:
    assert "{c}" in template


def test_captions_mention_the_right_attributes(train_examples):
  for ex in train_examples[:600]:
    objs = objects(ex)
    captions = ex["captions"]
    # The canonical caption lists exactly the objects, in label order.
    listed = NOUN_PHRASE.findall(captions[0])
    assert listed == [(o["size"], o["colour"], o["shape"]) for o in objs], captions[0]
    for caption in captions:
      for size, colour, shape in NOUN_PHRASE.findall(caption):
        assert any(matches(o, size or None, colour or None, shape) for o in objs), caption
      if re.search(r"\b(shapes|one|two|three)\b", caption) and "shapes" in caption:
        count = re.search(r"\b(two|three)\b shapes", caption)
        assert count and NUMBERS.index(count.group(1)) == len(objs), caption
    relation_captions = [c for c in captions if re.search(r" (left of|right of|above|below) ", c)]
    if len(objs) >= 2:
      assert relation_captions, captions
    for caption in relation_captions:
      m = RELATION_CAPTION.fullmatch(caption.removeprefix("there is "))
      assert m, caption
      sa, ca, sha, rel, sb, cb, shb = m.groups()
      assert any(holds(a, b, rel) for i, a in enumerate(objs) for j, b in enumerate(objs)
                 if i != j and matches(a, sa, ca, sha) and matches(b, sb, cb, shb)), (caption, objs)


def test_answers_and_referring_expressions(train_examples):
  for ex in train_examples[:600]:
    objs = objects(ex)
    for q, a in zip(ex["questions"], ex["answers"]):
      if q == "how many shapes are there?":
        assert a == NUMBERS[len(objs)]
      elif m := re.fullmatch(r"what (colour|shape|size) is (the .*)\?", q):
        assert a == objs[resolve(objs, m.group(2))][m.group(1)], (q, a, objs)
      elif m := re.fullmatch(r"is there an? (\w+) (\w+)\?", q):
        present = any(matches(o, None, m.group(1), m.group(2)) for o in objs)
        assert a == ("yes" if present else "no"), (q, a, objs)
      elif m := re.fullmatch(rf"is (the .*) {REL} (the .*)\?", q):
        i, j = resolve(objs, m.group(1)), resolve(objs, m.group(3))
        assert a == ("yes" if holds(objs[i], objs[j], m.group(2)) else "no"), (q, a, objs)
      else:
        raise AssertionError(f"unexpected question {q!r}")
    k = resolve(objs, ex["referring"])
    np.testing.assert_array_equal(ex["referring_box"], ex["boxes"][k])


def test_boxes_sizes_and_separation(train_examples):
  for ex in train_examples:
    objs = objects(ex)
    for o in objs:
      x0, y0, x1, y1 = o["box"]
      extent = max(x1 - x0, y1 - y0)
      lo, hi = sw.SIZE_RANGES[SIZES.index(o["size"])]
      assert lo - 1e-5 <= extent <= hi + 1e-5, (o, extent)
    for i in range(len(objs)):
      for j in range(i + 1, len(objs)):
        a, b = objs[i]["box"], objs[j]["box"]
        assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1], (a, b)


def _foreground(image):
  background = np.median(image.reshape(-1, 3), axis=0)
  return np.abs(image.astype(np.float32) - background).max(-1) > 40


def test_boxes_contain_the_drawn_pixels():
  size = 64
  single = sw.ShapeWorld("test", 150, seed=1, image_size=size, num_objects=(1, 1))
  for i in range(len(single)):
    ex = single[i]
    ys, xs = np.nonzero(_foreground(ex["image"]))
    x0, y0, x1, y1 = ex["boxes"][0] * size
    # Every coloured pixel (centre within 0.5 px of the shape) lies in the box...
    assert xs.min() >= np.floor(x0) - 1 and xs.max() <= np.ceil(x1), (i, xs.min(), xs.max(), x0, x1)
    assert ys.min() >= np.floor(y0) - 1 and ys.max() <= np.ceil(y1), (i, ys.min(), ys.max(), y0, y1)
    # ...and the box is tight (thin tips of stars/triangles may fall under the threshold).
    assert xs.min() <= x0 + 2.5 and xs.max() + 1 >= x1 - 2.5, i
    assert ys.min() <= y0 + 2.5 and ys.max() + 1 >= y1 - 2.5, i
  multi = sw.ShapeWorld("test", 100, seed=1, image_size=size, num_objects=(3, 3))
  for i in range(len(multi)):
    ex = multi[i]
    inside = np.zeros((size, size), bool)
    for x0, y0, x1, y1 in ex["boxes"] * size:
      inside[max(int(np.floor(y0)) - 1, 0):int(np.ceil(y1)) + 1,
             max(int(np.floor(x0)) - 1, 0):int(np.ceil(x1)) + 1] = True
    assert not (_foreground(ex["image"]) & ~inside).any(), i


def test_object_colour_matches_label():
  ds = sw.ShapeWorld("val", 100, seed=2, num_objects=(1, 1))
  for i in range(len(ds)):
    ex = ds[i]
    x0, y0, x1, y1 = ex["boxes"][0] * 64
    cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
    if SHAPES[ex["shape"][0]] == "star":
      cy = int(y0 + 0.55 * (y1 - y0))  # The star's centroid sits below its box centre.
    pixel = ex["image"][cy, cx].astype(np.float32)
    nearest = np.argmin(np.abs(sw.RGB - pixel).sum(-1))
    assert nearest == ex["colour"][0], (i, pixel, COLOURS[ex["colour"][0]])


def test_vocabulary_is_closed(train_examples, test_examples):
  tok = shapeworld_tokenizer()
  longest = 0
  for ex in train_examples + test_examples:
    for text in ex["captions"] + ex["questions"] + ex["answers"] + (ex["referring"],):
      ids = tok.encode(text)
      assert tok.unk_id not in ids, text
      assert tok.decode(ids) == text
    longest = max(longest, *(len(tok.encode(c)) for c in ex["captions"]))
  assert longest == sw.MAX_CAPTION_TOKENS


def test_bad_arguments():
  with pytest.raises(ValueError, match="split"):
    sw.ShapeWorld("training")
  with pytest.raises(ValueError, match="num_objects"):
    sw.ShapeWorld(num_objects=(0, 2))
  with pytest.raises(ValueError, match="num_objects"):
    sw.ShapeWorld(num_objects=(2, 4))
  with pytest.raises(ValueError, match="image_size"):
    sw.ShapeWorld(image_size=8)
  with pytest.raises(IndexError):
    sw.ShapeWorld(length=3)[3]


def test_speed():
  ds = sw.ShapeWorld("train", 1000, seed=11)
  start = time.process_time()  # CPU time of this process: robust to a shared machine.
  for i in range(len(ds)):
    ds[i]
  elapsed = time.process_time() - start
  assert elapsed < 3.0, f"1000 64x64 examples took {elapsed:.2f} s of CPU"


@pytest.mark.parametrize("shape", SHAPES)
def test_anti_aliasing_matches_supersampled_reference(shape):
  """Analytic coverage vs 8x8 supersampling with matplotlib's point-in-polygon test."""
  from matplotlib.path import Path
  from mmjax.data import shapeworld_render as render_lib
  k, (cx, cy, half), image_size = SHAPES.index(shape), (20.3, 17.8, 9.37), 40
  rows, cols, alpha = render_lib.coverage(k, cx, cy, half, image_size)
  sub = (np.arange(8) + 0.5) / 8
  ys = (np.arange(rows.start, rows.stop)[:, None] + sub).reshape(-1)
  xs = (np.arange(cols.start, cols.stop)[:, None] + sub).reshape(-1)
  px, py = np.meshgrid(xs, ys)
  if shape == "circle":
    inside = (px - cx) ** 2 + (py - cy) ** 2 < half ** 2
  else:
    vertices = render_lib.UNIT_POLYGONS[shape] * half + [cx, cy]
    inside = Path(vertices).contains_points(np.stack([px.ravel(), py.ravel()], -1))
    inside = inside.reshape(px.shape)
  reference = inside.reshape(alpha.shape[0], 8, alpha.shape[1], 8).mean((1, 3))
  error = np.abs(alpha - reference)
  assert error.mean() < 0.02, error.mean()
  assert error.max() < 0.35, error.max()
  assert abs(alpha.sum() / reference.sum() - 1) < 0.02


def test_zero_shot_prompts_use_the_caption_articles():
  prompts = sw.zero_shot_prompts()
  t = len(sw.ZERO_SHOT_TEMPLATES)
  assert len(prompts) == len(sw.class_names()) * t
  orange_circle = sw.class_index(COLOURS.index("orange"), SHAPES.index("circle"))
  assert prompts[orange_circle * t] == "an orange circle."
  assert prompts[orange_circle * t + 3] == "a small orange circle."
  assert prompts[0] == sw.ZERO_SHOT_TEMPLATES[0].format(c="red circle")
  # A single-object caption of the same class is one of the prompts, word for word.
  ds = sw.ShapeWorld("test", 50, num_objects=(1, 1))
  for i in range(50):
    ex = ds[i]
    cs = [c for c in ex["captions"]
          if len(c.split()) == 3 and "small" not in c and "large" not in c]
    if cs:
      assert cs[0] in prompts[ex["label"] * t:(ex["label"] + 1) * t]
