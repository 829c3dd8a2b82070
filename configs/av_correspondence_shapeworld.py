"""Audio-visual correspondence on ShapeWorld-AV: does this sound belong to this clip?

  mmjax train --config configs/av_correspondence_shapeworld.py --workdir runs/av_correspondence

configs/av_shapeworld.py's data, towers and evaluation, trained with the clip-level InfoNCE
alone (the seed's L = -log e^{S(a,v)/tau} / sum_v' e^{S(a,v')/tau}, S = cosine, both
directions over the batch). Evaluation: correspondence accuracy (the matched pair against a
mismatched one), AV retrieval R@K both ways, seen and held-out colour-shape pairs apart.
"""
import ml_collections

import av_shapeworld


def get_config() -> ml_collections.ConfigDict:
  c = av_shapeworld.get_config()
  c.loss = ml_collections.ConfigDict(dict(correspondence=1.0))
  return c
