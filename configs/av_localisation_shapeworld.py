"""Sound localisation on ShapeWorld-AV: where in each frame is the sound coming from?

  mmjax train --config configs/av_localisation_shapeworld.py --workdir runs/av_localisation

configs/av_shapeworld.py's data and evaluation, trained with the correspondence InfoNCE plus
LVS's hard-negative localisation loss (`lvs_localization`: each frame's soft region above
`lvs.epsilon` against its own background below `lvs.epsilon_negative` and the other clips'
regions; LVS's thresholds for cosine maps). The video tower cuts 4-pixel patches, so each frame's map is 8 x 8
(the combined config's 8-pixel patches give 4 x 4 maps, whose bilinear upsampling is too
smooth to follow an object's edges). Evaluation: LVS's cIoU@0.5 and AUC, pointing accuracy,
and the same for a centre-box baseline, against the sounding objects' boxes.
"""
import ml_collections

import av_shapeworld


def get_config() -> ml_collections.ConfigDict:
  c = av_shapeworld.get_config()
  c.model.video_encoder.patch_size = 4
  c.loss = ml_collections.ConfigDict(dict(correspondence=1.0, lvs_localization=1.0))
  c.lvs = ml_collections.ConfigDict(dict(epsilon=0.65, epsilon_negative=0.4,
                                         mask_temperature=0.03))
  return c
