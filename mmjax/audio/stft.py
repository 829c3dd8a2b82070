"""Short-time Fourier transform with librosa's conventions (names, defaults, frame layout).

Waveforms are `[..., samples]` and spectrograms `[..., 1 + n_fft // 2, frames]`, as in
librosa, so a batch `[B, samples]` gives `[B, bins, frames]` equal per example to
`librosa.stft(y[b], ...)`. Everything is computed in float32 (complex64 for the spectrum).

The window is a host constant (numpy float64, cast at trace time); the frames are one gather
with constant indices.

Arguments that fix shapes (`n_fft`, `hop_length`, `win_length`, `window` by name, `center`,
`pad_mode`) must be static under `jax.jit`, e.g. `jax.jit(functools.partial(stft, n_fft=512))`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

PAD_MODES = ("constant", "reflect", "edge", "symmetric")
# Periodic ("fftbins=True") generalised cosine windows: w[n] = sum_k (-1)^k a_k cos(2 pi k n / N).
_COSINE_WINDOWS = {
    "hann": (0.5, 0.5),
    "hamming": (0.54, 0.46),
    "blackman": (0.42, 0.5, 0.08),
}


def get_window(window, win_length: int) -> np.ndarray:
  """The analysis window as `scipy.signal.get_window(window, win_length, fftbins=True)`.

  Args:
    window: "hann", "hamming" or "blackman" (periodic, the form librosa uses for the STFT), or
      an explicit 1-D array of length `win_length` (returned unchanged).
    win_length: number of samples of the window (>= 1).

  Returns:
    `[win_length]` numpy float64 (or the given array).
  """
  win_length = _positive_int(win_length, "win_length")
  if isinstance(window, str):
    if window not in _COSINE_WINDOWS:
      raise ValueError(f"window={window!r} is not supported; expected one of "
                       f"{sorted(_COSINE_WINDOWS)} or a 1-D array of length win_length")
    if win_length == 1:
      return np.ones(1)  # scipy's convention for a one-sample window
    phase = 2 * np.pi * np.arange(win_length) / win_length
    return sum((-1) ** k * a * np.cos(k * phase)
               for k, a in enumerate(_COSINE_WINDOWS[window]))
  if isinstance(window, (list, tuple)):
    window = np.asarray(window, np.float64)
  if not hasattr(window, "shape") or np.ndim(window) != 1:
    raise ValueError(f"window must be a window name or a 1-D array, got {type(window).__name__}"
                     f" with shape {np.shape(window)}")
  if window.shape[0] != win_length:
    raise ValueError(f"window has length {window.shape[0]} but win_length={win_length}")
  return window


def padded_window(window, win_length: int, n_fft: int):
  """`get_window(window, win_length)` zero-padded to `[n_fft]`, centred as librosa's
  `util.pad_center` (the extra sample, if odd, goes to the right)."""
  if win_length > n_fft:
    raise ValueError(f"win_length={win_length} must be <= n_fft={n_fft}")
  win = get_window(window, win_length)
  left = (n_fft - win_length) // 2
  pad = (left, n_fft - win_length - left)
  return np.pad(win, pad) if isinstance(win, np.ndarray) else jnp.pad(win, pad)


def num_frames(n_samples: int, n_fft: int, hop_length: int, center: bool = True) -> int:
  """Frames of `stft` for a signal of `n_samples`: `1 + (L - n_fft) // hop_length` with
  `L = n_samples + 2 * (n_fft // 2)` if `center` else `n_samples`; ValueError if L < n_fft."""
  padded = n_samples + 2 * (n_fft // 2) if center else n_samples
  if padded < n_fft:
    kind = "centred (padded by n_fft // 2 each side)" if center else "uncentred"
    raise ValueError(f"n_fft={n_fft} is larger than the {kind} signal of {padded} samples "
                     f"({n_samples} samples given); use a smaller n_fft or a longer signal")
  return 1 + (padded - n_fft) // hop_length


def frame_signal(y: jax.Array, frame_length: int, hop_length: int) -> jax.Array:
  """Overlapping frames `[..., n_frames, frame_length]` of `y` `[..., samples]`.

  Frame t is `y[..., t * hop_length : t * hop_length + frame_length]` and
  `n_frames = 1 + (samples - frame_length) // hop_length`. (librosa's `util.frame` puts the
  frame axis last; here the samples of a frame are last, ready for an FFT over them.)
  """
  n_frames = 1 + (y.shape[-1] - frame_length) // hop_length
  if n_frames < 1:
    raise ValueError(f"frame_length={frame_length} is larger than the signal of "
                     f"{y.shape[-1]} samples")
  # One gather with constant indices: on XLA's CPU backend this beats strided slices.
  index = hop_length * np.arange(n_frames)[:, None] + np.arange(frame_length)[None, :]
  return y[..., index]


def stft_frames(y, n_fft: int = 2048, hop_length: int | None = None,
                win_length: int | None = None, window="hann", center: bool = True,
                pad_mode: str = "constant") -> jax.Array:
  """`stft` with the frame axis before the frequency axis: complex64 `[..., frames, bins]`
  (the layout the FFT produces; `melspectrogram` contracts it without a transpose)."""
  n_fft = _positive_int(n_fft, "n_fft")
  win_length = n_fft if win_length is None else _positive_int(win_length, "win_length")
  hop_length = win_length // 4 if hop_length is None else _positive_int(hop_length,
                                                                           "hop_length")
  if hop_length < 1:
    raise ValueError(f"hop_length defaults to win_length // 4 = 0 for win_length={win_length};"
                     " pass hop_length >= 1")
  if pad_mode not in PAD_MODES:
    raise ValueError(f"pad_mode={pad_mode!r} is not supported; expected one of {PAD_MODES}")
  y = check_waveform(y)
  fft_window = padded_window(window, win_length, n_fft)
  num_frames(y.shape[-1], n_fft, hop_length, center)  # raises if n_fft does not fit
  if center:
    pad = [(0, 0)] * (y.ndim - 1) + [(n_fft // 2, n_fft // 2)]
    y = jnp.pad(y, pad, mode=pad_mode)
  frames = frame_signal(y, n_fft, hop_length)
  return jnp.fft.rfft(frames * jnp.asarray(fft_window, jnp.float32), axis=-1)


def stft(y, n_fft: int = 2048, hop_length: int | None = None, win_length: int | None = None,
         window="hann", center: bool = True, pad_mode: str = "constant") -> jax.Array:
  """Short-time Fourier transform, equal to `librosa.stft` with the same arguments.

  Args:
    y: `[..., samples]` float waveform(s); computed in float32.
    n_fft: FFT length (frame length after padding the window).
    hop_length: samples between frames; default `win_length // 4`.
    win_length: window length (<= n_fft); default `n_fft`. A shorter window is zero-padded to
      n_fft, centred.
    window: "hann" | "hamming" | "blackman" (periodic, as scipy's `fftbins=True`), or a
      `[win_length]` array.
    center: pad `n_fft // 2` samples on both sides with `pad_mode` so that frame t is centred
      on sample `t * hop_length`.
    pad_mode: "constant" (zeros; librosa 0.11's default), "reflect", "edge" or "symmetric".

  Returns:
    complex64 `[..., 1 + n_fft // 2, frames]`, frames as `num_frames(samples, ...)`.

  Raises:
    ValueError: bad arguments, n_fft longer than the (padded) signal, non-float audio, or
      audio with NaN/inf. The finiteness check runs only when `y` is concrete (an eager call);
      under `jax.jit` `y` is a tracer and non-finite samples propagate into the output.
  """
  spectrum = stft_frames(y, n_fft, hop_length, win_length, window, center, pad_mode)
  return jnp.swapaxes(spectrum, -1, -2)


def check_waveform(y) -> jax.Array:
  """`y` as float32 `[..., samples]`; ValueError for a scalar, a non-float dtype, an empty
  signal, or (when `y` is concrete, not a tracer) NaN/inf samples."""
  if not hasattr(y, "dtype"):
    y = np.asarray(y)
  dtype = y.dtype
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"audio must be a floating-point array [..., samples], got dtype {dtype}"
                     " (convert integer PCM with y / 32768.0 or similar)")
  if np.ndim(y) == 0 or np.shape(y)[-1] == 0:
    raise ValueError(f"audio must have shape [..., samples] with samples >= 1, got shape "
                     f"{np.shape(y)}")
  if not isinstance(y, jax.core.Tracer) and not np.isfinite(np.asarray(y)).all():
    raise ValueError("audio is not finite everywhere (NaN or inf samples); clean or drop "
                     "these clips before computing features")
  return jnp.asarray(y, jnp.float32)


def _positive_int(value, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")
  return int(value)
