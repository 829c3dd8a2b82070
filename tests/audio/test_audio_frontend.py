"""mmjax.audio's STFT, mel filterbank, mel spectrogram and dB against librosa 0.11 itself.

librosa runs on the float64 copy of the same float32 samples (it computes the FFT in float64
even for float32 audio, since its window is float64), so it is the exact answer; mmjax computes
in float32. A float32 FFT is accurate to ~1e-7 of its frame's energy, so spectra are compared
with rtol 1e-4 plus an absolute floor of 1e-6 of the example's peak, and log-mel in dB with
1e-3 dB within 60 dB of the peak and 5e-3 dB below (bins 60-80 dB under a loud frame).
"""
import functools

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest
import scipy.signal

from mmjax import audio


def make_signals(sr, seconds=0.5):
  """{name: float32 [samples]}: white noise, a log chirp, and a harmonic tone with a gap of
  silence and two noise bursts (a wide dynamic range, like speech)."""
  t = np.arange(int(sr * seconds)) / sr
  rng = np.random.default_rng(sr)
  chirp = scipy.signal.chirp(t, 60.0, t[-1], 0.45 * sr, method="logarithmic")
  harmonic = sum(0.6 / k * np.sin(2 * np.pi * 220.0 * k * t + k) for k in range(1, 9))
  harmonic *= (t < 0.2) | (t > 0.3)
  bursts = np.zeros_like(t)
  for start, width, level in ((0.22, 0.03, 1.0), (0.4, 0.01, 0.1)):
    span = (t >= start) & (t < start + width)
    bursts[span] = level * rng.standard_normal(span.sum())
  return {name: signal.astype(np.float32) for name, signal in (
      ("noise", 0.3 * rng.standard_normal(t.size)), ("chirp", chirp),
      ("harmonic_bursts", harmonic + bursts))}


def jitted(fn, **settings):
  """`fn` with static `settings` under jit: one compile per settings (eager jax would compile
  each primitive per shape, several times slower here)."""
  return jax.jit(functools.partial(fn, **settings))


def assert_spectra_close(actual, expected):
  """rtol 1e-4, plus 1e-6 of the peak for bins far below it (float32 FFT rounding)."""
  expected = np.asarray(expected)
  atol = 1e-6 * np.abs(expected).max()
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-4, atol=atol)


def assert_db_close(actual, expected):
  """1e-3 dB within 60 dB of the peak, 5e-3 dB below it (float32 FFT rounding)."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  error = np.abs(actual - expected)
  loud = expected >= expected.max() - 60.0
  assert error[loud].max() <= 1e-3, error[loud].max()
  assert error.max() <= 5e-3, error.max()


# ------------------------------------------------------------------------------ windows
@pytest.mark.parametrize("name", ["hann", "hamming", "blackman"])
@pytest.mark.parametrize("length", [1, 2, 7, 400, 512])
def test_windows_are_scipys_periodic_windows(name, length):
  np.testing.assert_allclose(audio.get_window(name, length),
                             scipy.signal.get_window(name, length, fftbins=True), atol=1e-12)


# ------------------------------------------------------------------------------ mel scale
def test_mel_scale_conversions_match_librosa():
  hz = np.array([0.0, 20.0, 440.0, 999.9, 1000.0, 1000.1, 4000.0, 11025.0, 22050.0])
  for htk in (False, True):
    mels = audio.hz_to_mel(hz, htk=htk)
    np.testing.assert_allclose(mels, librosa.hz_to_mel(hz, htk=htk), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(audio.mel_to_hz(mels, htk=htk),
                               librosa.mel_to_hz(mels, htk=htk), rtol=1e-12, atol=1e-9)
    # jax input (here under jit) gives jax float32 with the same values
    traced = jax.jit(functools.partial(audio.hz_to_mel, htk=htk))(jnp.asarray(hz, jnp.float32))
    np.testing.assert_allclose(traced, mels, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(audio.mel_frequencies(40, 30.0, 8000.0, htk),
                               librosa.mel_frequencies(40, fmin=30.0, fmax=8000.0, htk=htk),
                               rtol=1e-12)
  np.testing.assert_allclose(audio.fft_frequencies(16000, 400),
                             librosa.fft_frequencies(sr=16000, n_fft=400), rtol=1e-12)


FILTERBANKS = [  # sr, n_fft, n_mels, fmin, fmax, htk, norm
    (22050, 2048, 128, 0.0, None, False, "slaney"),
    (22050, 2048, 128, 0.0, None, True, "slaney"),
    (16000, 400, 80, 0.0, 8000.0, False, "slaney"),
    (16000, 512, 40, 20.0, 7600.0, True, None),
    (16000, 512, 40, 20.0, 7600.0, False, None),
    (44100, 4096, 256, 30.0, 16000.0, True, "slaney"),
    (8000, 256, 23, 300.0, 3400.0, False, None),
    (16000, 1024, 64, 125.0, 7500.0, True, 2.0),
    (16000, 1024, 64, 0.0, None, False, np.inf),
    (48000, 1200, 96, 50.0, 20000.0, False, 1.0),
]


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin,fmax,htk,norm", FILTERBANKS)
def test_mel_filterbank_matches_librosa(sr, n_fft, n_mels, fmin, fmax, htk, norm):
  ours = audio.mel_filterbank(sr, n_fft, n_mels, fmin, fmax, htk, norm)
  ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk,
                            norm=norm, dtype=np.float64)
  assert ours.shape == (n_mels, 1 + n_fft // 2) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6 * max(1.0, ref.max()))


# ------------------------------------------------------------------------------ STFT
@pytest.mark.filterwarnings("ignore:n_fft=.* is too large")  # librosa's, for centred n_fft > len
@pytest.mark.parametrize("center", [True, False])
def test_frame_counts_match_librosa(center):
  for n_samples in (1000, 1023, 1024, 1025, 4097):
    for n_fft in (256, 511, 1024):
      for hop_length in (None, 64, 100, 256):
        if not center and n_fft > n_samples:
          continue
        expected = librosa.stft(np.zeros(n_samples), n_fft=n_fft, hop_length=hop_length,
                                center=center).shape
        shape = jax.eval_shape(functools.partial(
            audio.stft, n_fft=n_fft, hop_length=hop_length, center=center),
            jax.ShapeDtypeStruct((n_samples,), jnp.float32)).shape
        assert shape == expected, (n_samples, n_fft, hop_length)
        assert audio.num_frames(n_samples, n_fft, hop_length or n_fft // 4, center) == shape[1]


STFT_SETTINGS = [
    dict(n_fft=400, hop_length=160),
    dict(n_fft=512),  # hop = win_length // 4
    dict(n_fft=512, hop_length=128, win_length=300, window="hamming"),
    dict(n_fft=511, hop_length=97, win_length=257, window="blackman", center=False),
    dict(n_fft=256, hop_length=100, pad_mode="reflect"),
    dict(n_fft=1024, hop_length=256, pad_mode="edge"),
]


@pytest.mark.parametrize("settings", STFT_SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_stft_matches_librosa(settings):
  stft = jitted(audio.stft, **settings)
  for name, y in make_signals(16000).items():
    expected = librosa.stft(y.astype(np.float64), **settings)
    ours = stft(y)
    assert ours.shape == expected.shape and ours.dtype == jnp.complex64, name
    # Complex values (phase included), so a frame shifted by a sample fails too.
    error = np.abs(np.asarray(ours) - expected)
    bound = 1e-4 * np.abs(expected) + 1e-6 * np.abs(expected).max()
    assert np.all(error <= bound), (name, (error / bound).max())


def test_stft_takes_an_explicit_window_eagerly_and_jitted():
  y = make_signals(8000)["harmonic_bursts"]
  window = scipy.signal.get_window(("kaiser", 8.0), 200, fftbins=True)
  expected = librosa.stft(y.astype(np.float64), n_fft=256, hop_length=80, win_length=200,
                          window=window)
  for ours in (audio.stft(y, 256, 80, 200, window),
               jax.jit(audio.stft, static_argnums=(1, 2, 3))(y, 256, 80, 200, window)):
    assert_spectra_close(np.abs(ours), np.abs(expected))


# ------------------------------------------------------------------------------ mel / dB
MEL_SETTINGS = [
    dict(sr=16000, n_fft=400, hop_length=160, n_mels=80),
    dict(sr=22050),  # all librosa defaults
    dict(sr=16000, n_fft=1024, hop_length=256, win_length=800, window="hamming",
         pad_mode="reflect", power=1.0, n_mels=64, fmin=20.0, fmax=8000.0, htk=True, norm=None),
    dict(sr=8000, n_fft=256, hop_length=64, center=False, power=1.5, n_mels=32, fmin=100.0),
]


@pytest.mark.parametrize("settings", MEL_SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_melspectrogram_and_log_mel_match_librosa(settings):
  features = jax.jit(lambda y: (audio.melspectrogram(y, **settings),
                                audio.log_mel(y, **settings),
                                audio.log_mel(y, **settings, ref=np.max)))
  for name, y in make_signals(settings["sr"]).items():
    expected = librosa.feature.melspectrogram(y=y.astype(np.float64), **settings)
    mel, db, db_max = features(y)
    assert mel.dtype == jnp.float32, name
    assert_spectra_close(mel, expected)
    if settings.get("power", 2.0) != 2.0:
      continue  # top_db on magnitude ** p < 2 leaves float32-noisy bins 80-160 dB down unfloored
    assert_db_close(db, librosa.power_to_db(expected))
    assert_db_close(db_max, librosa.power_to_db(expected, ref=np.max))


@pytest.mark.parametrize("ref,amin,top_db", [
    (1.0, 1e-10, 80.0), (np.max, 1e-10, 80.0), (np.max, 1e-5, 40.0), (1e-3, 1e-10, None),
    (jnp.mean, 1e-8, 60.0), (0.5, 1e-10, 0.0), (1e-12, 1e-10, None)])  # last: ref < amin
def test_power_to_db_matches_librosa(ref, amin, top_db):
  y = make_signals(16000)["harmonic_bursts"]
  mel = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=400, hop_length=160)
  mel = mel.astype(np.float32)
  np_ref = np.mean if ref is jnp.mean else ref
  expected = librosa.power_to_db(mel.astype(np.float64), ref=np_ref, amin=amin, top_db=top_db)
  np.testing.assert_allclose(audio.power_to_db(mel, ref, amin, top_db), expected, rtol=0,
                             atol=1e-4)


def test_batches_are_per_example():
  """[2, 3, samples] of clips 40 dB apart: ref=np.max and the top_db floor per example, as
  librosa on each clip; stft batched equals stft per example."""
  signals = list(make_signals(16000).values())
  batch = np.stack([np.stack(signals), 0.01 * np.stack(signals[::-1])])  # [2, 3, samples]
  settings = dict(sr=16000, n_fft=400, hop_length=160, n_mels=80)
  features = jax.jit(lambda y: (audio.log_mel(y, **settings),
                                audio.log_mel(y, **settings, ref=np.max)))(batch)
  assert features[0].shape == (2, 3, 80, 51)
  for i in range(2):
    for j in range(3):
      mel = librosa.feature.melspectrogram(y=batch[i, j].astype(np.float64), **settings)
      assert_db_close(features[0][i, j], librosa.power_to_db(mel))
      assert_db_close(features[1][i, j], librosa.power_to_db(mel, ref=np.max))
  stft = jitted(audio.stft, n_fft=400, hop_length=160)
  spectra = stft(batch)
  for i in range(2):
    for j in range(3):
      np.testing.assert_allclose(spectra[i, j], stft(batch[i, j]), rtol=1e-5,
                                 atol=1e-5 * np.abs(spectra[i, j]).max())


# ------------------------------------------------------------------------------ bad input
Y = np.zeros(4000, np.float32)


@pytest.mark.parametrize("call,message", [
    (lambda: audio.stft(Y, n_fft=8192, center=False), "n_fft=8192 is larger"),
    (lambda: audio.stft(Y[:0], n_fft=16), "samples >= 1"),
    (lambda: audio.stft(np.full(100, np.nan, np.float32), n_fft=16), "not finite"),
    (lambda: audio.stft(Y.astype(np.int16), n_fft=16), "floating-point"),
    (lambda: audio.stft(Y, n_fft=16, hop_length=0), "hop_length must be a positive"),
    (lambda: audio.stft(Y, n_fft=16, win_length=32), "win_length=32 must be <= n_fft=16"),
    (lambda: audio.stft(Y, n_fft=16, window="kaiser"), "window='kaiser' is not supported"),
    (lambda: audio.stft(Y, n_fft=16, window=np.ones(8)), "window has length 8"),
    (lambda: audio.stft(Y, n_fft=16, pad_mode="wrap"), "pad_mode='wrap'"),
    (lambda: audio.melspectrogram(Y, sr=0), "sample rate sr"),
    (lambda: audio.melspectrogram(Y, sr=16000, fmax=9000.0), "fmax=9000.0 is above"),
    (lambda: audio.melspectrogram(Y, sr=16000, n_mels=0), "n_mels must be a positive"),
    (lambda: audio.melspectrogram(Y, sr=16000, fmin=500.0, fmax=200.0), "fmin < fmax"),
    (lambda: audio.melspectrogram(Y, sr=16000, norm="l2"), "norm='l2' is not supported"),
    (lambda: audio.melspectrogram(Y, sr=16000, power=0), "power must be"),
    (lambda: audio.power_to_db(np.ones((4, 4)), amin=0.0), "amin must be"),
    (lambda: audio.power_to_db(np.ones((4, 4)), top_db=-1.0), "top_db must be"),
    (lambda: audio.power_to_db(np.ones((2, 4, 4)), ref=lambda s: s[0]), "ref callable"),
])
def test_bad_input_raises_a_clear_error(call, message):
  with pytest.raises(ValueError, match=message):
    call()
