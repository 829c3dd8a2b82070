"""The contrastive task's evaluation after a tiny training run, against naive references: the
eval data rebuilt from ShapeWorld, the model's own encoders, zero-shot top-1 and R@K by
per-query loops (tests/train/naive_image_text.py)."""
import jax
import numpy as np
import pytest

from mmjax.data import shapeworld
from mmjax.train.tasks.contrastive import ContrastiveTask
from mmjax.train.trainer import train

import naive_image_text as naive
from conftest import tiny_config

EVAL_KEYS = {"zeroshot_top1", "zeroshot_top1_heldout", "i2t_r@1", "i2t_r@5", "i2t_r@10",
             "t2i_r@1", "t2i_r@5", "t2i_r@10"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """4 tiny CLIP steps on a data=2 mesh, evaluated at the end (16 zero-shot images, 2 of them
  of held-out classes; 8 retrieval images with 40 captions)."""
  config = tiny_config("total_steps=4")
  result = train(config, tmp_path_factory.mktemp("clip"), devices=jax.devices()[:2],
                 progress=False)
  return config, result


def test_evaluate_equals_naive_zero_shot_and_recall(trained):
  config, result = trained
  task, params = ContrastiveTask(config), result.state.params
  model, data = task.model, naive.eval_sets(config, task.tokenizer)
  prompt_emb = naive.apply(model, params, model.encode_text, data["prompt_tokens"])
  single_emb = naive.apply(model, params, model.encode_image, data["single_image"])
  class_emb, expected = naive.zero_shot_top1(single_emb, prompt_emb, data["label"],
                                             len(shapeworld.ZERO_SHOT_TEMPLATES))
  image_emb = naive.apply(model, params, model.encode_image, data["image"])
  text_emb = naive.apply(model, params, model.encode_text, data["text"])
  expected.update(naive.recall_at_k(image_emb, text_emb, data["text_to_image"]))

  got = result.eval_metrics  # the trainer's final eval, on its data=2 mesh
  assert set(got) == EVAL_KEYS
  assert got == pytest.approx(expected, abs=1e-6)
  assert len(set(expected.values())) > 2  # the tiny model is neither perfect nor uniform
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]).reshape(2, 1, 1),
                           ("data", "fsdp", "tensor"))  # where the trained params live
  embeddings = task.zero_shot_embeddings(params, mesh)
  np.testing.assert_allclose(np.asarray(embeddings["class_emb"]), class_emb, atol=1e-5)
  np.testing.assert_allclose(np.asarray(task.embed_images(params, data["image"], mesh)),
                             image_emb, atol=1e-5)
