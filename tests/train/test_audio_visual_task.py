"""The audio-visual task: its loss terms against numpy transcriptions (and clip_loss), the heatmap
layout, and a tiny run that trains and reports every metric on ShapeWorld-AV."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from mmjax import losses
from mmjax.train.config import apply_overrides, load_config
from mmjax.train.tasks.audio_visual import (alignment_loss, localization_scores,
                                            lvs_localization_loss, offset_classification_loss,
                                            symmetric_infonce, time_contrastive_loss,
                                            upsample_heatmaps)
from mmjax.train.trainer import train


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax(x):
  x = x - x.max()
  return x - np.log(np.exp(x).sum())


def test_time_contrastive_and_alignment_losses_against_loops():
  rng = np.random.default_rng(0)
  a, v = _unit(rng.normal(size=(3, 5, 4))), _unit(rng.normal(size=(3, 5, 4)))
  offsets = np.array([0, 2, -1])  # audio lags video: audio frame t shows video frame t - offset
  temperature = 0.2
  terms, distances = [], []
  for b in range(3):
    logits = a[b] @ v[b].T / temperature
    for t in range(5):
      s = t - offsets[b]
      if not 0 <= s < 5:
        continue
      terms.append(-_log_softmax(logits[t])[s])      # audio frame t picks video frame s
      terms.append(-_log_softmax(logits[:, s])[t])   # video frame s picks audio frame t
      distances.append(np.sum((a[b, t] - v[b, s]) ** 2))
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  np.testing.assert_allclose(time_contrastive_loss(f32(a), f32(v), temperature, offsets),
                             np.sum(terms) / (len(terms) / 2) / 2, rtol=1e-5)
  np.testing.assert_allclose(alignment_loss(f32(a), f32(v), offsets), np.mean(distances),
                             rtol=1e-5)


def test_offset_classification_loss_against_a_loop():
  """Per clip: for each candidate offset o in [-K, K], the mean cosine of the pairs (audio frame
  t + o, video frame t) it aligns over the temperature, and the cross-entropy of the true o."""
  rng = np.random.default_rng(7)
  frames, k, temperature = 6, 2, 0.25
  a, v = _unit(rng.normal(size=(4, frames, 3))), _unit(rng.normal(size=(4, frames, 3)))
  offsets = np.array([0, 2, -1, -2])
  expected = []
  for b in range(4):
    logits = []
    for o in range(-k, k + 1):
      pairs = [(t + o, t) for t in range(frames) if 0 <= t + o < frames]
      logits.append(np.mean([a[b, i] @ v[b, j] for i, j in pairs]) / temperature)
    expected.append(-_log_softmax(np.array(logits))[offsets[b] + k])
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  np.testing.assert_allclose(
      offset_classification_loss(f32(a), f32(v), temperature, offsets, max_offset=k),
      np.mean(expected), rtol=1e-5)


def test_symmetric_infonce_is_clip_loss_from_logits():
  rng = np.random.default_rng(1)
  a, v = _unit(rng.normal(size=(6, 8))), _unit(rng.normal(size=(6, 8)))
  np.testing.assert_allclose(symmetric_infonce(jnp.asarray(a @ v.T / 0.1, jnp.float32)),
                             losses.clip_loss(jnp.asarray(a, jnp.float32),
                                              jnp.asarray(v, jnp.float32), 0.1), rtol=1e-5)


def test_localization_scores_against_a_loop():
  rng = np.random.default_rng(2)
  audio, patches = _unit(rng.normal(size=(3, 4))), _unit(rng.normal(size=(3, 2, 5, 4)))
  expected = np.zeros((3, 3))
  for i in range(3):
    for j in range(3):
      expected[i, j] = np.mean([max(audio[i] @ patches[j, t, n] for n in range(5))
                                for t in range(2)])
  np.testing.assert_allclose(localization_scores(jnp.asarray(audio), jnp.asarray(patches)),
                             expected, rtol=1e-5)


def test_lvs_localization_loss_against_a_loop():
  rng = np.random.default_rng(4)
  audio, patches = _unit(rng.normal(size=(3, 4))), _unit(rng.normal(size=(3, 2, 5, 4)))
  eps, eps_neg, tau_mask, temperature = 0.3, -0.1, 0.2, 0.5
  sigmoid = lambda x: 1 / (1 + np.exp(-x))
  losses_ = []
  for i in range(3):
    for t in range(2):
      def region(j, negative=False):
        values = np.array([audio[i] @ patches[j, t, n] for n in range(5)])
        weights = (1 - sigmoid((values - eps_neg) / tau_mask)) if negative else \
            sigmoid((values - eps) / tau_mask)
        return np.sum(weights * values) / np.sum(weights)
      logits = [region(i), region(i, negative=True)] + [region(j) for j in range(3) if j != i]
      losses_.append(-_log_softmax(np.array(logits) / temperature)[0])
  np.testing.assert_allclose(
      lvs_localization_loss(jnp.asarray(audio, jnp.float32), jnp.asarray(patches, jnp.float32),
                            temperature, eps, eps_neg, tau_mask), np.mean(losses_), rtol=1e-5)


def test_heatmaps_are_row_major_patch_grids():
  heatmap = np.zeros((1, 2, 16), np.float32)
  heatmap[0, 1, 2 * 4 + 3] = 1.0  # frame 1, patch row 2, column 3
  maps = np.asarray(upsample_heatmaps(jnp.asarray(heatmap), 16))
  assert maps.shape == (2, 16, 16) and maps[0].max() == 0
  row, col = np.unravel_index(maps[1].argmax(), (16, 16))
  assert 8 <= row < 12 and 12 <= col < 16


TINY = ["batch_size=8", "total_steps=2", "log_every=1", "eval_every=1000",
        "checkpoint_every=1000", "model.embed_dim=16", "model.audio_encoder.width=16",
        "model.audio_encoder.num_layers=1", "model.audio_encoder.num_heads=2",
        "model.video_encoder.width=16", "model.video_encoder.num_layers=1",
        "model.video_encoder.num_heads=2",
        "eval.num_clips=8", "eval.num_sync_clips=4", "eval.batch_size=8",
        "optim.warmup_steps=1"]


def test_a_tiny_run_trains_and_reports_every_metric(tmp_path):
  config = apply_overrides(load_config(ROOT / "configs" / "av_shapeworld.py"), TINY)
  result = train(config, tmp_path / "run", devices=jax.devices()[:1], progress=False)
  expected = {"v2a_r@1", "a2v_r@1", "correspondence_accuracy", "ciou@0.5", "auc", "mean_ciou",
              "pointing", "baseline_ciou@0.5", "baseline_auc", "sync_acc", "sync_acc_1",
              "ciou@0.5_bound"}
  assert expected <= set(result.eval_metrics), sorted(result.eval_metrics)
  per_offset = {k for k in result.eval_metrics if k.startswith("sync_acc_1_offset")}
  assert per_offset and per_offset <= {f"sync_acc_1_offset{o:+d}" for o in range(-3, 4)}


def test_the_per_time_terms_use_the_sync_head_and_its_temperature():
  from mmjax.train.tasks import get_task_class
  config = apply_overrides(load_config(ROOT / "configs" / "av_sync_shapeworld.py"), TINY)
  task = get_task_class(config.task)(config)
  params = jax.tree.map(jnp.asarray, task.init_params(jax.random.key(0)))
  params = dict(params, sync_logit_scale=jnp.float32(np.log(1 / 0.3)))
  rng = np.random.default_rng(3)
  batch = {"audio": jnp.asarray(rng.uniform(-0.5, 0.5, (4, 16000)), jnp.float32),
           "frames": jnp.asarray(rng.uniform(0, 1, (4, 8, 32, 32, 3)), jnp.float32),
           "offset": jnp.asarray([0, 1, -2, 3])}
  loss, logged = jax.jit(lambda p, b: task.loss_fn(p, b, None))(params, batch)
  out = jax.jit(lambda p, b: task.model.apply({"params": p}, task.log_mel(b["audio"]),
                                              b["frames"]))(params, batch)
  expected = time_contrastive_loss(out["audio_time"], out["video_time"], 0.3, batch["offset"])
  np.testing.assert_allclose(logged["loss_time_contrastive"], expected, rtol=1e-5)
  np.testing.assert_allclose(logged["sync_temperature"], 0.3, rtol=1e-5)
  offset_term = offset_classification_loss(out["audio_time"], out["video_time"], 0.3,
                                           batch["offset"], max_offset=3)
  np.testing.assert_allclose(logged["loss_offset_classification"], offset_term, rtol=1e-5)
  total = (config.loss.correspondence * logged["loss_correspondence"]
           + config.loss.time_contrastive * expected
           + config.loss.alignment * logged["loss_alignment"]
           + config.loss.offset_classification * offset_term)
  np.testing.assert_allclose(loss, total, rtol=1e-5)


def test_bad_settings_are_named():
  from mmjax.train.tasks import get_task_class
  config = apply_overrides(load_config(ROOT / "configs" / "av_shapeworld.py"),
                           TINY + ["audio.frames=80"])
  with pytest.raises(ValueError, match="audio.frames=80 but 16000 samples give only 65"):
    get_task_class(config.task)(config)
  config = apply_overrides(load_config(ROOT / "configs" / "av_shapeworld.py"), TINY)
  config.loss.lipreading = 1.0
  with pytest.raises(ValueError, match=r"loss has unknown terms \['lipreading'\]"):
    get_task_class(config.task)(config)
  config = apply_overrides(load_config(ROOT / "configs" / "av_sync_shapeworld.py"),
                           TINY + ["data.offset_frames=(-5, 5)"])
  with pytest.raises(ValueError, match=r"offset_classification classifies offsets in \[-3, 3\]"):
    get_task_class(config.task)(config)


def test_every_loss_term_on_a_2x2x2_mesh_equals_one_device():
  """The batch split over data x fsdp and the parameters over fsdp x tensor (the trainer's
  shardings): every AV loss term, the clip-level InfoNCE over the whole batch included, equals
  its one-device value."""
  from mmjax.train import sharding
  from mmjax.train.tasks import get_task_class
  assert len(jax.devices()) == 8, "tests/conftest.py should give 8 CPU devices"
  config = apply_overrides(load_config(ROOT / "configs" / "av_sync_shapeworld.py"), TINY)
  config.loss = dict(correspondence=1.0, time_contrastive=1.0, alignment=0.1,
                     offset_classification=1.0, localization=0.5, lvs_localization=0.5)
  task = get_task_class(config.task)(config)
  boxed = task.init_params(jax.random.key(0))
  params = jax.tree.map(np.asarray, nn.meta.unbox(boxed))
  rng = np.random.default_rng(5)
  batch = {"audio": rng.uniform(-0.5, 0.5, (8, 16000)).astype(np.float32),
           "frames": rng.uniform(0, 1, (8, 8, 32, 32, 3)).astype(np.float32),
           "offset": np.array([0, 1, -2, 3, -3, 2, -1, 0], np.int32)}
  loss_fn = jax.jit(lambda p, b: task.loss_fn(p, b, None))
  one = jax.device_put((params, batch), jax.devices()[0])
  expected_loss, expected_terms = loss_fn(*one)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  shardings = sharding.logical_shardings(jax.eval_shape(lambda: boxed), mesh)
  sharded_params = jax.device_put(params, shardings)
  sharded_batch = jax.device_put(batch, sharding.batch_sharding(mesh))
  assert sharded_batch["audio"].addressable_shards[0].data.shape == (2, 16000)
  loss, terms = loss_fn(sharded_params, sharded_batch)
  assert set(terms) >= {f"loss_{name}" for name in config.loss}
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  for name, value in expected_terms.items():
    np.testing.assert_allclose(terms[name], value, rtol=1e-5, err_msg=name)
