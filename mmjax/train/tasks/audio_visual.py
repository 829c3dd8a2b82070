"""Audio-visual learning on ShapeWorld-AV: correspondence, sound localisation, synchronisation.

One `AudioVisual` model (mmjax/models/audio_visual.py) on log-mel spectrograms computed on
device (`mmjax.audio.log_mel`, settings in `config.audio`) and video clips. The loss is a sum of
weighted terms (`config.loss`), each the seed's formula:
  correspondence   clip_loss(audio_emb, video_emb, tau): -log e^{S(a,v)/tau} / sum_v' e^{S(a,v')/tau}
                   over the batch (both directions), S = cosine.
  time_contrastive per clip, the same InfoNCE over its T frames: audio frame t against video
                   frames t' (target t - offset: training clips carry random offsets,
                   `data.offset_frames`, so position alone cannot solve it and the features
                   must carry the events that make an offset detectable).
  alignment        mean_t ||a_t - v_{t - offset}||^2 of the normalised per-time features.
  offset_classification  SyncNet's multi-way matching (Chung et al. 2019, "Perfect match"):
                   per clip, a softmax over the candidate offsets [-K, K] (K =
                   `eval.sync_max_offset`) of minus the evaluation's own score, the mean
                   squared distance of the frame pairs each offset aligns
                   (`metrics.sync_distances`), with the true offset as the target, so training
                   optimises the decision the sync evaluation makes.
  localization     LVS-style multiple-instance contrastive: S_loc(a_i, v_j) = mean_t max_n
                   cos(a_i, patch_{j,t,n}), InfoNCE over the batch, so the patches of the
                   sounding object are the ones that answer the sound.
  lvs_localization LVS's "hard way" loss (Chen et al. 2021), per frame: the soft region where
                   the clip's own map exceeds `lvs.epsilon` is the positive, the region below
                   `lvs.epsilon_negative` a hard negative from the same frame, the other
                   clips' maps (over their own soft regions) easy negatives
                   (`lvs_localization_loss`); it trains the maps to be high on the sounding
                   object and low on everything else, which the median-binarised cIoU rewards.

Evaluation (`evaluate`), on the "test" split (all colour-shape pairs; the held-out ones, never in
"train", reported apart with the suffix `_heldout`; num_clips / num_clips_heldout count them):
  a2v_r@K / v2a_r@K          retrieval of the matching clip by audio and by video;
  correspondence_accuracy    share of clips whose S(a_i, v_i) beats a mismatched S(a_i, v_j);
  ciou@0.5, auc, mean_ciou, pointing  localisation maps (upsampled to the image) against the
                             sounding objects' boxes, per frame (`mmjax.metrics.localization`);
                             the same for a centre-box baseline (`baseline_*`);
  ciou@0.5_bound             the share of frames where a map with distinct values can reach
                             cIoU >= 0.5 at all (`metrics.best_ciou_of_distinct_maps`): the
                             ceiling of ciou@0.5 for continuous maps;
  sync_acc, sync_acc_1       offsets in [-K, K] recovered exactly / within one frame from the
                             per-time features (`mmjax.metrics.av_sync`), on clips whose audio
                             lags the video by a known offset (`eval.sync_max_offset` = K);
                             sync_acc_1_offset{o:+d}: within one frame, on the clips of true
                             offset o alone.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from mmjax import audio, losses, metrics
from mmjax.data import pipeline, shapeworld
from mmjax.data.shapeworld_av import ShapeWorldAV
from mmjax.data.shapeworld_inputs import bad_example_options
from mmjax.models import build_model
from mmjax.models.audio_visual import AudioVisual
from mmjax.train.evaluators.chunked import predict_in_chunks
from mmjax.train.tasks.base import Task

LOSS_TERMS = ("correspondence", "time_contrastive", "alignment", "offset_classification",
              "localization", "lvs_localization")
# LVS's settings for cosine maps: region thresholds and the sigmoid's temperature.
LVS_DEFAULTS = dict(epsilon=0.65, epsilon_negative=0.4, mask_temperature=0.03)


def av_source(data: Any, split: str, length: int, **overrides) -> ShapeWorldAV:
  """The `split` ShapeWorld-AV source of `length` clips from a task's `config.data`."""
  if data.name != "shapeworld_av":
    raise ValueError(f"data.name must be 'shapeworld_av' for the audio-visual task, got "
                     f"{data.name!r}")
  options = dict(seed=data.seed, image_size=data.image_size, num_frames=data.num_frames,
                 sample_rate=data.sample_rate, clip_seconds=data.clip_seconds,
                 num_objects=tuple(data.num_objects), offset_frames=data.offset_frames,
                 snr_db=data.snr_db, silent_probability=data.silent_probability,
                 size_ranges=tuple(map(tuple, data.size_ranges)))
  options.update(overrides)
  return ShapeWorldAV(split, length, **options)


def _offset_range(offset_frames) -> tuple[int, int]:
  """`data.offset_frames` (an int or a (lo, hi) pair) as (lo, hi)."""
  if isinstance(offset_frames, (tuple, list)):
    return int(offset_frames[0]), int(offset_frames[1])
  return int(offset_frames), int(offset_frames)


class _LoadClip:
  """(stream position, source index) -> float frames in [0, 1], audio, boxes, sounding."""

  def __init__(self, source: ShapeWorldAV):
    self.source = source

  def __call__(self, position: int, index: int) -> dict[str, np.ndarray]:
    item = self.source[index]
    return {"frames": item["frames"].astype(np.float32) / np.float32(255),
            "audio": item["audio"], "boxes": item["boxes"],
            "sounding": item["sounding"] & item["object_valid"],
            "offset": np.int32(item["offset"]), "label": np.int32(item["label"])}


def matching_frames(offsets: jax.Array, num_frames: int) -> tuple[jax.Array, jax.Array]:
  """For clips whose audio lags the video by `offsets [B]` frames, the video frame that audio
  frame t shows (t - offset) `[B, T]` and whether it lies inside the clip `[B, T]`."""
  video_frame = jnp.arange(num_frames)[None, :] - offsets[:, None]
  return jnp.clip(video_frame, 0, num_frames - 1), (video_frame >= 0) & (video_frame < num_frames)


def time_contrastive_loss(audio_time: jax.Array, video_time: jax.Array, temperature: jax.Array,
                          offsets: jax.Array) -> jax.Array:
  """Mean over the matched (audio frame, video frame) pairs of every clip of the symmetric
  InfoNCE over that clip's frames: audio frame t against all video frames (target t - offset)
  and that video frame against all audio frames (target t).

  Trained on clips with random offsets, the per-time features cannot solve this by their
  position in the clip alone: they must carry what happens when, which sync detection needs.

  Args:
    audio_time, video_time: normalised `[B, T, E]`; offsets: int `[B]` (audio lag, frames).
  """
  logits = jnp.einsum("bte,bse->bts", audio_time, video_time) / temperature
  video_frame, valid = matching_frames(offsets, logits.shape[1])
  index = video_frame[..., None]
  a2v = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), index, -1)[..., 0]
  # log_softmax over the audio axis: entry [b, t, s] scores audio frame t for video frame s.
  v2a = -jnp.take_along_axis(jax.nn.log_softmax(logits, -2), index, -1)[..., 0]
  weights = valid.astype(logits.dtype)
  return 0.5 * jnp.sum((a2v + v2a) * weights) / jnp.maximum(weights.sum(), 1.0)


def alignment_loss(audio_time: jax.Array, video_time: jax.Array, offsets: jax.Array) -> jax.Array:
  """The seed's sum_t ||f_A(a_t) - f_V(v_t)||^2 over matched frames (audio frame t, video frame
  t - offset), averaged over those pairs."""
  video_frame, valid = matching_frames(offsets, audio_time.shape[1])
  matched = jnp.take_along_axis(video_time, video_frame[..., None], axis=1)
  weights = valid.astype(audio_time.dtype)
  distances = jnp.sum(jnp.square(audio_time - matched), -1)
  return jnp.sum(distances * weights) / jnp.maximum(weights.sum(), 1.0)


def offset_classification_loss(audio_time: jax.Array, video_time: jax.Array,
                               temperature: jax.Array, offsets: jax.Array,
                               max_offset: int) -> jax.Array:
  """Mean over clips of the cross-entropy of the clip's true offset among the 2K + 1 candidates
  in [-K, K], with logits -distances / (2 temperature): `metrics.sync_distances`' mean squared
  distance of the aligned frame pairs, i.e. (mean aligned cosine - 1) / temperature for unit
  features. The evaluation predicts the offset of the smallest distance, so this trains that
  rule directly; the per-time InfoNCE only ranks frames against frames.

  Args:
    audio_time, video_time: normalised `[B, T, E]`; temperature: `[]`; offsets: int `[B]` in
      [-K, K] (audio lag, frames); max_offset: K (static, < T).
  """
  distances = metrics.sync_distances(audio_time, video_time, max_offset=max_offset)
  log_probs = jax.nn.log_softmax(-distances / (2.0 * temperature), axis=-1)
  target = (offsets + max_offset)[:, None]
  return -jnp.mean(jnp.take_along_axis(log_probs, target, axis=-1))


def symmetric_infonce(logits: jax.Array) -> jax.Array:
  """Mean of the row-wise and column-wise cross-entropy of square `logits [B, B]` with the
  diagonal as the targets (CLIP's loss, from logits)."""
  diagonal = jnp.diagonal(logits)
  rows = jax.nn.logsumexp(logits, axis=1) - diagonal
  columns = jax.nn.logsumexp(logits, axis=0) - diagonal
  return 0.5 * (rows.mean() + columns.mean())


def localization_scores(audio_emb: jax.Array, patch_emb: jax.Array) -> jax.Array:
  """S_loc `[B_audio, B_video]`: mean over frames of the best patch's cosine with each sound.

  Args:
    audio_emb: normalised `[B, E]`; patch_emb: normalised `[B, T, N, E]`.
  """
  return jnp.einsum("ie,jtne->ijtn", audio_emb, patch_emb).max(-1).mean(-1)


def lvs_localization_loss(audio_emb: jax.Array, patch_emb: jax.Array, temperature: jax.Array,
                          epsilon: float, epsilon_negative: float,
                          mask_temperature: float) -> jax.Array:
  """LVS's hard-negative localisation loss, averaged over clips and frames.

  With A[i, j, t] the map of sound i on frame t of clip j (cos(a_i, patch_{j,t,n}) over the N
  patches) and soft masks pos(x) = sigmoid((x - epsilon) / mask_temperature), neg(x) = 1 -
  sigmoid((x - epsilon_negative) / mask_temperature), the logits of sound i on frame t are
    positive      <pos(A_iit), A_iit> / sum pos(A_iit)               (its own sounding region)
    hard negative <neg(A_iit), A_iit> / sum neg(A_iit)               (its own frame's background)
    easy, j != i  <pos(A_ijt), A_ijt> / sum pos(A_ijt)               (other clips' best region)
  all divided by `temperature`; the loss is the cross-entropy with the positive as the target.

  Args:
    audio_emb: normalised `[B, E]`; patch_emb: normalised `[B, T, N, E]`.
  """
  maps = jnp.einsum("ie,jtne->ijtn", audio_emb, patch_emb)          # [B, B, T, N]
  soft = lambda x, eps: jax.nn.sigmoid((x - eps) / mask_temperature)
  region_mean = lambda weights, values: (jnp.sum(weights * values, -1)
                                         / jnp.maximum(jnp.sum(weights, -1), 1e-6))
  regions = region_mean(soft(maps, epsilon), maps)                   # [B, B, T]
  own = jnp.einsum("iitn->itn", maps)                                # [B, T, N]
  hard = region_mean(1.0 - soft(own, epsilon_negative), own)         # [B, T]
  batch = maps.shape[0]
  positive = jnp.einsum("iit->it", regions)                          # [B, T]
  logits = jnp.concatenate([positive[:, None], hard[:, None], regions], axis=1) / temperature
  # Clip i's own region is the positive, not an easy negative. Masked after the division, so
  # no -inf meets the temperature's gradient.
  own_column = jnp.pad(jnp.eye(batch, dtype=bool), ((0, 0), (2, 0)))[..., None]
  logits = jnp.where(own_column, -jnp.inf, logits)
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[:, 0])


def upsample_heatmaps(heatmap: jax.Array, image_size: int) -> jax.Array:
  """`[B, T, N]` patch-grid maps (N = g * g, row-major) -> bilinear `[B * T, S, S]` maps."""
  batch, frames, n = heatmap.shape
  grid = int(round(n ** 0.5))
  if grid * grid != n:
    raise ValueError(f"heatmap has {n} patches per frame, expected a square grid")
  maps = heatmap.reshape(batch * frames, grid, grid)
  return jax.image.resize(maps, (batch * frames, image_size, image_size), method="bilinear")


class AudioVisualTask(Task):
  """Audio-visual correspondence, localisation and synchronisation (see the module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    unknown = sorted(set(config.loss) - set(LOSS_TERMS))
    if unknown:
      raise ValueError(f"loss has unknown terms {unknown}; terms are {LOSS_TERMS} (weights)")
    self._model = build_model(config.model)
    data, cfg = config.data, config.audio
    samples = round(data.sample_rate * data.clip_seconds)
    frames = audio.num_frames(samples, cfg.n_fft, cfg.hop_length, center=True)
    self.spectrogram_frames = cfg.frames
    if frames < cfg.frames:
      raise ValueError(f"audio.frames={cfg.frames} but {samples} samples give only {frames} "
                       f"STFT frames at n_fft={cfg.n_fft}, hop_length={cfg.hop_length}")
    unknown = sorted(set(config.get("lvs", {})) - set(LVS_DEFAULTS))
    if unknown:
      raise ValueError(f"lvs has unknown settings {unknown}; settings are {sorted(LVS_DEFAULTS)}")
    self.lvs_settings = {**LVS_DEFAULTS, **config.get("lvs", {})}
    if config.loss.get("offset_classification", 0.0):
      lo, hi = _offset_range(data.offset_frames)
      k = config.eval.sync_max_offset
      if not (-k <= lo and hi <= k):
        raise ValueError(f"loss.offset_classification classifies offsets in [-{k}, {k}] "
                         f"(eval.sync_max_offset={k}), but data.offset_frames={data.offset_frames}"
                         f" draws training offsets outside it; narrow the offsets or widen the "
                         f"window")
    self._eval_cache = None

  @property
  def model(self) -> AudioVisual:
    return self._model

  # -- data -----------------------------------------------------------------------------------

  def train_batches(self, process_index: int, process_count: int):
    source = av_source(self.config.data, "train", self.config.data.train_length)
    return pipeline.batch_iterator(pipeline.example_batches(
        source, _LoadClip(source), batch_size=self.config.batch_size // process_count,
        seed=self.config.seed, process_index=process_index, process_count=process_count,
        **bad_example_options(self.config.data)))

  def check_batch(self, batch, step: int) -> None:
    data = self.config.data
    frames, waveform = batch["frames"], batch["audio"]
    expected = (data.num_frames, data.image_size, data.image_size, 3)
    if frames.ndim != 5 or frames.shape[1:] != expected:
      raise ValueError(f"batch at step {step}: frames have shape {frames.shape}, expected "
                       f"[batch, {', '.join(map(str, expected))}]")
    samples = round(data.sample_rate * data.clip_seconds)
    if waveform.ndim != 2 or waveform.shape != (len(frames), samples):
      raise ValueError(f"batch at step {step}: audio has shape {waveform.shape}, expected "
                       f"[{len(frames)}, {samples}] (mono, {data.sample_rate} Hz, "
                       f"{data.clip_seconds} s)")

  # -- model ----------------------------------------------------------------------------------

  def log_mel(self, waveforms: jax.Array) -> jax.Array:
    """`[B, samples]` -> log-mel dB `[B, n_mels, audio.frames]` (cropped to `audio.frames`)."""
    cfg = self.config.audio
    spec = audio.log_mel(waveforms, sr=self.config.data.sample_rate, n_fft=cfg.n_fft,
                         hop_length=cfg.hop_length, n_mels=cfg.n_mels, top_db=cfg.top_db)
    return spec[..., :self.spectrogram_frames]

  def init_params(self, rng: jax.Array) -> Any:
    data = self.config.data
    samples = round(data.sample_rate * data.clip_seconds)
    frames = jnp.zeros((1, data.num_frames, data.image_size, data.image_size, 3), jnp.float32)
    return self._model.init(rng, self.log_mel(jnp.zeros((1, samples))), frames)["params"]

  def loss_fn(self, params, batch, rng):
    del rng  # Deterministic towers.
    out = self._model.apply({"params": params}, self.log_mel(batch["audio"]), batch["frames"])
    weights, terms = self.config.loss, {}
    temperature = jnp.exp(-out["logit_scale"])
    if weights.get("correspondence", 0.0):
      terms["correspondence"] = losses.clip_loss(out["audio_emb"], out["video_emb"], temperature)
    if weights.get("time_contrastive", 0.0):
      sync_temperature = jnp.exp(-out.get("sync_logit_scale", out["logit_scale"]))
      terms["time_contrastive"] = time_contrastive_loss(out["audio_time"], out["video_time"],
                                                        sync_temperature, batch["offset"])
    if weights.get("alignment", 0.0):
      terms["alignment"] = alignment_loss(out["audio_time"], out["video_time"], batch["offset"])
    if weights.get("offset_classification", 0.0):
      sync_temperature = jnp.exp(-out.get("sync_logit_scale", out["logit_scale"]))
      terms["offset_classification"] = offset_classification_loss(
          out["audio_time"], out["video_time"], sync_temperature, batch["offset"],
          self.config.eval.sync_max_offset)
    if weights.get("localization", 0.0):
      scores = localization_scores(out["audio_emb"], out["patch_emb"])
      terms["localization"] = symmetric_infonce(scores / temperature)
    if weights.get("lvs_localization", 0.0):
      terms["lvs_localization"] = lvs_localization_loss(
          out["audio_emb"], out["patch_emb"], temperature, **self.lvs_settings)
    loss = sum(weights[name] * value for name, value in terms.items())
    logged = {**{f"loss_{name}": value for name, value in terms.items()},
              "temperature": temperature}
    if "sync_logit_scale" in out:
      logged["sync_temperature"] = jnp.exp(-out["sync_logit_scale"])
    return loss, logged

  # -- evaluation -----------------------------------------------------------------------------

  def _eval_data(self) -> dict[str, Any]:
    """The fixed test clips (offset 0) and the sync clips (known offsets), built once."""
    if self._eval_cache is None:
      cfg = self.config.eval
      test = av_source(self.config.data, "test", cfg.num_clips, offset_frames=0)
      load = _LoadClip(test)
      clips = [load(i, i) for i in range(len(test))]
      k = cfg.sync_max_offset
      sync = av_source(self.config.data, "test", cfg.num_sync_clips, offset_frames=(-k, k),
                       seed=self.config.data.seed + 1)
      sync_clips = [_LoadClip(sync)(i, i) for i in range(len(sync))]
      stack = lambda items, key: np.stack([item[key] for item in items])
      labels = stack(clips, "label")
      self._eval_cache = dict(
          frames=stack(clips, "frames"), audio=stack(clips, "audio"),
          boxes=stack(clips, "boxes"), sounding=stack(clips, "sounding"),
          heldout=shapeworld.heldout_mask()[labels],
          sync_frames=stack(sync_clips, "frames"), sync_audio=stack(sync_clips, "audio"),
          sync_offset=stack(sync_clips, "offset"))
    return self._eval_cache

  @functools.cached_property
  def _forward(self):
    model = self._model

    def forward(params, waveforms, frames):
      out = model.apply({"params": params}, self.log_mel(waveforms), frames)
      return {key: out[key] for key in ("audio_emb", "video_emb", "audio_time", "video_time",
                                        "heatmap")}
    return jax.jit(forward)

  def embed(self, params, waveforms: np.ndarray, frames: np.ndarray, mesh: Mesh) -> dict:
    """The model's outputs on host clips, in chunks of `eval.batch_size`, as host arrays."""
    return predict_in_chunks(self._forward, params, (waveforms, frames), mesh,
                             self.config.eval.batch_size)

  def evaluate(self, params, mesh: Mesh) -> dict[str, float]:
    data, cfg = self._eval_data(), self.config.eval
    out = self.embed(params, data["audio"], data["frames"], mesh)
    results = {}
    similarity = jnp.asarray(out["video_emb"]) @ jnp.asarray(out["audio_emb"]).T  # [video, audio]
    recalls = metrics.retrieval_recall(similarity, np.arange(len(similarity)), ks=(1, 5, 10))
    for k in (1, 5, 10):
      results[f"v2a_r@{k}"] = float(recalls[f"i2t_r@{k}"])
      results[f"a2v_r@{k}"] = float(recalls[f"t2i_r@{k}"])
    sim = np.asarray(similarity).T  # [audio, video]
    n = len(sim)
    matched_wins = sim[np.arange(n), np.arange(n)] > sim[np.arange(n), (np.arange(n) + 1) % n]
    heldout = data["heldout"]
    results["num_clips"], results["num_clips_heldout"] = float((~heldout).sum()), float(
        heldout.sum())
    results["correspondence_accuracy"] = float(matched_wins[~heldout].mean())
    if heldout.any():
      results["correspondence_accuracy_heldout"] = float(matched_wins[heldout].mean())
    results.update(self._localization(out["heatmap"], data, heldout))
    sync = self.embed(params, data["sync_audio"], data["sync_frames"], mesh)
    distances = metrics.sync_distances(sync["audio_time"], sync["video_time"],
                                       max_offset=cfg.sync_max_offset)
    predicted = np.asarray(metrics.predict_offset(distances))
    results["sync_acc"] = float(metrics.sync_accuracy(predicted, data["sync_offset"]))
    results["sync_acc_1"] = float(metrics.sync_accuracy(predicted, data["sync_offset"],
                                                        tolerance=1))
    for offset in range(-cfg.sync_max_offset, cfg.sync_max_offset + 1):
      chosen = data["sync_offset"] == offset
      if chosen.any():  # Far offsets overlap in fewer frames: the accuracy per true offset.
        results[f"sync_acc_1_offset{offset:+d}"] = float(metrics.sync_accuracy(
            predicted[chosen], data["sync_offset"][chosen], tolerance=1))
    return results

  def _localization(self, heatmap: np.ndarray, data: dict, heldout: np.ndarray) -> dict:
    """cIoU / AUC / pointing of the per-frame maps against the sounding objects' boxes."""
    size = self.config.data.image_size
    maps = np.asarray(upsample_heatmaps(jnp.asarray(heatmap), size))   # [N * T, S, S]
    clips, frames = heatmap.shape[:2]
    boxes = data["boxes"].reshape(clips * frames, *data["boxes"].shape[2:])
    valid = np.repeat(data["sounding"], frames, axis=0)
    masks = np.asarray(metrics.boxes_to_masks(boxes, valid, size, size))
    frame_heldout = np.repeat(heldout, frames)
    baseline = np.broadcast_to(metrics.centre_box_baseline(size, size, 0.5), maps.shape)
    results = {}
    for name, heatmaps in (("", maps), ("baseline_", baseline)):
      cious = np.asarray(metrics.localization_ciou(heatmaps, masks))
      for suffix, keep in (("", ~frame_heldout), ("_heldout", frame_heldout)):
        if not keep.any():
          continue
        summary = metrics.localization_summary(cious[keep])
        results.update({f"{name}{key}{suffix}": float(value) for key, value in summary.items()})
        results[f"{name}pointing{suffix}"] = float(metrics.pointing_accuracy(
            heatmaps[keep], masks[keep]))
    best = np.asarray(metrics.best_ciou_of_distinct_maps(masks))
    for suffix, keep in (("", ~frame_heldout), ("_heldout", frame_heldout)):
      if keep.any():  # The most ciou@0.5 any continuous map can reach on these frames.
        results[f"ciou@0.5_bound{suffix}"] = float(np.mean(best[keep] >= 0.5))
    return results
