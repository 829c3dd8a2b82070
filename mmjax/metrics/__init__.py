"""Evaluation metrics that agree with the packages papers report with.

Array metrics are pure jax functions (arrays in, arrays out, jit-safe):
  retrieval_recall / retrieval_recall_from_embeddings -> {"i2t_r@K": [], "t2i_r@K": []},
  zero_shot_accuracy -> {"top1": [], ...}, mean_average_precision (= sklearn
  average_precision_score), box_iou, inception_score, kid, FIDStats (streaming moments).
FID itself (frechet_distance, fid_from_features, fid_from_stats) finishes in float64 numpy on
the host. Text metrics are host-side Python equal to the reference packages:
  corpus_bleu / sentence_bleu (sacrebleu), rouge (rouge-score), cider_d (pycocoevalcap).
The Flax InceptionV3 for FID/IS lives in `mmjax.metrics.inception` (needs flax; imported
on first use, e.g. `mmjax.metrics.inception.load_fid_inception(path)`).
"""
import importlib

from mmjax.metrics.av_sync import predict_offset
from mmjax.metrics.av_sync import sync_accuracy
from mmjax.metrics.av_sync import sync_distances
from mmjax.metrics.average_precision import binary_average_precision
from mmjax.metrics.average_precision import mean_average_precision
from mmjax.metrics.bleu import corpus_bleu
from mmjax.metrics.bleu import sentence_bleu
from mmjax.metrics.boxes import box_area
from mmjax.metrics.boxes import box_iou
from mmjax.metrics.boxes import matched_box_iou
from mmjax.metrics.caption_attributes import attribute_metrics
from mmjax.metrics.cider import cider_d
from mmjax.metrics.cider import cider_d_scores
from mmjax.metrics.classification import topk_correct
from mmjax.metrics.classification import zero_shot_accuracy
from mmjax.metrics.fid import FIDStats
from mmjax.metrics.fid import fid_from_features
from mmjax.metrics.fid import fid_from_stats
from mmjax.metrics.fid import frechet_distance
from mmjax.metrics.fid import mean_and_covariance
from mmjax.metrics.inception_score import inception_score
from mmjax.metrics.kid import kid
from mmjax.metrics.localization import best_ciou_of_distinct_maps
from mmjax.metrics.localization import binarize_at_median
from mmjax.metrics.localization import boxes_to_masks
from mmjax.metrics.localization import centre_box_baseline
from mmjax.metrics.localization import localization_ciou
from mmjax.metrics.localization import localization_summary
from mmjax.metrics.localization import pointing_accuracy
from mmjax.metrics.retrieval import retrieval_ranks
from mmjax.metrics.retrieval import retrieval_recall
from mmjax.metrics.retrieval import retrieval_recall_from_embeddings
from mmjax.metrics.rouge import rouge
from mmjax.metrics.rouge import rouge_multi
from mmjax.metrics.rouge import rouge_pair


def __getattr__(name):
  # Keeps `import mmjax.metrics` free of flax; the Inception network loads on first use.
  if name == "inception":
    return importlib.import_module("mmjax.metrics.inception")
  raise AttributeError(f"module 'mmjax.metrics' has no attribute {name!r}")
