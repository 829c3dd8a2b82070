"""The language_model task: its rows are the image's own texts, its evaluation equals a numpy
NLL over every text of the eval images, and its LM drops into the unified decoder's LM slots."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from mmjax.data import shapeworld
from mmjax.models import build_model
from mmjax.train import sharding
from mmjax.train.config import apply_overrides, load_config
from mmjax.train.tasks.language_model import TEXT_KINDS, LanguageModelTask, _LoadText

from conftest import ROOT

CONFIG = ROOT / "configs" / "lm_shapeworld.py"
TINY = ["batch_size=8", "model.width=16", "model.num_layers=1", "model.num_heads=2",
        "eval.num_images=3", "eval.batch_size=8"]


def _config(*extra):
  return apply_overrides(load_config(CONFIG), TINY + list(extra))


def _source(config, split, length):
  data = config.data
  return shapeworld.ShapeWorld(split, length=length, seed=data.seed, image_size=data.image_size,
                               num_objects=tuple(data.num_objects))


def _texts_by_hand(item):
  """{kind: [str]}: 5 captions, 5 "question answer" strings, the referring expression."""
  return {"caption": list(item["captions"]),
          "question_answer": [f"{q} {a}" for q, a in zip(item["questions"], item["answers"])],
          "referring": [item["referring"]]}


def test_rows_are_the_images_own_texts_of_every_kind():
  config = _config()
  task = LanguageModelTask(config)
  source = _source(config, "train", 50)
  load = _LoadText(source, task.tokenizer, config.data.context_length, config.seed)
  kinds = set()
  for position in range(200):
    index = position % len(source)
    texts = _texts_by_hand(source[index])
    row = load(position, index)["text"]
    matches = [kind for kind, strings in texts.items()
               for s in strings
               if np.array_equal(row, task.tokenizer.encode_batch([s], 22)[0])]
    assert matches, (index, task.tokenizer.decode(row))
    kinds.update(matches)
  assert kinds == set(TEXT_KINDS)
  # Another epoch draws another text of the same image (positions 0 and 50: image 0).
  assert any(not np.array_equal(load(i, i)["text"], load(i + 50, i)["text"]) for i in range(10))


def test_packed_rows_are_whole_texts_of_train_images_until_the_next_does_not_fit():
  config = _config("data.pack=True", "data.context_length=64")
  task = LanguageModelTask(config)
  tok = task.tokenizer
  source = _source(config, "train", 50)
  every_text = {s for i in range(len(source)) for strings in _texts_by_hand(source[i]).values()
                for s in strings}
  shortest = min(len(tok.encode(s)) + 2 for s in every_text)
  load = _LoadText(source, tok, 64, config.seed, pack=True)
  counts = []
  for position in range(40):
    index = position % len(source)
    row = load(position, index)["text"]
    used = int((row != tok.pad_id).sum())
    assert (row[used:] == tok.pad_id).all() and used <= 64
    # Split at BOS by hand: every piece is BOS + one train text + EOS.
    starts = [i for i in range(used) if row[i] == tok.bos_id]
    assert starts[0] == 0
    pieces = [row[a:b] for a, b in zip(starts, starts[1:] + [used])]
    for piece in pieces:
      assert piece[-1] == tok.eos_id and tok.decode(piece) in every_text, tok.decode(piece)
    # The first text is the indexed image's own (as without packing).
    assert tok.decode(pieces[0]) in {s for v in _texts_by_hand(source[index]).values() for s in v}
    assert 64 - used < 22  # the longest text (20 words + BOS + EOS) would not have been cut off
    counts.append(len(pieces))
  assert min(counts) >= 64 // 22 and max(counts) <= 64 // shortest


def _numpy_nll(logits, text, pad_id):
  """(summed NLL, hits, targets) over the non-pad next tokens of one row, in numpy."""
  logits, targets = np.asarray(logits, np.float64)[:-1], text[1:]
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  keep = targets != pad_id
  nll = -log_probs[np.arange(len(targets)), targets][keep].sum()
  return nll, (logits.argmax(-1) == targets)[keep].sum(), keep.sum()


def test_evaluation_equals_a_numpy_nll_over_every_eval_text():
  config = _config()
  task = LanguageModelTask(config)
  params = nn.unbox(task.init_params(jax.random.key(0)))
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  results = task.evaluate(params, mesh)
  totals = {kind: np.zeros(3) for kind in TEXT_KINDS}
  source = _source(config, "test", 3)
  for index in range(3):
    for kind, strings in _texts_by_hand(source[index]).items():
      tokens = task.tokenizer.encode_batch(strings, 22)
      logits = task.model.apply({"params": params}, tokens)
      for row, row_logits in zip(tokens, logits):
        totals[kind] += _numpy_nll(row_logits, row, task.tokenizer.pad_id)
  everything = sum(totals.values())
  assert results["eval_loss"] == pytest.approx(everything[0] / everything[2], rel=1e-5)
  assert results["perplexity"] == pytest.approx(np.exp(everything[0] / everything[2]), rel=1e-5)
  assert results["token_accuracy"] == pytest.approx(everything[1] / everything[2])
  for kind, (nll, hits, count) in totals.items():
    assert results[f"eval_loss_{kind}"] == pytest.approx(nll / count, rel=1e-5)
    assert results[f"token_accuracy_{kind}"] == pytest.approx(hits / count)


def test_the_lm_has_the_unified_decoders_lm_layout():
  config = _config()
  lm = LanguageModelTask(config)
  lm_shapes = jax.eval_shape(lm.init_params, jax.random.key(0))
  unified = build_model(dict(name="unified_decoder", width=16, num_layers=1, num_heads=2,
                             mlp_ratio=2.0, vision_encoder=dict(name="vision_transformer",
                                                                patch_size=8, width=8,
                                                                num_layers=1, num_heads=2)),
                        vocab_size=lm.tokenizer.vocab_size, max_length=22)
  shapes = jax.eval_shape(unified.init, jax.random.key(0), np.zeros((1, 16, 16, 3)),
                          np.zeros((1, 22), np.int32))["params"]
  flat = lambda tree: {jax.tree_util.keystr(p): x.shape
                       for p, x in jax.tree_util.tree_leaves_with_path(nn.unbox(tree))}
  lm_flat, unified_flat = flat(lm_shapes), flat(shapes)
  assert lm_flat and all(unified_flat.get(path) == shape for path, shape in lm_flat.items())


def test_non_shapeworld_data_and_a_cross_attending_model_fail_clearly():
  with pytest.raises(ValueError, match="data.name must be 'shapeworld'"):
    LanguageModelTask(_config("data.name=jsonl"))
  with pytest.raises(ValueError, match="decoder-only: set model.cross_attention=False"):
    LanguageModelTask(_config("model.cross_attention=True"))
