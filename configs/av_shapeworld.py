"""Audio-visual correspondence, sound localisation and synchronisation on ShapeWorld-AV.

  mmjax train --config configs/av_shapeworld.py --workdir runs/av

One model, one run, all three systems: the loss sums the correspondence InfoNCE over the batch,
a per-time InfoNCE within each clip (for synchronisation), the seed's alignment loss and the
LVS-style localisation term (mmjax/train/tasks/audio_visual.py). One system per config, each
derived from this one:
  configs/av_correspondence_shapeworld.py   the clip-level loss only
  configs/av_localisation_shapeworld.py     correspondence + localisation, 8 x 8 maps
  configs/av_sync_shapeworld.py             correspondence + per-time terms, own sync head
Clips: 8 frames of 32 px and 1 s of 16 kHz audio, 1-2 objects, a quarter of them silent, larger
than ShapeWorld's (a continuous map cut at its median covers half the frame, so LVS's cIoU can
reach 0.5 only for boxes covering a quarter of it; ShapeWorld's objects are smaller); the
log-mel spectrogram (64 mels, hop 250 = 8 spectrogram frames per video frame) is computed on
device, so per-time audio tokens (8 x 8 patches) line up with the video frames. Training clips
carry random audio offsets in [-3, 3] frames (the per-time loss pairs audio frame t with video
frame t - offset); evaluation clips have none, except the sync clips (known offsets).
"""
import ml_collections

import common

def get_config() -> ml_collections.ConfigDict:
  c = common.trainer("audio_visual", batch_size=64, total_steps=800, eval_every=200,
                     checkpoint_every=400)
  c.data = ml_collections.ConfigDict(dict(
      name="shapeworld_av", seed=0, image_size=32, num_frames=8, sample_rate=16000,
      clip_seconds=1.0, num_objects=(1, 2), offset_frames=(-3, 3), snr_db=None,
      silent_probability=0.25, size_ranges=((0.4, 0.5), (0.55, 0.65)),
      train_length=10_000_000, on_bad_example="error", max_bad_fraction=0.01))
  c.data.snr_db = ml_collections.FieldReference(None, field_type=float)
  c.audio = ml_collections.ConfigDict(dict(n_fft=512, hop_length=250, n_mels=64, frames=64,
                                           top_db=80.0))
  width = 64
  c.model = ml_collections.ConfigDict(dict(
      name="audio_visual", embed_dim=64,
      audio_encoder=dict(name="audio_spectrogram_transformer", patch_size=8, width=width,
                         num_layers=2, num_heads=4, mlp_ratio=2.0),
      video_encoder=dict(name="video_transformer", patch_size=8, width=width, num_layers=2,
                         num_heads=4, mlp_ratio=2.0, temporal_layers=1, max_frames=8)))
  c.loss = ml_collections.ConfigDict(dict(correspondence=1.0, time_contrastive=0.5,
                                          alignment=0.1, localization=0.5))
  c.optim = common.adamw(1e-3)
  c.eval = ml_collections.ConfigDict(dict(num_clips=500, num_sync_clips=300, sync_max_offset=3,
                                          batch_size=100))
  return c
