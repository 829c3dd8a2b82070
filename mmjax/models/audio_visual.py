"""Audio-visual two-tower model: correspondence, sound localisation and synchronisation.

One audio tower and one video tower (`mmjax.nn.av_encoders`) map into a shared, L2-normalised
space through linear projections, as CLIP's towers do:
  S(a, v) = cos(P_a f_A(a), P_v f_V(v))                 clip-level correspondence
  a_t, v_t = P_a f_A(a)_t, P_v f_V(v)_t (normalised)    per-time features (alignment, sync)
  heatmap[t, i, j] = cos(P_a f_A(a), P_v patch_t[i, j])  where in frame t the sound comes from
The patch tokens share the video projection, so the heatmap compares the clip's sound with the
same space the correspondence loss trains (LVS-style localisation).

With `sync_dim > 0` the per-time features get a synchronisation head of their own instead
(SyncNet's separate stream): own projections to `sync_dim`, the clip's mean over time
subtracted before normalising, and an own temperature:
  a_t = normalise(Q_a f_A(a)_t - mean_s Q_a f_A(a)_s)   (v_t likewise with Q_v)
Sharing the clip space, the per-time features collapse to the clip embedding (the
correspondence loss rewards exactly that, and a collapsed pair is a fixed point of the
per-time InfoNCE); centred, a clip-constant component cannot carry them at all, so they must
carry what changes from frame to frame.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models.clip import l2_normalize
from mmjax.nn.transformer import dense

Dtype = Any


class AudioVisual(nn.Module):
  """Audio tower + video tower + projections + learnable temperature.

  Attributes:
    audio_encoder: log-mel `[B, n_mels, frames]` -> (per-time `[B, Ta, Wa]`, pooled `[B, Wa]`)
      (`AudioSpectrogramTransformer`).
    video_encoder: frames `[B, T, S, S, 3]` -> {"per_time" `[B, T, Wv]`, "pooled" `[B, Wv]`,
      "patches" `[B, T, N, Wv]`} (`VideoTransformer`).
    embed_dim: shared embedding width E.
    logit_scale_init: initial log inverse temperature.
    sync_dim: width of the synchronisation head (0: per-time features in the clip space).
  """
  audio_encoder: nn.Module
  video_encoder: nn.Module
  embed_dim: int
  logit_scale_init: float = math.log(1 / 0.07)
  sync_dim: int = 0
  dtype: Dtype = jnp.float32

  def setup(self):
    self.audio_proj = dense(self.embed_dim, "audio_proj", ("embed", "embed_out"),
                            dtype=self.dtype, use_bias=False)
    self.video_proj = dense(self.embed_dim, "video_proj", ("embed", "embed_out"),
                            dtype=self.dtype, use_bias=False)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(self.logit_scale_init),
                                  ())
    if self.sync_dim < 0:
      raise ValueError(f"sync_dim must be >= 0 (0: no synchronisation head), got {self.sync_dim}")
    if self.sync_dim:
      self.audio_sync_proj = dense(self.sync_dim, "audio_sync_proj", ("embed", "embed_out"),
                                   dtype=self.dtype, use_bias=False)
      self.video_sync_proj = dense(self.sync_dim, "video_sync_proj", ("embed", "embed_out"),
                                   dtype=self.dtype, use_bias=False)
      self.sync_logit_scale = self.param(
          "sync_logit_scale", nn.initializers.constant(self.logit_scale_init), ())

  def per_time(self, audio_tokens: jax.Array, video_tokens: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
    """Per-time tower tokens `[B, T, Wa]`, `[B, T, Wv]` -> normalised features `[B, T, D]`
    (D = embed_dim in the clip space, or sync_dim through the centred sync head)."""
    if not self.sync_dim:
      return l2_normalize(self.audio_proj(audio_tokens)), l2_normalize(self.video_proj(video_tokens))
    centred = lambda x: x - x.mean(axis=1, keepdims=True)
    return (l2_normalize(centred(self.audio_sync_proj(audio_tokens))),
            l2_normalize(centred(self.video_sync_proj(video_tokens))))

  def encode_audio(self, log_mel: jax.Array) -> jax.Array:
    """`[B, n_mels, frames]` -> normalised `[B, E]` float32."""
    _, pooled = self.audio_encoder(log_mel)
    return l2_normalize(self.audio_proj(pooled))

  def encode_video(self, frames: jax.Array) -> jax.Array:
    """`[B, T, S, S, 3]` -> normalised `[B, E]` float32."""
    return l2_normalize(self.video_proj(self.video_encoder(frames)["pooled"]))

  def logit_params(self) -> dict[str, jax.Array]:
    """logit_scale `[]` (and sync_logit_scale `[]` with a sync head), clipped to log(100) as
    CLIP's."""
    out = {"logit_scale": jnp.minimum(self.logit_scale, math.log(100.0))}
    if self.sync_dim:
      out["sync_logit_scale"] = jnp.minimum(self.sync_logit_scale, math.log(100.0))
    return out

  def __call__(self, log_mel: jax.Array, frames: jax.Array) -> dict[str, jax.Array]:
    """Everything the losses and evaluations need, all normalised float32:

    audio_emb, video_emb `[B, E]`; audio_time `[B, Ta, D]`, video_time `[B, T, D]`
    (`per_time`); patch_emb `[B, T, N, E]` (each frame's projected patch tokens); heatmap
    `[B, T, N]` (cosine of audio_emb with patch_emb); logit_scale `[]` (`logit_params`).
    """
    audio_time, audio_pooled = self.audio_encoder(log_mel)
    video = self.video_encoder(frames)
    audio_emb = l2_normalize(self.audio_proj(audio_pooled))
    patches = l2_normalize(self.video_proj(video["patches"]))
    audio_time, video_time = self.per_time(audio_time, video["per_time"])
    return {
        "audio_emb": audio_emb,
        "video_emb": l2_normalize(self.video_proj(video["pooled"])),
        "audio_time": audio_time,
        "video_time": video_time,
        "patch_emb": patches,
        "heatmap": jnp.einsum("be,btne->btn", audio_emb, patches),
        **self.logit_params(),
    }

  def heatmap(self, log_mel: jax.Array, frames: jax.Array) -> jax.Array:
    """Localisation map `[B, T, N]` (N = patches per frame, row-major over the patch grid)."""
    return self(log_mel, frames)["heatmap"]
