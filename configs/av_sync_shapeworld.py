"""Audio-visual synchronisation on ShapeWorld-AV (SyncNet's task: by how many frames does the
audio lag the video?).

  mmjax train --config configs/av_sync_shapeworld.py --workdir runs/av_sync

configs/av_shapeworld.py's data, towers and evaluation, trained with the clip-level
correspondence loss plus three per-time terms: the per-time InfoNCE, the alignment loss and
SyncNet's multi-way matching (`offset_classification`: a softmax over the candidate offsets
[-3, 3] of the evaluation's own distances). They act through a synchronisation head of its own
(`model.sync_dim`: own projections, features centred over time, own temperature;
mmjax/models/audio_visual.py says why the shared clip space collapses them). Training clips
carry random offsets in [-3, 3] frames, so frame position alone cannot solve the per-time loss.
Evaluation: offsets of the 1000 sync clips recovered exactly (`sync_acc`) and within one frame
(`sync_acc_1`); `--config.data.snr_db=X` evaluates (or trains) with background noise at X dB.
"""
import ml_collections

import av_shapeworld


def get_config() -> ml_collections.ConfigDict:
  c = av_shapeworld.get_config()
  c.total_steps, c.eval_every, c.checkpoint_every = 4000, 800, 800
  c.eval.num_sync_clips = 1000  # Binomial standard error <= 0.016 on sync_acc_1.
  c.model.sync_dim = 64
  c.loss = ml_collections.ConfigDict(dict(correspondence=1.0, time_contrastive=1.0,
                                          alignment=0.1, offset_classification=1.0))
  return c
