"""ShapeWorld-AV sound synthesis: band-limited object tones with bounce envelopes, formant
"speech", background noise at a given SNR. Numpy only.

Every signal is a pure function of the WORLD sample index n (n = 0 at the start of clip frame 0;
negative before it): the same n always gives the same value, whatever window of samples is
asked for. That is what makes an audio-visual offset an exact shift (see shapeworld_av.py).

Object sound = gain * envelope(n) * wave(n):
  wave: one period of a band-limited waveform of the object's timbre (harmonics up to
    0.45 * sample_rate, at most MAX_HARMONICS), peak-normalised to 1, read at the pitch
    PITCHES_HZ[colour]; the "noisy" timbre adds NOISY_MIX of white noise to a sine.
  envelope: max(sustain, burst) in [0, 1]. sustain interpolates, linearly between frame starts,
    a per-frame level in [SUSTAIN_MIN, SUSTAIN_MAX] that rises as the object nears a wall;
    burst is a percussive onset at each bounce: a linear ATTACK_SECONDS ramp to 1, then
    exp(-t / DECAY_SECONDS).
"""
from __future__ import annotations

import functools

import numpy as np

# Index-aligned with shapeworld_render.SHAPES (circle, square, triangle, star, cross, diamond).
TIMBRES = ("sine", "square", "triangle", "sawtooth", "noisy", "pulse")
# Index-aligned with shapeworld_text.COLOURS: minor thirds from A3 (220 Hz) to F#5 (740 Hz),
# 19% apart, so any FFT over >= 20 ms tells them apart.
PITCHES_HZ = 220.0 * 2.0 ** (3.0 * np.arange(8) / 12.0)
MAX_HARMONICS = 16
WAVETABLE_SIZE = 2048
NOISY_MIX = 0.3
ATTACK_SECONDS = 0.002
DECAY_SECONDS = 0.04
SUSTAIN_MIN, SUSTAIN_MAX = 0.15, 0.5
# Fixed white noise (uniform in [-1, 1]) read at (n + per-object start) by the "noisy" timbre.
_NOISE_TABLE = np.random.default_rng(20240516).uniform(-1.0, 1.0, 1 << 16).astype(np.float32)
NOISE_TABLE_SIZE = len(_NOISE_TABLE)


def _harmonic_amplitudes(timbre: str, count: int) -> tuple[np.ndarray, np.ndarray]:
  """(sine amplitudes, cosine amplitudes) `[count]` of harmonics 1..count."""
  n = np.arange(1, count + 1, dtype=np.float64)
  odd = n % 2 == 1
  sines, cosines = np.zeros(count), np.zeros(count)
  if timbre in ("sine", "noisy"):
    sines[0] = 1.0
  elif timbre == "square":
    sines = np.where(odd, 1.0 / n, 0.0)
  elif timbre == "triangle":
    sines = np.where(odd, (-1.0) ** ((n - 1) // 2) / n ** 2, 0.0)
  elif timbre == "sawtooth":
    sines = (-1.0) ** (n + 1) / n
  elif timbre == "pulse":  # 25% duty cycle.
    cosines = np.sin(np.pi * n / 4) / n
  else:
    raise ValueError(f"unknown timbre {timbre!r}; expected one of {TIMBRES}")
  return sines, cosines


@functools.lru_cache(maxsize=8)
def wavetables(sample_rate: int) -> np.ndarray:
  """float32 `[len(TIMBRES), len(PITCHES_HZ), WAVETABLE_SIZE]`: one period of each (timbre,
  pitch), band-limited for `sample_rate`, max |value| = 1."""
  theta = 2 * np.pi * np.arange(WAVETABLE_SIZE) / WAVETABLE_SIZE
  tables = np.zeros((len(TIMBRES), len(PITCHES_HZ), WAVETABLE_SIZE), np.float32)
  for p, pitch in enumerate(PITCHES_HZ):
    count = int(min(MAX_HARMONICS, max(1, np.floor(0.45 * sample_rate / pitch))))
    harmonics = np.arange(1, count + 1)[:, None] * theta
    for t, timbre in enumerate(TIMBRES):
      sines, cosines = _harmonic_amplitudes(timbre, count)
      wave = sines @ np.sin(harmonics) + cosines @ np.cos(harmonics)
      tables[t, p] = wave / np.abs(wave).max()
  return tables


def tone(timbre: int, pitch: int, world_samples: np.ndarray, sample_rate: int, phase: float,
         noise_start: int) -> np.ndarray:
  """float32 `[N]` in [-1, 1]: the waveform of (timbre, pitch) at int64 `world_samples` `[N]`.

  `phase`: cycles at n = 0; `noise_start`: where the "noisy" timbre reads the noise table.
  """
  cycles = world_samples * (PITCHES_HZ[pitch] / sample_rate) + phase
  index = ((cycles - np.floor(cycles)) * WAVETABLE_SIZE).astype(np.int64) % WAVETABLE_SIZE
  wave = wavetables(sample_rate)[timbre, pitch][index]
  if TIMBRES[timbre] == "noisy":
    noise = _NOISE_TABLE[(world_samples + noise_start) % NOISE_TABLE_SIZE]
    wave = (1.0 - NOISY_MIX) * wave + NOISY_MIX * noise
  return wave


def envelope(world_samples: np.ndarray, frame_starts: np.ndarray, sustain: np.ndarray,
             onsets: np.ndarray, sample_rate: int) -> np.ndarray:
  """float32 `[N]` in [0, 1]: max(sustain, burst) at contiguous int64 `world_samples` `[N]`.

  Args:
    frame_starts: int64 `[W]`, world sample of each simulated frame's start (increasing).
    sustain: `[W]` level at each frame start (linearly interpolated in between, held past the
      ends).
    onsets: int64 `[K]`, world samples where a burst starts (all the world's onsets: one that
      starts before the window still decays into it).
  """
  level = np.interp(world_samples, frame_starts, sustain).astype(np.float32)
  first, count = int(world_samples[0]), len(world_samples)
  attack, decay = ATTACK_SECONDS * sample_rate, DECAY_SECONDS * sample_rate
  # Past 3 decays a burst is below SUSTAIN_MIN, hence below `level`: max() ignores it there.
  tail = int(np.ceil(3 * decay))
  for onset in onsets:
    lo, hi = max(int(onset) - first, 0), min(int(onset) + tail - first, count)
    if lo >= hi:
      continue
    since = (world_samples[lo:hi] - onset).astype(np.float32)
    burst = np.minimum(1.0, (since + 1.0) / attack) * np.exp(-since / decay)
    np.maximum(level[lo:hi], burst, out=level[lo:hi])
  return level


def formant_tones(world_samples: np.ndarray, segments, sample_rate: int, gain: float,
                  ramp_seconds: float = 0.005) -> np.ndarray:
  """float32 `[N]`: phoneme segments heard as two sinusoids at their formants.

  Args:
    world_samples: contiguous int64 `[N]`.
    segments: iterable of (start, stop, f1_hz, f2_hz), world samples [start, stop); each is
      gain * (sin(2 pi f1 n / sr) + 0.5 sin(2 pi f2 n / sr)), faded in and out over
      `ramp_seconds` (raised cosine) so segment edges do not click. Silence elsewhere.
  """
  out = np.zeros(len(world_samples), np.float32)
  first, ramp = int(world_samples[0]), max(1.0, ramp_seconds * sample_rate)
  for start, stop, f1, f2 in segments:
    lo, hi = max(int(start) - first, 0), min(int(stop) - first, len(out))
    if lo >= hi:
      continue
    n = world_samples[lo:hi]
    edge = np.minimum(n - start + 0.5, stop - n - 0.5) / ramp
    fade = 0.5 - 0.5 * np.cos(np.pi * np.clip(edge, 0.0, 1.0))
    time = 2 * np.pi * n / sample_rate
    out[lo:hi] = gain * fade * (np.sin(f1 * time) + 0.5 * np.sin(f2 * time))
  return out


def add_noise(clean: np.ndarray, snr_db: float | None, rng: np.random.Generator) -> np.ndarray:
  """float32 `[N]` in [-1, 1]: `clean` plus white Gaussian noise whose mean power over the clip
  is exactly mean(clean**2) / 10**(snr_db / 10) (no noise for None), then clipped."""
  if snr_db is None:
    return np.clip(clean, -1.0, 1.0).astype(np.float32)
  noise = rng.standard_normal(len(clean))
  target = np.mean(np.square(clean, dtype=np.float64)) / 10.0 ** (snr_db / 10.0)
  noise *= np.sqrt(target / np.mean(noise ** 2))
  return np.clip(clean + noise, -1.0, 1.0).astype(np.float32)
