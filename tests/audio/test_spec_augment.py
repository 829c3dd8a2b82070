"""SpecAugment masks against a numpy transcription of the draws the module docstring states."""
import jax
import numpy as np
import pytest

from mmjax import audio


def numpy_spec_augment(spec, key, num_freq, max_freq, num_time, max_time, mask_value):
  """The module docstring's draw (one jax.random.uniform), then every width, start and mask
  computed per example by a plain loop in numpy float32. Returns (augmented, freq_masked
  [..., n_mels], time_masked [..., frames])."""
  *batch, n_mels, frames = spec.shape
  u = np.asarray(jax.random.uniform(key, (*batch, num_freq + num_time, 2)))
  freq_masked = np.zeros((*batch, n_mels), bool)
  time_masked = np.zeros((*batch, frames), bool)
  out = spec.copy()
  for index in np.ndindex(*batch):
    for k in range(num_freq + num_time):
      is_freq = k < num_freq
      max_width, size = (max_freq, n_mels) if is_freq else (max_time, frames)
      width = int(min(np.floor(u[index + (k, 0)] * np.float32(max_width + 1)), max_width))
      start = int(min(np.floor(u[index + (k, 1)] * np.float32(size - width + 1)), size - width))
      assert 0 <= width <= max_width and 0 <= start and start + width <= size
      (freq_masked if is_freq else time_masked)[index + (slice(start, start + width),)] = True
    out[index][freq_masked[index], :] = mask_value
    out[index][:, time_masked[index]] = mask_value
  return out, freq_masked, time_masked


@pytest.mark.parametrize("batch,policy,mask_value", [
    ((3, 2), (2, 10, 2, 25), 0.0),
    ((), (2, 40, 1, 60), -80.0),  # unbatched; max widths equal to n_mels / frames
])
def test_masks_match_the_documented_draws_under_jit(batch, policy, mask_value):
  rng = np.random.default_rng(0)
  spec = rng.standard_normal((*batch, 40, 60)).astype(np.float32)
  key = jax.random.PRNGKey(7)
  augment = jax.jit(lambda spec, key: (audio.spec_augment(spec, key, *policy, mask_value),
                                       audio.spec_augment_masks(key, spec.shape, *policy)))
  augmented, (freq_masked, time_masked) = augment(spec, key)
  expected, freq_expected, time_expected = numpy_spec_augment(spec, key, *policy, mask_value)
  np.testing.assert_array_equal(freq_masked, freq_expected)
  np.testing.assert_array_equal(time_masked, time_expected)
  np.testing.assert_array_equal(augmented, expected)  # masked = mask_value, the rest bit-equal
  assert freq_expected.any() and time_expected.any()  # the case masks something on both axes
  if batch:  # each example has its own masks, and a new key draws new ones
    assert len({m.tobytes() for m in time_expected.reshape(-1, 60)}) > 1
    assert len({m.tobytes() for m in freq_expected.reshape(-1, 40)}) > 1
    assert not np.array_equal(augment(spec, jax.random.PRNGKey(8))[0], augmented)


@pytest.mark.parametrize("kwargs,message", [
    (dict(max_freq_width=41), "max_freq_width=41 is larger than the spectrogram's n_mels=40"),
    (dict(max_time_width=61), "max_time_width=61 is larger than the spectrogram's frames=60"),
    (dict(num_time_masks=-1), "num_time_masks must be a non-negative int"),
    (dict(num_freq_masks=1.5), "num_freq_masks must be a non-negative int"),
])
def test_bad_policy_raises(kwargs, message):
  policy = dict(num_freq_masks=1, max_freq_width=5, num_time_masks=1, max_time_width=5)
  with pytest.raises(ValueError, match=message):
    audio.spec_augment(np.zeros((40, 60), np.float32), jax.random.PRNGKey(0),
                       **{**policy, **kwargs})
  with pytest.raises(ValueError, match=r"\[\.\.\., n_mels, frames\]"):
    audio.spec_augment(np.zeros(60, np.float32), jax.random.PRNGKey(0), **policy)
