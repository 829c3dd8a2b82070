"""Evaluators: each owns its data and metric and sees the model only through jittable
predict functions `(params, inputs) -> outputs`, so BLIP, CLIP and a converted public checkpoint
are scored by the same code. Every evaluator takes host numpy data at construction, runs its
predict functions over a mesh in fixed-size chunks (`sharding.map_in_chunks`) and returns
`evaluate(params, mesh) -> dict[str, float]` on every process.
"""
from mmjax.train.evaluators.captioning import CaptioningEvaluator
from mmjax.train.evaluators.chunked import predict_in_chunks
from mmjax.train.evaluators.grounding import GroundingEvaluator
from mmjax.train.evaluators.retrieval import RetrievalEvaluator
from mmjax.train.evaluators.vqa import VQAEvaluator
from mmjax.train.evaluators.zero_shot import ZeroShotEvaluator


def prefixed_results(evaluators, params, mesh) -> dict[str, float]:
  """Every evaluator's metrics, each key prefixed by its evaluator's name: {name: evaluator}
  -> {"{name}_{metric}": value} (a multi-task model's "vqa_accuracy", "caption_bleu4", ...)."""
  results = {}
  for name, evaluator in evaluators.items():
    results.update({f"{name}_{key}": value
                    for key, value in evaluator.evaluate(params, mesh).items()})
  return results
