"""The BLIP task through the one trainer on 8 simulated devices: finite ITC/ITM/LM losses, the
eval against naive references (zero-shot top-1, R@K and ITM re-ranked R@1 by per-query loops
over the model's own encoders and ITM head, tests/train/naive_image_text.py), the LM prompt
left out of the loss, bad batches and configs."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.data import shapeworld
from mmjax.losses import caption_loss
from mmjax.models.blip import BLIP
from mmjax.train.config import apply_overrides, load_config
from mmjax.train.logging import read_jsonl
from mmjax.train.tasks import get_task_class
from mmjax.train.tasks.blip import BLIPTask
from mmjax.train.trainer import train

import naive_image_text as naive
from conftest import ROOT

CONFIG = ROOT / "configs" / "blip_shapeworld.py"
TINY = [
    "batch_size=8", "total_steps=3", "log_every=1", "eval_every=1000", "checkpoint_every=1000",
    "data.image_size=16", "data.context_length=12", "model.embed_dim=16",
    "model.stem_channels=(4,)", "model.patch_size=4", "model.vision_width=16",
    "model.vision_layers=1", "model.vision_heads=2", "model.text_width=16", "model.text_layers=1",
    "model.text_heads=2", "optim.warmup_steps=1", "optim.learning_rate=0.01",
    "eval.zero_shot_images=8", "eval.retrieval_images=8", "eval.batch_size=8",
    "eval.itm_rerank_k=4", "eval.caption_images=4",
]
TRAIN_KEYS = {"loss", "itc_loss", "itm_loss", "lm_loss", "itm_accuracy", "temperature"}
EVAL_KEYS = {"zeroshot_top1", "zeroshot_top1_heldout", "i2t_r@1", "i2t_r@5", "i2t_r@10", "t2i_r@1", "t2i_r@5",
             "t2i_r@10", "i2t_r@1_itm", "bleu4", "cider_d"}


def tiny_config(*extra):
  return apply_overrides(load_config(CONFIG), TINY + list(extra))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """3 steps of batch 8 on a data=8 mesh (one example per device), then the final eval."""
  workdir = tmp_path_factory.mktemp("blip")
  config = tiny_config()
  assert len(jax.devices()) == 8
  return config, workdir, train(config, workdir, progress=False)


def test_training_runs_and_evaluates(trained):
  _, workdir, result = trained
  assert get_task_class("blip") is BLIPTask
  records = read_jsonl(workdir / "train.jsonl")
  assert [r["step"] for r in records] == [1, 2, 3]
  for record in records:
    assert all(np.isfinite(record[k]) for k in TRAIN_KEYS)
    np.testing.assert_allclose(record["loss"], record["itc_loss"] + record["itm_loss"]
                               + record["lm_loss"], rtol=1e-5)
    assert 0 <= record["itm_accuracy"] <= 1
  got = result.eval_metrics
  assert set(got) == EVAL_KEYS  # 1 of the 8 zero-shot images is of a held-out class
  assert all(np.isfinite(v) for v in got.values())
  assert all(0 <= got[k] <= 1 for k in EVAL_KEYS - {"cider_d"})
  assert read_jsonl(workdir / "metrics.jsonl")[-1]["bleu4"] == got["bleu4"]


def test_evaluate_equals_naive_zero_shot_recall_and_itm_rerank(trained):
  config, _, result = trained
  task, params = BLIPTask(config), result.state.params
  model, data = task.model, naive.eval_sets(config, task.tokenizer)
  prompt_emb = naive.apply(model, params, BLIP.encode_text, data["prompt_tokens"])
  single_emb = naive.apply(model, params, BLIP.encode_image, data["single_image"])
  class_emb, expected = naive.zero_shot_top1(single_emb, prompt_emb, data["label"],
                                             len(shapeworld.ZERO_SHOT_TEMPLATES))
  image_emb = naive.apply(model, params, BLIP.encode_image, data["image"])
  text_emb = naive.apply(model, params, BLIP.encode_text, data["text"])
  expected.update(naive.recall_at_k(image_emb, text_emb, data["text_to_image"]))
  expected["i2t_r@1_itm"] = naive.itm_reranked_recall_at_1(
      image_emb, text_emb, data["text_to_image"], config.eval.itm_rerank_k,
      functools.partial(_itm_score, model, params, data))
  got = {key: value for key, value in result.eval_metrics.items()
         if key not in ("bleu4", "cider_d")}  # captions: tests/train/test_caption_task.py
  assert got == pytest.approx(expected, abs=1e-6)
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(8, 1, 1),
                           ("data", "fsdp", "tensor"))  # where the trained params live
  np.testing.assert_allclose(np.asarray(task.evaluators()["zero_shot"].embeddings(
      params, mesh)["class_emb"]), class_emb, atol=1e-5)
  # The tiny model's ITM pick hits as often as the ITC one, so check the re-ranker apart: the
  # task's ITM scores against the naive ones, and that the evaluator ranks by whatever
  # `_itm_scores` returns (here the reversed ITC order: each image takes its k-th best text).
  k = config.eval.itm_rerank_k
  candidates = np.array([np.argsort(-(image_emb[i] @ text_emb.T), kind="stable")[:k]
                         for i in range(len(image_emb))])
  itm = naive.apply(model, params, BLIP.itm_logits,
                    np.repeat(naive.apply(model, params, BLIP.encode_image_tokens, data["image"]),
                              k, axis=0), data["text"][candidates.reshape(-1)])
  np.testing.assert_allclose(
      np.asarray(jax.jit(task._itm_scores)(jax.device_put(params, jax.devices()[0]),
                                           data["image"], data["text"][candidates])),
      (itm[:, 1] - itm[:, 0]).reshape(-1, k), atol=1e-4)
  reversed_itc = BLIPTask(config)
  reversed_itc._itm_scores = lambda params, images, tokens: -jnp.einsum(
      "ce,cke->ck", model.apply({"params": params}, images, method=BLIP.encode_image),
      jax.vmap(lambda t: model.apply({"params": params}, t, method=BLIP.encode_text))(tokens))
  kth_best = data["text_to_image"][candidates[:, -1]] == np.arange(len(candidates))
  assert kth_best.mean() != expected["i2t_r@1"]
  got = reversed_itc.evaluators()["retrieval"].evaluate(params, mesh)["i2t_r@1_itm"]
  assert got == pytest.approx(kth_best.mean(), abs=1e-6)


def _itm_score(model, params, data, image, texts):
  """Naive ITM re-ranking score (match minus no-match logit) of image `image` with `texts`."""
  image_tokens = naive.apply(model, params, BLIP.encode_image_tokens, data["image"][image:image + 1])
  logits = naive.apply(model, params, BLIP.itm_logits,
                       np.repeat(image_tokens, len(texts), axis=0), data["text"][texts])
  return logits[:, 1] - logits[:, 0]


def test_prompt_tokens_get_zero_lm_weight(trained):
  task = BLIPTask(trained[0])
  tok = task.tokenizer
  prompt = tok.encode("a picture of")
  np.testing.assert_array_equal(task.prompt_ids, prompt)
  text = tok.encode_batch(["a small red circle.", "a blue star."], 12)
  tokens, prompt_mask = task.lm_inputs(jnp.asarray(text))
  assert tokens.shape == (2, 12 + 3) and task.lm_length == 15
  np.testing.assert_array_equal(tokens[:, :4], [[tok.bos_id] + prompt] * 2)
  np.testing.assert_array_equal(tokens[:, 4:], text[:, 1:])
  np.testing.assert_array_equal(prompt_mask[0], [False, True, True, True] + [False] * 11)
  # Logits at rows 0..2 predict the prompt tokens 1..3: they must not move the loss; row 3
  # predicts the first caption word and must.
  logits = jax.random.normal(jax.random.key(0), (2, 15, tok.vocab_size))
  grad = jax.grad(lambda l: caption_loss(l, tokens, tok.pad_id, prompt_mask))(logits)
  assert np.abs(grad[:, :3]).max() == 0 and np.abs(grad[:, 3]).max() > 0
  no_prompt = BLIPTask(tiny_config("loss.lm_prompt=''"))
  tokens, prompt_mask = no_prompt.lm_inputs(jnp.asarray(text))
  np.testing.assert_array_equal(tokens, text)
  assert not np.asarray(prompt_mask).any()


def test_bad_batches_and_configs_raise(trained):
  task = BLIPTask(trained[0])
  tok = task.tokenizer
  text = tok.encode_batch(["a small red circle."] * 2, 12)
  good = {"image": np.zeros((2, 16, 16, 3), np.float32), "text": text,
          "label": np.array([3, 4], np.int32)}
  task.check_batch(good, 0)
  with pytest.raises(ValueError, match=r"itm_positives='label' needs int 'label' \[2\].*got no"):
    task.check_batch({"image": good["image"], "text": text}, 0)
  with pytest.raises(ValueError, match=r"got label of shape \(3,\)"):
    task.check_batch({**good, "label": np.zeros(3, np.int32)}, 0)
  with pytest.raises(ValueError, match=r"image has shape \(2, 32, 32, 3\), expected \[batch, 16"):
    task.check_batch({**good, "image": np.zeros((2, 32, 32, 3), np.float32)}, 5)
  with pytest.raises(ValueError, match="text has shape"):
    task.check_batch({**good, "text": text[:, :10]}, 0)
  with pytest.raises(ValueError, match=r"text rows \[0, 1\] do not start with BOS"):
    task.check_batch({**good, "text": text[:, ::-1].copy()}, 0)
  with pytest.raises(ValueError, match="has no 'text'"):
    task.check_batch({"image": good["image"]}, 0)
  with pytest.raises(ValueError, match="itm_positives must be one of"):
    BLIPTask(tiny_config("loss.itm_positives=image"))
  with pytest.raises(ValueError, match=r"single-object scenes only; .*num_objects=\(1, 3\)"):
    BLIPTask(tiny_config("data.num_objects=(1,3)"))
  BLIPTask(tiny_config("data.num_objects=(1,3)", "loss.itm_positives=caption"))
  with pytest.raises(ValueError, match="lm_prompt 'a photo of' has words outside"):
    BLIPTask(tiny_config("loss.lm_prompt='a photo of'"))
  with pytest.raises(ValueError, match="loss.kind must be 'clip'"):
    BLIPTask(tiny_config("loss.kind=siglip"))
  with pytest.raises(ValueError, match="must be >= 0 with at least one > 0"):
    BLIPTask(tiny_config("loss.itm_weight=-1.0"))
  with pytest.raises(ValueError, match="eval.itm_rerank_k must be >= 0"):
    BLIPTask(tiny_config("eval.itm_rerank_k=-1"))


def test_itm_positive_mask(trained):
  task = BLIPTask(trained[0])
  text = task.tokenizer.encode_batch(["a red circle.", "a red circle.", "a blue star.",
                                      "there is a red circle.", "a cyan cross."], 12)
  batch = {"text": jnp.asarray(text), "label": jnp.array([0, 0, 5, 0, -1])}
  same_caption = np.eye(5, dtype=bool)
  same_caption[0, 1] = same_caption[1, 0] = True
  np.testing.assert_array_equal(BLIPTask(tiny_config("loss.itm_positives=caption"))
                                .itm_positive_mask(batch), same_caption)
  same_label = same_caption.copy()
  same_label[np.ix_([0, 1, 3], [0, 1, 3])] = True  # paraphrases of class 0; -1 only itself
  np.testing.assert_array_equal(task.itm_positive_mask(batch), same_label)
