"""The audio-visual towers: per-time tokens are the time columns of the spectrogram ViT and the
temporal stack's frame vectors, and the heatmap is the cosine of the clip's audio embedding with
each frame's projected patch tokens (numpy transcriptions over the towers' own sub-modules)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import build_model
from mmjax.nn.vit import VisionTransformer

MODEL = dict(name="audio_visual", embed_dim=8,
             audio_encoder=dict(name="audio_spectrogram_transformer", patch_size=4, width=16,
                                num_layers=1, num_heads=2),
             video_encoder=dict(name="video_transformer", patch_size=4, width=16, num_layers=1,
                                num_heads=2, temporal_layers=1, max_frames=4))


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def model_and_inputs():
  model = build_model(MODEL)
  rng = np.random.default_rng(0)
  log_mel = rng.uniform(-80, 0, (2, 8, 16)).astype(np.float32)   # 2 mel x 4 time patches
  frames = rng.uniform(0, 1, (2, 4, 8, 8, 3)).astype(np.float32)  # 4 frames of 2 x 2 patches
  params = nn.meta.unbox(model.init(jax.random.key(0), log_mel, frames)["params"])
  return model, params, log_mel, frames


def test_audio_per_time_tokens_are_the_mean_of_each_time_column(model_and_inputs):
  model, params, log_mel, _ = model_and_inputs
  audio = model.audio_encoder
  per_time, _ = audio.apply({"params": params["audio_encoder"]}, log_mel)
  vit = VisionTransformer(4, 16, 1, 2, pool="gap")
  tokens, _ = vit.apply({"params": params["audio_encoder"]["vit"]},
                        ((log_mel + 40.0) / 40.0)[..., None])
  tokens = np.asarray(tokens)
  expected = np.zeros((2, 4, 16), np.float32)
  for t in range(4):  # patch tokens are row-major over (mel patch, time patch)
    expected[:, t] = np.mean([tokens[:, 1 + f * 4 + t] for f in range(2)], axis=0)
  np.testing.assert_allclose(per_time, expected, rtol=1e-5, atol=1e-6)


def test_outputs_against_their_numpy_transcription(model_and_inputs):
  model, params, log_mel, frames = model_and_inputs
  out = model.apply({"params": params}, log_mel, frames)
  audio_time, audio_pooled = model.audio_encoder.apply({"params": params["audio_encoder"]},
                                                       log_mel)
  video = model.video_encoder.apply({"params": params["video_encoder"]}, frames)
  wa = np.asarray(params["audio_proj"]["kernel"])
  wv = np.asarray(params["video_proj"]["kernel"])
  audio_emb = _unit(np.asarray(audio_pooled) @ wa)
  patches = _unit(np.asarray(video["patches"]) @ wv)
  np.testing.assert_allclose(out["audio_emb"], audio_emb, atol=1e-5)
  np.testing.assert_allclose(out["video_emb"], _unit(np.asarray(video["pooled"]) @ wv), atol=1e-5)
  np.testing.assert_allclose(out["audio_time"], _unit(np.asarray(audio_time) @ wa), atol=1e-5)
  np.testing.assert_allclose(out["video_time"], _unit(np.asarray(video["per_time"]) @ wv),
                             atol=1e-5)
  heatmap = np.einsum("be,btne->btn", audio_emb, patches)
  np.testing.assert_allclose(out["heatmap"], heatmap, atol=1e-5)
  assert out["heatmap"].shape == (2, 4, 4)
  # The clip vector is the mean of the per-time vectors, which do depend on the frame order.
  np.testing.assert_allclose(video["pooled"], np.asarray(video["per_time"]).mean(1), atol=1e-6)
  reversed_video = model.video_encoder.apply({"params": params["video_encoder"]},
                                             frames[:, ::-1])
  assert not np.allclose(reversed_video["per_time"][:, ::-1], video["per_time"], atol=1e-4)


def test_bad_shapes_are_named(model_and_inputs):
  model, params, log_mel, frames = model_and_inputs
  with pytest.raises(ValueError, match="not divisible by patch_size=4"):
    model.apply({"params": params}, log_mel[:, :, :14], frames)
  with pytest.raises(ValueError, match="more than max_frames=4"):
    model.apply({"params": params}, log_mel, jnp.concatenate([frames, frames], axis=1))


def test_the_sync_head_centres_its_own_projections_over_time(model_and_inputs):
  _, _, log_mel, frames = model_and_inputs
  model = build_model(dict(MODEL, sync_dim=6))
  params = nn.meta.unbox(model.init(jax.random.key(1), log_mel, frames)["params"])
  out = model.apply({"params": params}, log_mel, frames)
  audio_time, _ = model.audio_encoder.apply({"params": params["audio_encoder"]}, log_mel)
  video = model.video_encoder.apply({"params": params["video_encoder"]}, frames)
  centred = lambda x: x - x.mean(axis=1, keepdims=True)
  qa = np.asarray(params["audio_sync_proj"]["kernel"])
  qv = np.asarray(params["video_sync_proj"]["kernel"])
  np.testing.assert_allclose(out["audio_time"], _unit(centred(np.asarray(audio_time) @ qa)),
                             atol=1e-5)
  np.testing.assert_allclose(out["video_time"],
                             _unit(centred(np.asarray(video["per_time"]) @ qv)), atol=1e-5)
  assert out["audio_time"].shape == (2, 4, 6)
  # The clip space is the shared projections', untouched by the head.
  wa = np.asarray(params["audio_proj"]["kernel"])
  np.testing.assert_allclose(out["video_emb"], _unit(np.asarray(video["pooled"]) @
                                                     np.asarray(params["video_proj"]["kernel"])),
                             atol=1e-5)
  assert wa.shape == (16, 8)
  np.testing.assert_allclose(out["sync_logit_scale"], np.log(1 / 0.07), rtol=1e-6)
  with pytest.raises(ValueError, match="sync_dim must be >= 0"):
    build_model(dict(MODEL, sync_dim=-1)).init(jax.random.key(1), log_mel, frames)
