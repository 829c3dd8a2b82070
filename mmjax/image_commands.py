"""`mmjax zero-shot|embed|retrieve`: a CLIP checkpoint or a trained run on a person's own images.

  mmjax zero-shot (--checkpoint FILE.safetensors | --workdir RUN) --images DIR
      --classes "cat,dog,..." (or a text file, one class per line)
      [--templates "a photo of a {}." ...] [--top-k 5] [--out results.csv|results.json]
  mmjax embed (--checkpoint FILE | --workdir RUN) (--images DIR | --captions FILE.txt)
      --out PREFIX                    -> PREFIX.npy (float32 [N, E]) and PREFIX.txt (N lines)
  mmjax retrieve (--checkpoint FILE | --workdir RUN) --images DIR --captions FILE.txt
      [--top-k 5] [--direction i2t|t2i|both] [--metric cosine|euclidean] [--out FILE.json]

Images: every .png/.jpg/.jpeg/.bmp/.gif/.webp under DIR (recursive, any case), sorted by path.
Captions: one per line of a UTF-8 file; empty lines are skipped. The model side is
`mmjax.embedding.EmbeddingModel`; top-k lists are computed on device in blocks
(`mmjax.nearest_neighbours`).
"""
from __future__ import annotations

import argparse
import csv
import json
import pathlib

import numpy as np

from mmjax import image_folder

COMMANDS = ("zero-shot", "embed", "retrieve")
DEFAULT_TEMPLATES = ("a photo of a {}.",)
ZERO_SHOT_SUFFIXES = (".csv", ".json")

RETRIEVE_DESCRIPTION = """\
Ranks the captions of each image (i2t) and/or the images of each caption (t2i),
on device, one block of queries at a time.

--metric euclidean ranks by the L2 distance between the embeddings. The models'
embeddings are L2-normalised, so that distance is sqrt(2 - 2 cos) and ranks
exactly as cosine does (up to float rounding of near ties): it reports distances
(lower is closer) instead of similarities, nothing more."""

_MODEL_EPILOG = """\
Model sources:
  --checkpoint FILE  an open_clip / OpenAI CLIP ViT state dict (.safetensors or .npz; PyTorch
                     pickles are refused with the one-line conversion). Images are resized
                     (shorter side) and centre-cropped to the model's image size and
                     normalised with OpenAI's mean/std; texts use CLIP's BPE (--vocab).
  --workdir RUN      a `mmjax train` run of a two-tower config (contrastive, BLIP): its newest
                     checkpoint, read-only. Images are fed as in training ([0, 1] floats at
                     config.data.image_size), texts through the run's tokenizer.
Embeddings are L2-normalised."""


def add_parsers(sub) -> None:
  """Adds the three subcommands to the `mmjax` subparsers `sub`."""
  formatter = argparse.RawDescriptionHelpFormatter
  p = sub.add_parser("zero-shot", formatter_class=formatter, epilog=_MODEL_EPILOG,
                     help="classify images into given classes (CLIP zero-shot)",
                     description="Prints each image's top-k classes with their probabilities:\n"
                                 "softmax over the classes of logit_scale * cosine(image, class),"
                                 "\na class embedding being the renormalised mean of its "
                                 "templates'\ntext embeddings (CLIP's zero-shot recipe).")
  _model_args(p)
  _images_arg(p, required=True)
  p.add_argument("--classes", required=True, metavar="NAMES|FILE",
                 help='comma-separated class names ("cat,dog") or a text file, one per line')
  p.add_argument("--templates", nargs="+", default=list(DEFAULT_TEMPLATES), metavar="TEMPLATE",
                 help='prompt templates with "{}" for the class name (default: '
                      '"a photo of a {}."); a class embedding averages them')
  p.add_argument("--top-k", type=int, default=5, metavar="K",
                 help="classes shown per image (default 5)")
  p.add_argument("--out", default=None, metavar="FILE",
                 help="also write the results: .csv (image, class_1, prob_1, ...) or .json")
  _debug_flag(p)

  p = sub.add_parser("embed", formatter_class=formatter, epilog=_MODEL_EPILOG,
                     help="write the embeddings of images or captions to PREFIX.npy/.txt",
                     description="Writes PREFIX.npy (float32 [N, E], L2-normalised rows) and\n"
                                 "PREFIX.txt (the image paths or captions, one per line, in "
                                 "row order).")
  _model_args(p)
  inputs = p.add_mutually_exclusive_group(required=True)
  inputs.add_argument("--images", metavar="DIR", help="a folder of images (recursive)")
  inputs.add_argument("--captions", metavar="FILE", help="a text file, one caption per line")
  p.add_argument("--skip-bad", action="store_true",
                 help="skip unreadable images with a warning (default: stop with an error)")
  p.add_argument("--out", required=True, metavar="PREFIX",
                 help="output prefix: writes PREFIX.npy and PREFIX.txt")
  _debug_flag(p)

  p = sub.add_parser("retrieve", formatter_class=formatter, epilog=_MODEL_EPILOG,
                     help="the top-k captions of each image and/or images of each caption",
                     description=RETRIEVE_DESCRIPTION)
  _model_args(p)
  _images_arg(p, required=True)
  p.add_argument("--captions", required=True, metavar="FILE",
                 help="a text file, one caption per line")
  p.add_argument("--top-k", type=int, default=5, metavar="K",
                 help="results per query (default 5)")
  p.add_argument("--direction", choices=("i2t", "t2i", "both"), default="both",
                 help="i2t: captions per image; t2i: images per caption (default both)")
  p.add_argument("--metric", choices=("cosine", "euclidean"), default="cosine",
                 help="cosine similarity (default) or euclidean distance")
  p.add_argument("--out", default=None, metavar="FILE.json", help="also write the results")
  _debug_flag(p)


def _debug_flag(p) -> None:
  """`--debug` accepted after the command too, as `mmjax train` accepts it."""
  p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _model_args(p) -> None:
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--checkpoint", metavar="FILE",
                      help="an open_clip / OpenAI CLIP ViT .safetensors (or .npz)")
  source.add_argument("--workdir", metavar="RUN",
                      help="a `mmjax train` run of a contrastive or BLIP config (read-only)")
  p.add_argument("--quick-gelu", action=argparse.BooleanOptionalAction, default=None,
                 help="--checkpoint: QuickGELU (OpenAI's weights) or exact GELU; default: from "
                      "the file's metadata or 'openai'/'quickgelu' in its name, else GELU")
  p.add_argument("--vocab", default=None, metavar="MERGES",
                 help="--checkpoint: a CLIP merges file (bpe_simple_vocab_16e6.txt.gz); "
                      "default: the packaged OpenAI one")
  p.add_argument("--vision-heads", type=int, default=None, metavar="N",
                 help="--checkpoint: attention heads of the image tower (default width // 64)")
  p.add_argument("--text-heads", type=int, default=None, metavar="N",
                 help="--checkpoint: attention heads of the text tower (default width // 64)")
  p.add_argument("--batch-size", type=int, default=64, metavar="N",
                 help="images or texts per device call (default 64)")


def _images_arg(p, required: bool) -> None:
  p.add_argument("--images", required=required, metavar="DIR",
                 help="a folder of .png/.jpg/.jpeg/.bmp/.gif/.webp images (recursive)")
  p.add_argument("--skip-bad", action="store_true",
                 help="skip unreadable images with a warning (default: stop with an error)")


# -- arguments ----------------------------------------------------------------------------------

def check_model_args(args) -> None:
  """Refuses the --checkpoint-only flags with --workdir, and a batch size below 1."""
  if args.batch_size < 1:
    raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
  if args.workdir is None:
    return
  given = [flag for flag, value in (("--quick-gelu/--no-quick-gelu", args.quick_gelu),
                                    ("--vocab", args.vocab), ("--vision-heads", args.vision_heads),
                                    ("--text-heads", args.text_heads)) if value is not None]
  if given:
    raise ValueError(f"{', '.join(given)}: only for --checkpoint (a --workdir run brings its own "
                     "architecture and tokenizer)")


def load_model(args):
  """The `EmbeddingModel` of --checkpoint or --workdir."""
  from mmjax.embedding import EmbeddingModel
  check_model_args(args)
  if args.checkpoint is not None:
    return EmbeddingModel.from_checkpoint(args.checkpoint, quick_gelu=args.quick_gelu,
                                          vocab_path=args.vocab, vision_heads=args.vision_heads,
                                          text_heads=args.text_heads)
  return EmbeddingModel.from_workdir(args.workdir)


def parse_classes(value: str) -> list[str]:
  """--classes: a text file of class names (one per line, empty lines skipped) when `value` is
  a file, else comma-separated names. Empty or repeated names are errors."""
  path = pathlib.Path(value)
  if path.is_file():
    names = image_folder.read_captions(path)
    where = f"class file {path}"
  elif value.lower().endswith(".txt"):
    raise FileNotFoundError(f"--classes {value}: no such file (give a text file of class names, "
                            "one per line, or comma-separated names)")
  else:
    names = [name.strip() for name in value.split(",")]
    where = f"--classes {value!r}"
    if not all(names):
      raise ValueError(f"{where} has an empty class name; expected comma-separated names like "
                       "'cat,dog'")
  repeated = sorted({name for name in names if names.count(name) > 1})
  if repeated:
    raise ValueError(f"{where} names {repeated} more than once; each class must be named once")
  return names


def check_templates(templates: list[str]) -> list[str]:
  for template in templates:
    try:
      ok = "{}" in template and template.format("x") == template.replace("{}", "x", 1)
    except (IndexError, KeyError, ValueError):
      ok = False
    if not ok:
      raise ValueError(f"--templates {template!r} must hold exactly one '{{}}' for the class "
                       "name (and no other braces), e.g. 'a photo of a {}.'")
  return templates


def _check_top_k(top_k: int) -> int:
  if top_k < 1:
    raise ValueError(f"--top-k must be >= 1, got {top_k}")
  return top_k


def _clamped_top_k(top_k: int, available: int, what: str) -> int:
  if top_k > available:
    image_folder.note(f"--top-k {top_k} > the {available} {what}; showing {available}")
  return min(top_k, available)


def _check_out(out: str | None, suffixes: tuple[str, ...]) -> pathlib.Path | None:
  if out is None:
    return None
  path = pathlib.Path(out)
  if path.suffix.lower() not in suffixes:
    raise ValueError(f"--out {out} must end with {' or '.join(suffixes)} (the format is chosen "
                     "by the suffix)")
  if not path.parent.is_dir():
    raise FileNotFoundError(f"--out {out}: folder {path.parent} does not exist")
  return path


def _write_json(path: pathlib.Path, record: dict) -> None:
  path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


# -- commands -----------------------------------------------------------------------------------

def class_embeddings(model, names: list[str], templates: list[str], batch_size: int
                     ) -> np.ndarray:
  """float32 `[C, E]`: per class, the mean of its templates' normalised text embeddings,
  renormalised (CLIP's zero-shot classifier)."""
  prompts = [template.format(name) for name in names for template in templates]
  prompt_emb = model.embed_texts(prompts, batch_size=batch_size)
  class_emb = prompt_emb.reshape(len(names), len(templates), -1).mean(axis=1)
  return class_emb / np.linalg.norm(class_emb, axis=-1, keepdims=True)


def zero_shot(args) -> int:
  from mmjax.nearest_neighbours import top_k_probabilities
  names = parse_classes(args.classes)
  templates = check_templates(list(args.templates))
  top_k = _check_top_k(args.top_k)
  out = _check_out(args.out, ZERO_SHOT_SUFFIXES)
  paths = image_folder.list_images(args.images)
  model = load_model(args)
  class_emb = class_embeddings(model, names, templates, args.batch_size)
  image_emb, paths = model.embed_image_files(paths, skip_bad=args.skip_bad,
                                             batch_size=args.batch_size)
  top_k = _clamped_top_k(top_k, len(names), "classes")
  indices, probs = top_k_probabilities(image_emb, class_emb, model.logit_scale, top_k)
  results = [{"image": str(path), "classes": [names[i] for i in row_indices],
              "probs": [float(p) for p in row_probs]}
             for path, row_indices, row_probs in zip(paths, indices, probs)]
  for result in results:
    print(f"{result['image']}: " + ", ".join(
        f"{name} {prob:.4f}" for name, prob in zip(result["classes"], result["probs"])))
  if out is not None:
    if out.suffix.lower() == ".csv":
      with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image"] + [f"{field}_{rank}" for rank in range(1, top_k + 1)
                                     for field in ("class", "prob")])
        for result in results:
          writer.writerow([result["image"]] + [value for pair in zip(
              result["classes"], result["probs"]) for value in pair])
    else:
      _write_json(out, {"model": model.description, "classes": names, "templates": templates,
                        "logit_scale": model.logit_scale, "top_k": top_k, "results": results})
    print(f"wrote {out}")
  return 0


def _prefix(out: str) -> pathlib.Path:
  path = pathlib.Path(out)
  if path.suffix.lower() in (".npy", ".txt"):
    path = path.with_suffix("")
  if not path.parent.is_dir():
    raise FileNotFoundError(f"--out {out}: folder {path.parent} does not exist")
  return path


def embed(args) -> int:
  prefix = _prefix(args.out)
  if args.images is not None:
    paths = image_folder.list_images(args.images)
    model = load_model(args)
    embeddings, paths = model.embed_image_files(paths, skip_bad=args.skip_bad,
                                                batch_size=args.batch_size)
    lines = [str(path) for path in paths]
  else:
    lines = image_folder.read_captions(args.captions)
    model = load_model(args)
    embeddings = model.embed_texts(lines, batch_size=args.batch_size)
  npy, txt = prefix.with_name(prefix.name + ".npy"), prefix.with_name(prefix.name + ".txt")
  np.save(npy, embeddings.astype(np.float32))
  txt.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  print(f"wrote {npy} ({embeddings.shape[0]} x {embeddings.shape[1]} float32, L2-normalised) "
        f"and {txt}")
  return 0


def retrieve(args) -> int:
  from mmjax.nearest_neighbours import top_k_neighbours
  top_k = _check_top_k(args.top_k)
  out = _check_out(args.out, (".json",))
  paths = image_folder.list_images(args.images)
  captions = image_folder.read_captions(args.captions)
  model = load_model(args)
  image_emb, paths = model.embed_image_files(paths, skip_bad=args.skip_bad,
                                             batch_size=args.batch_size)
  text_emb = model.embed_texts(captions, batch_size=args.batch_size)
  score = ("cosine similarity (higher is closer)" if args.metric == "cosine"
           else "euclidean distance (lower is closer)")
  record = {"model": model.description, "metric": args.metric, "score": score}
  images = [str(path) for path in paths]
  directions = ("i2t", "t2i") if args.direction == "both" else (args.direction,)
  for direction in directions:
    query_key, key = ("image", "captions") if direction == "i2t" else ("caption", "images")
    queries, candidates, query_names, candidate_names = (
        (image_emb, text_emb, images, captions) if direction == "i2t"
        else (text_emb, image_emb, captions, images))
    k = _clamped_top_k(top_k, len(candidates), key)
    indices, scores = top_k_neighbours(queries, candidates, k, metric=args.metric)
    record[direction] = [{query_key: name, key: [candidate_names[i] for i in row_indices],
                          "scores": [float(s) for s in row_scores]}
                         for name, row_indices, row_scores in zip(query_names, indices, scores)]
    print(f"== {direction}: top {k} {key} per {query_key} by {score}")
    for entry in record[direction]:
      print(f"{query_key} {entry[query_key]}")
      for rank, (name, value) in enumerate(zip(entry[key], entry["scores"]), 1):
        print(f"  {rank}. {value:.4f}  {name}")
  if out is not None:
    _write_json(out, record)
    print(f"wrote {out}")
  return 0


def run(args) -> int:
  check_model_args(args)  # Before any input is read: the cheap mistakes first.
  return {"zero-shot": zero_shot, "embed": embed, "retrieve": retrieve}[args.command](args)
