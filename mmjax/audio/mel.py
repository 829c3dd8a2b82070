"""Mel scale, mel filterbank and mel spectrogram with librosa's formulas and defaults.

Two mel scales, as librosa:
- Slaney (`htk=False`, the default; MATLAB Auditory Toolbox): linear below 1 kHz (3 mels per
  200 Hz), logarithmic above it (a factor 6.4 ** (1 / 27) per mel).
- HTK (`htk=True`): mel = 2595 log10(1 + f / 700).

The filterbank is a constant: it is built on the host in numpy float64 and cast to float32,
so under `jax.jit` it becomes a literal of the compiled program. Spectrograms are
`[..., n_mels, frames]`, as librosa.
"""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.audio.stft import _positive_int, stft_frames

_SLANEY_HZ_PER_MEL = 200.0 / 3
_SLANEY_LOG_START_HZ = 1000.0
_SLANEY_LOG_START_MEL = _SLANEY_LOG_START_HZ / _SLANEY_HZ_PER_MEL
_SLANEY_LOG_STEP = np.log(6.4) / 27.0


def _array_module(x):
  """jnp for jax arrays (tracers included), numpy float64 for anything else."""
  return (jnp, x) if isinstance(x, jax.Array) else (np, np.asarray(x, np.float64))


def hz_to_mel(frequencies, htk: bool = False):
  """Hz -> mels (`librosa.hz_to_mel`). numpy/Python input gives numpy float64; a jax array
  (also under jit) gives a jax array of its dtype. Any shape."""
  xp, f = _array_module(frequencies)
  if htk:
    return (2595.0 / np.log(10.0)) * xp.log1p(f / 700.0)  # log1p: float32-accurate near 0 Hz
  linear = f / _SLANEY_HZ_PER_MEL
  log_part = _SLANEY_LOG_START_MEL + xp.log(
      xp.maximum(f, _SLANEY_LOG_START_HZ) / _SLANEY_LOG_START_HZ) / _SLANEY_LOG_STEP
  return xp.where(f >= _SLANEY_LOG_START_HZ, log_part, linear)


def mel_to_hz(mels, htk: bool = False):
  """Mels -> Hz (`librosa.mel_to_hz`), the inverse of `hz_to_mel`; same dtype rules."""
  xp, m = _array_module(mels)
  if htk:
    return 700.0 * xp.expm1(m * (np.log(10.0) / 2595.0))
  linear = m * _SLANEY_HZ_PER_MEL
  log_part = _SLANEY_LOG_START_HZ * xp.exp(
      _SLANEY_LOG_STEP * (xp.maximum(m, _SLANEY_LOG_START_MEL) - _SLANEY_LOG_START_MEL))
  return xp.where(m >= _SLANEY_LOG_START_MEL, log_part, linear)


def mel_frequencies(n_mels: int = 128, fmin: float = 0.0, fmax: float = 11025.0,
                    htk: bool = False) -> np.ndarray:
  """`[n_mels]` frequencies in Hz, uniformly spaced in mels from fmin to fmax (both included),
  numpy float64 (`librosa.mel_frequencies`)."""
  mels = np.linspace(hz_to_mel(fmin, htk), hz_to_mel(fmax, htk), _positive_int(n_mels,
                                                                                "n_mels"))
  return mel_to_hz(mels, htk)


def fft_frequencies(sr: float = 22050, n_fft: int = 2048) -> np.ndarray:
  """`[1 + n_fft // 2]` centre frequencies in Hz of the rfft bins, numpy float64."""
  _check_sample_rate(sr)
  n_fft = _positive_int(n_fft, "n_fft")
  return np.arange(1 + n_fft // 2) * (float(sr) / n_fft)


def mel_filterbank(sr: float, n_fft: int, n_mels: int = 128, fmin: float = 0.0,
                   fmax: float | None = None, htk: bool = False, norm="slaney",
                   dtype=np.float32) -> np.ndarray:
  """Triangular mel filters `[n_mels, 1 + n_fft // 2]`, equal to `librosa.filters.mel`.

  Filter m rises linearly from `mel_f[m]` to a peak of 1 at `mel_f[m + 1]` and falls to 0 at
  `mel_f[m + 2]`, with `mel_f = mel_frequencies(n_mels + 2, fmin, fmax, htk)`.

  Args:
    sr: sample rate in Hz (> 0).
    n_fft: FFT length of the spectrogram the filters apply to.
    n_mels: number of filters (>= 1).
    fmin, fmax: band edges in Hz, `0 <= fmin < fmax <= sr / 2`; fmax defaults to sr / 2.
    htk: the HTK mel scale instead of Slaney's.
    norm: "slaney" (divide each triangle by half its width in Hz: constant area), None (peak 1),
      or a positive float p (unit l_p norm per filter; `np.inf` for the max).
    dtype: numpy dtype of the result (computed in float64).

  Returns:
    numpy `[n_mels, 1 + n_fft // 2]`.
  """
  _check_sample_rate(sr)
  n_mels = _positive_int(n_mels, "n_mels")
  fmax = float(sr) / 2 if fmax is None else float(fmax)
  if not 0 <= fmin < fmax:
    raise ValueError(f"expected 0 <= fmin < fmax, got fmin={fmin}, fmax={fmax}")
  if fmax > sr / 2:
    raise ValueError(f"fmax={fmax} is above the Nyquist frequency sr / 2 = {sr / 2}")
  bin_hz = fft_frequencies(sr, n_fft)
  edges_hz = mel_frequencies(n_mels + 2, fmin, fmax, htk)
  widths_hz = np.diff(edges_hz)
  offsets = bin_hz[None, :] - edges_hz[:, None]  # [n_mels + 2, bins]
  rising = offsets[:-2] / widths_hz[:-1, None]
  falling = -offsets[2:] / widths_hz[1:, None]
  weights = np.maximum(0.0, np.minimum(rising, falling))
  weights = _normalise_filters(weights, edges_hz, norm)
  if not np.all((edges_hz[:-2] == 0) | (weights.max(axis=1) > 0)):
    warnings.warn(f"mel_filterbank(sr={sr}, n_fft={n_fft}, n_mels={n_mels}): some filters are "
                  "empty (narrower than one FFT bin); raise n_fft or lower n_mels",
                  stacklevel=2)
  return weights.astype(dtype)


def _normalise_filters(weights, edges_hz, norm):
  if norm is None:
    return weights
  if isinstance(norm, str):
    if norm != "slaney":
      raise ValueError(f"norm={norm!r} is not supported; expected 'slaney', None or a positive "
                       "float p")
    return weights * (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
  if isinstance(norm, bool) or not isinstance(norm, (int, float, np.number)) or not norm > 0:
    raise ValueError(f"norm={norm!r} is not supported; expected 'slaney', None or a positive "
                     "float p (np.inf for the max)")
  if np.isinf(norm):
    length = weights.max(axis=1)
  else:
    length = np.sum(weights ** norm, axis=1) ** (1.0 / norm)
  # An empty filter stays zero rather than becoming NaN.
  return weights / np.where(length > 0, length, 1.0)[:, None]


def melspectrogram(y, sr: float = 22050, n_fft: int = 2048, hop_length: int = 512,
                   win_length: int | None = None, window="hann", center: bool = True,
                   pad_mode: str = "constant", power: float = 2.0, n_mels: int = 128,
                   fmin: float = 0.0, fmax: float | None = None, htk: bool = False,
                   norm="slaney") -> jax.Array:
  """Mel spectrogram, equal to `librosa.feature.melspectrogram(y=y, sr=sr, ...)`.

  `mel_filterbank(sr, n_fft, n_mels, fmin, fmax, htk, norm) @ |stft(y, ...)| ** power`.

  Args:
    y: `[..., samples]` float waveform(s), computed in float32.
    sr: sample rate in Hz.
    n_fft, hop_length, win_length, window, center, pad_mode: as `stft` (note hop_length
      defaults to 512 here, as librosa's melspectrogram, not to win_length // 4).
    power: exponent of the magnitude (> 0): 2 for power, 1 for magnitude.
    n_mels, fmin, fmax, htk, norm: as `mel_filterbank`.

  Returns:
    float32 `[..., n_mels, frames]`.

  All arguments but `y` are static under `jax.jit`. ValueError for bad arguments (see `stft`
  and `mel_filterbank`); NaN audio is caught only for concrete (non-traced) `y`.
  """
  if isinstance(power, bool) or not isinstance(power, (int, float, np.number)) or not power > 0:
    raise ValueError(f"power must be a positive number, got {power!r}")
  filterbank = mel_filterbank(sr, n_fft, n_mels, fmin, fmax, htk, norm)
  spectrum = stft_frames(y, n_fft, hop_length, win_length, window, center, pad_mode)
  if power == 1:
    magnitude = jnp.abs(spectrum)  # [..., frames, bins]
  else:
    squared = jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
    magnitude = squared if power == 2 else squared ** (power / 2)
  # Frames-major contraction (one GEMM over all frames of the batch), then the transpose:
  # on CPU this is ~2x faster than contracting straight into [..., n_mels, frames]. HIGHEST:
  # accelerators would otherwise round the float32 operands to bf16.
  mel = jnp.matmul(magnitude, jnp.asarray(filterbank.T), precision=jax.lax.Precision.HIGHEST)
  return jnp.swapaxes(mel, -1, -2)


def _check_sample_rate(sr) -> None:
  if isinstance(sr, bool) or not isinstance(sr, (int, float, np.number)) or not sr > 0:
    raise ValueError(f"sample rate sr must be a positive number of Hz, got {sr!r}")
