"""The audio front end as pure jax functions with librosa's argument names and defaults.

Waveforms are `[..., samples]`, spectrograms `[..., freq, frames]` (freq = 1 + n_fft // 2 bins
or n_mels), as librosa, so `log_mel(y[b], ...)` equals
`librosa.power_to_db(librosa.feature.melspectrogram(y=y[b], ...))` for every example b.
Computed in float32; shape-setting arguments are static under jit:

  features = jax.jit(functools.partial(log_mel, sr=16000, n_fft=400, hop_length=160,
                                       n_mels=80))(waveforms)       # [B, 80, frames]

- stft / stft_frames / frame_signal / get_window / num_frames: framing and the STFT.
- hz_to_mel / mel_to_hz / mel_frequencies / fft_frequencies / mel_filterbank /
  melspectrogram: the mel scale (Slaney or HTK) and mel spectrogram.
- power_to_db / log_mel: decibels, `ref` and `top_db` per example of a batch.
- spec_augment / spec_augment_masks: SpecAugment frequency and time masks.
"""
from mmjax.audio.db import log_mel, power_to_db
from mmjax.audio.mel import (fft_frequencies, hz_to_mel, mel_filterbank, mel_frequencies,
                             mel_to_hz, melspectrogram)
from mmjax.audio.spec_augment import spec_augment, spec_augment_masks
from mmjax.audio.stft import frame_signal, get_window, num_frames, stft, stft_frames

__all__ = [
    "fft_frequencies", "frame_signal", "get_window", "hz_to_mel", "log_mel", "mel_filterbank",
    "mel_frequencies", "mel_to_hz", "melspectrogram", "num_frames", "power_to_db",
    "spec_augment", "spec_augment_masks", "stft", "stft_frames",
]
