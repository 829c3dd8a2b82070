"""Metrics benchmark: mmjax vs the reference packages, same machine, same inputs.

  python benchmarks/metrics.py            # full sizes (several minutes on a laptop CPU)
  python benchmarks/metrics.py --quick    # small sizes, smoke test; README not written

Each measurement runs in its own subprocess so that its peak resident memory (ru_maxrss)
is its own. Rows:
- FID on 2048-d features, N = 10k and 50k per set: pytorch-fid's formula (np.cov float64 +
  scipy.linalg.sqrtm) vs mmjax.fid_from_features (np.cov + eigh in float64) and mmjax's
  streamed FIDStats (device moments in batches of 1000 + eigh on the host).
- BLEU and ROUGE on 10k sentence pairs: sacrebleu.corpus_bleu / rouge-score (per pair,
  rouge1/2/L/Lsum) vs mmjax.corpus_bleu / mmjax.rouge.
- R@1/5/10 with 25k images x 125k captions (5 per image, D=512) on CPU: a chunked torch
  reference in the style of CLIP_benchmark (top-k per chunk of the score matrix, both
  directions; the unchunked original would hold the 12.5 GB score matrix) vs
  mmjax.retrieval_recall_from_embeddings (blocks of 256 images under lax.scan).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

SIZES = {"fid": (10_000, 50_000), "text": 10_000, "retrieval": (25_000, 5, 512)}
QUICK = {"fid": (2_000,), "text": 500, "retrieval": (2_000, 5, 64)}


def _peak_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _start():
  return time.perf_counter(), _cpu_seconds()


def _done(start, value):
  wall, cpu = start
  return {"seconds": time.perf_counter() - wall, "cpu_seconds": _cpu_seconds() - cpu,
          "value": value}


def _fid_features(n, seed):
  rng = np.random.default_rng(seed)
  dim = 2048
  mixing = rng.standard_normal((64, dim)).astype(np.float32) / 8
  latent = rng.standard_normal((n, 64)).astype(np.float32)
  noise = 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
  return np.maximum(latent @ mixing + noise + 0.2 * seed, 0)  # ReLU-like, as pool features


def _sentences(n, seed):
  rng = np.random.default_rng(seed)
  vocab = [f"w{i}" for i in range(500)] + ["the", "a", "of", ",", ".", "and", "on", "is"]
  refs, hyps = [], []
  for _ in range(n):
    ref = list(rng.choice(vocab, rng.integers(6, 25)))
    hyp = [w if rng.random() < 0.7 else str(rng.choice(vocab)) for w in ref]
    hyps.append(" ".join(hyp[:max(1, len(hyp) - int(rng.integers(0, 3)))]))
    refs.append([" ".join(ref), " ".join(reversed(ref))])
  return hyps, refs


def _retrieval_data(n_images, per_image, dim):
  rng = np.random.default_rng(0)
  image_emb = rng.standard_normal((n_images, dim)).astype(np.float32)
  text_to_image = np.repeat(np.arange(n_images), per_image).astype(np.int32)
  text_emb = image_emb[text_to_image] * 0.1 + rng.standard_normal(
      (n_images * per_image, dim)).astype(np.float32)
  image_emb /= np.linalg.norm(image_emb, axis=1, keepdims=True)
  text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True)
  return image_emb, text_emb, text_to_image


# ----------------------------------------------------------------------------- workers
def _imports(impl):
  """Imports outside the timed region (compilation stays inside it)."""
  if impl == "reference":
    import scipy.linalg  # pylint: disable=unused-import
    import torch  # pylint: disable=unused-import
  else:
    import jax  # pylint: disable=unused-import
    from mmjax import metrics  # pylint: disable=unused-import
  import sacrebleu  # pylint: disable=unused-import
  from rouge_score import rouge_scorer  # pylint: disable=unused-import


def worker_fid(impl, n):
  feats1, feats2 = _fid_features(n, 1), _fid_features(n, 2)
  _imports(impl)
  start = _start()
  if impl == "reference":
    from scipy import linalg
    mu1, sigma1 = np.mean(feats1, axis=0), np.cov(feats1, rowvar=False)
    mu2, sigma2 = np.mean(feats2, axis=0), np.cov(feats2, rowvar=False)
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
      offset = np.eye(sigma1.shape[0]) * 1e-6
      covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    value = float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2)
                  - 2 * np.trace(covmean.real))
  elif impl == "mmjax":
    from mmjax import metrics
    value = metrics.fid_from_features(feats1, feats2)
  else:  # mmjax streamed
    import jax
    from mmjax import metrics
    update = jax.jit(lambda stats, batch: stats.update(batch))
    stats = []
    for feats in (feats1, feats2):
      s = metrics.FIDStats.zeros(feats.shape[1])
      for i in range(0, len(feats), 1000):
        s = update(s, feats[i:i + 1000])
      stats.append(s)
    value = metrics.fid_from_stats(*stats)
  return _done(start, value)


def worker_bleu(impl, n):
  hyps, refs = _sentences(n, 0)
  _imports(impl)
  start = _start()
  if impl == "reference":
    import sacrebleu
    value = sacrebleu.corpus_bleu(hyps, [list(r) for r in zip(*refs)]).score
  else:
    from mmjax import metrics
    value = metrics.corpus_bleu(hyps, refs)
  return _done(start, value)


def worker_rouge(impl, n):
  hyps, refs = _sentences(n, 0)
  _imports(impl)
  targets = [r[0] for r in refs]
  types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
  start = _start()
  if impl == "reference":
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer(types)
    scores = [scorer.score(t, h) for t, h in zip(targets, hyps)]
    value = sum(s["rougeL"].fmeasure for s in scores) / n
  else:
    from mmjax import metrics
    value = metrics.rouge(hyps, targets, types)["rougeL_fmeasure"]
  return _done(start, value)


def worker_retrieval(impl, n_images, per_image, dim):
  image_emb, text_emb, text_to_image = _retrieval_data(n_images, per_image, dim)
  _imports(impl)
  ks = (1, 5, 10)
  start = _start()
  if impl == "reference":
    import torch
    torch.set_num_threads(os.cpu_count())
    images, texts = torch.from_numpy(image_emb), torch.from_numpy(text_emb)
    t2i = torch.from_numpy(text_to_image).long()
    chunk = 1000
    i2t_hits = {k: 0 for k in ks}
    for s in range(0, n_images, chunk):
      top = (images[s:s + chunk] @ texts.T).topk(max(ks), dim=1).indices  # [c, 10]
      correct = t2i[top] == torch.arange(s, min(s + chunk, n_images))[:, None]
      for k in ks:
        i2t_hits[k] += int(correct[:, :k].any(dim=1).sum())
    t2i_hits = {k: 0 for k in ks}
    for s in range(0, len(texts), chunk * per_image):
      top = (texts[s:s + chunk * per_image] @ images.T).topk(max(ks), dim=1).indices
      correct = top == t2i[s:s + chunk * per_image, None]
      for k in ks:
        t2i_hits[k] += int(correct[:, :k].any(dim=1).sum())
    value = {f"i2t_r@{k}": i2t_hits[k] / n_images for k in ks}
    value.update({f"t2i_r@{k}": t2i_hits[k] / len(texts) for k in ks})
  else:
    import jax
    from mmjax import metrics
    out = metrics.retrieval_recall_from_embeddings(image_emb, text_emb, text_to_image, ks=ks,
                                                   block_size=256)
    value = {k: float(v) for k, v in jax.device_get(out).items()}
  return _done(start, value)


WORKERS = {"fid": worker_fid, "bleu": worker_bleu, "rouge": worker_rouge,
           "retrieval": worker_retrieval}


def _run(name, impl, *args):
  """Runs one worker in a fresh interpreter; returns its result and peak RSS (MB)."""
  cmd = [sys.executable, __file__, "--worker", name, impl, *map(str, args)]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  print(f"  {name:9s} {impl:15s} {args}: {result['seconds']:.2f} s wall, "
        f"{result['cpu_seconds']:.2f} s cpu, {result['peak_mb']:.0f} MB", flush=True)
  return result


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--worker", nargs="+")
  import _report  # pylint: disable=g-import-not-at-top
  _report.add_load_argument(parser)
  args = parser.parse_args()
  if args.worker:
    name, impl, *rest = args.worker
    result = WORKERS[name](impl, *map(int, rest))
    result["peak_mb"] = _peak_mb()
    print(json.dumps(result))
    return
  load = _report.LoadWatch()

  sizes = QUICK if args.quick else SIZES
  rows = []
  for n in sizes["fid"]:
    ref = _run("fid", "reference", n)
    for impl, label in (("mmjax", "mmjax fid_from_features"),
                        ("mmjax_streamed", "mmjax FIDStats streamed")):
      got = _run("fid", impl, n)
      rows.append((f"FID, 2048-d, N={n:,} per set", "pytorch-fid formula (scipy sqrtm)",
                   ref, label, got, f"FID {ref['value']:.4f} vs {got['value']:.4f}"))
  n = sizes["text"]
  ref, got = _run("bleu", "reference", n), _run("bleu", "mmjax", n)
  rows.append((f"corpus BLEU, {n:,} pairs x 2 refs", "sacrebleu 2.6", ref, "mmjax", got,
               f"{ref['value']!r} vs {got['value']!r}"))
  ref, got = _run("rouge", "reference", n), _run("rouge", "mmjax", n)
  rows.append((f"ROUGE 1/2/L/Lsum, {n:,} pairs", "rouge-score 0.1.2", ref, "mmjax", got,
               f"rougeL F {ref['value']!r} vs {got['value']!r}"))
  n_images, per_image, dim = sizes["retrieval"]
  ref = _run("retrieval", "reference", n_images, per_image, dim)
  got = _run("retrieval", "mmjax", n_images, per_image, dim)
  agree = all(abs(ref["value"][k] - got["value"][k]) < 1e-6 for k in ref["value"])
  worst = max(ref["value"], key=lambda k: abs(ref["value"][k] - got["value"][k]))
  worst_gap = abs(ref["value"][worst] - got["value"][worst])
  rows.append((f"R@1/5/10, {n_images:,} images x {n_images * per_image:,} captions, D={dim}",
               "torch, chunked top-k", ref, "mmjax from_embeddings", got,
               f"i2t R@1 {got['value']['i2t_r@1']:.4f}, t2i R@1 "
               f"{got['value']['t2i_r@1']:.4f}; same recalls: {agree} (largest difference "
               f"{worst_gap:.1e} at {worst}, i.e. {worst_gap * n_images * per_image:.1f} of "
               f"{n_images * per_image:,} queries for t2i, {worst_gap * n_images:.2f} of "
               f"{n_images:,} for i2t)"))

  lines = [f"Measured on {_report.machine_line()}, CPU only. Each cell runs in a fresh "
           "process; time = wall / CPU "
           "(user + system) seconds of the computation including JIT compilation, excluding "
           "imports and input generation; peak = max resident set size of that process, "
           "Python/JAX/torch runtime included. On a shared machine compare the CPU seconds.",
           "",
           "| task | reference | time (wall / CPU) | peak | mmjax | time (wall / CPU) | peak | "
           "CPU speed-up | values |",
           "|---|---|---|---|---|---|---|---|---|"]
  for task, ref_name, ref, name, got, note in rows:
    lines.append(
        f"| {task} | {ref_name} | {ref['seconds']:.1f} / {ref['cpu_seconds']:.1f} s | "
        f"{ref['peak_mb']:.0f} MB | {name} | {got['seconds']:.1f} / {got['cpu_seconds']:.1f} s"
        f" | {got['peak_mb']:.0f} MB | {ref['cpu_seconds'] / got['cpu_seconds']:.1f}x | "
        f"{note} |")
  table = "\n".join(lines)
  print(table)
  print(load.line())
  if not args.quick:
    _report.write_section("metrics", table, load, args.allow_loaded)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  main()
