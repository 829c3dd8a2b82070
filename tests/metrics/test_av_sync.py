"""Offset search against a brute-force loop, on random features and on clips whose true
offset is known in the data set's convention (offset > 0: audio lags video)."""
import jax
import numpy as np
import pytest

from mmjax import metrics

N_FRAMES = 8


def brute_force_distances(audio, video, max_offset):
  """For tau in [-K, K]: mean over t of ||a_t - v_{t+tau}||^2; offset = -tau -> column K - tau."""
  n, n_frames, _ = audio.shape
  out = np.zeros((n, 2 * max_offset + 1))
  for i in range(n):
    for tau in range(-max_offset, max_offset + 1):
      total, count = 0.0, 0
      for t in range(n_frames):
        if 0 <= t + tau < n_frames:
          total += float(np.sum((audio[i, t].astype(np.float64) - video[i, t + tau]) ** 2))
          count += 1
      out[i, max_offset - tau] = total / count
  return out


def clips_with_offsets(rng, offsets, max_offset, dim=6, noise=0.0):
  """Audio lagging video by `offsets[i]` frames: audio frame t + o shows video frame t."""
  base = rng.normal(size=(len(offsets), N_FRAMES + 2 * max_offset, dim))
  video = base[:, max_offset:max_offset + N_FRAMES]
  audio = np.stack([b[max_offset - o:max_offset - o + N_FRAMES] for b, o in zip(base, offsets)])
  audio = audio + noise * rng.normal(size=audio.shape)
  return audio.astype(np.float32), video.astype(np.float32)


@pytest.mark.parametrize("max_offset", [0, 1, 2, 3])
def test_distances_match_brute_force(max_offset):
  rng = np.random.default_rng(max_offset)
  audio = rng.normal(size=(5, N_FRAMES, 4)).astype(np.float32)
  video = rng.normal(size=(5, N_FRAMES, 4)).astype(np.float32)
  want = brute_force_distances(audio, video, max_offset)
  got = metrics.sync_distances(audio, video, max_offset)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
  jitted = jax.jit(metrics.sync_distances, static_argnames="max_offset")
  np.testing.assert_allclose(np.asarray(jitted(audio, video, max_offset=max_offset)), want,
                             rtol=1e-5)


@pytest.mark.parametrize("max_offset", [1, 3])
def test_known_offsets_are_recovered(max_offset):
  rng = np.random.default_rng(10 + max_offset)
  offsets = np.tile(np.arange(-max_offset, max_offset + 1), 2)
  for noise in (0.0, 0.1):
    audio, video = clips_with_offsets(rng, offsets, max_offset, noise=noise)
    distances = metrics.sync_distances(audio, video, max_offset)
    np.testing.assert_allclose(np.asarray(distances),
                               brute_force_distances(audio, video, max_offset), rtol=1e-5)
    predicted = metrics.predict_offset(distances)
    np.testing.assert_array_equal(np.asarray(predicted), offsets)
    np.testing.assert_array_equal(np.asarray(jax.jit(metrics.predict_offset)(distances)),
                                  offsets)
    assert float(metrics.sync_accuracy(predicted, offsets)) == 1.0


def test_audio_event_after_video_event_is_a_positive_offset():
  # A clap seen at frame 2 and heard at frame 4: the audio lags the video by 2 frames.
  video = np.zeros((1, N_FRAMES, 1), np.float32)
  audio = np.zeros((1, N_FRAMES, 1), np.float32)
  video[0, 2] = audio[0, 4] = 1.0
  distances = metrics.sync_distances(audio, video, 3)
  assert int(metrics.predict_offset(distances)[0]) == 2
  np.testing.assert_allclose(np.asarray(distances)[0, 3 + 2], 0.0)


def test_ties_go_to_the_offset_nearest_zero():
  distances = np.array([[1.0, 0.0, 5.0, 0.0, 1.0],  # offsets -1 and +1 tie
                        [0.0, 3.0, 3.0, 3.0, 0.0],  # -2 and +2 tie
                        [2.0, 2.0, 2.0, 2.0, 2.0],
                        [4.0, 3.0, 2.0, 1.0, 0.5]])
  np.testing.assert_array_equal(np.asarray(metrics.predict_offset(distances)), [-1, -2, 0, 2])
  constant = np.ones((2, N_FRAMES, 3), np.float32)
  distances = metrics.sync_distances(constant, constant, 3)
  np.testing.assert_array_equal(np.asarray(metrics.predict_offset(distances)), [0, 0])


def test_sync_accuracy_tolerance():
  predicted = np.array([0, 1, 2, -1, -3])
  true = np.array([0, 0, 0, 0, -2])
  assert float(metrics.sync_accuracy(predicted, true)) == pytest.approx(1 / 5)
  assert float(metrics.sync_accuracy(predicted, true, tolerance=1)) == pytest.approx(4 / 5)
  jitted = jax.jit(metrics.sync_accuracy, static_argnames="tolerance")
  assert float(jitted(predicted, true, tolerance=1)) == pytest.approx(4 / 5)


def test_bad_input_raises():
  feats = np.zeros((2, N_FRAMES, 3), np.float32)
  with pytest.raises(ValueError, match=r"max_offset must be in \[0, T\) = \[0, 8\)"):
    metrics.sync_distances(feats, feats, N_FRAMES)
  with pytest.raises(ValueError, match="max_offset"):
    metrics.sync_distances(feats, feats, -1)
  with pytest.raises(ValueError, match="share the shape"):
    metrics.sync_distances(feats, feats[:, :-1], 1)
  with pytest.raises(ValueError, match="2K \\+ 1 columns"):
    metrics.predict_offset(np.zeros((2, 4)))
  with pytest.raises(ValueError, match="tolerance"):
    metrics.sync_accuracy(np.zeros(3, int), np.zeros(3, int), tolerance=-1)
  with pytest.raises(ValueError, match=r"both be \[N\]"):
    metrics.sync_accuracy(np.zeros(3, int), np.zeros(4, int))
