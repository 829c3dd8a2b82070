"""`mmjax zero-shot|embed|retrieve` on a folder of images, in-process.

The model is a small random open_clip ViT CLIP written here as .safetensors (open_clip's keys,
the 49408-token vocabulary of the packaged tokenizer). The reference embeddings come from
`load_clip`'s model applied once to all images (pixels built here, normalised here with
OpenAI's constants) and all token rows: independent of the CLI's folder reading, batching,
padding and sharding. Zero-shot probabilities are the closed-form softmax over numpy class
embeddings; rankings are numpy stable argsorts of the similarities / distances.
A tiny contrastive run trained here checks `--workdir`: the final train state is the reference,
and the workdir is left byte-for-byte as it was, even with a corrupt newest checkpoint.
"""
import csv
import importlib.util
import json
import math
import pathlib
import shutil

import jax
import numpy as np
import pytest
import safetensors.numpy
from PIL import Image

from mmjax import cli
from mmjax.convert import load_clip
from mmjax.convert.clip import expected_shapes
from mmjax.data.clip_tokenizer import ClipTokenizer
from mmjax.embedding import EmbeddingModel
from mmjax.nearest_neighbours import _top_k, top_k_neighbours, top_k_probabilities

ROOT = pathlib.Path(__file__).resolve().parents[1]
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)  # OpenAI CLIP's
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
IMAGE_SIZE, CONTEXT_LENGTH, VOCAB_SIZE, EMBED_DIM = 16, 16, 49408, 16
ARCH = dict(embed_dim=EMBED_DIM, vision_width=64, vision_layers=1, vision_mlp_ratio=2.0,
            patch_size=8, image_size=IMAGE_SIZE, text_width=64, text_layers=1,
            text_mlp_ratio=2.0, context_length=CONTEXT_LENGTH, vocab_size=VOCAB_SIZE)
COLOURS = {"red": (220, 20, 30), "green": (10, 200, 40), "blue": (30, 40, 230)}
CLASSES = ["red", "green", "blue", "noise"]
TEMPLATES = ["a photo of a {}.", "a {} thing"]
CAPTIONS = ["a red square", "something green", "blue sky", "static noise", "a cat",
            "two dogs on a sofa"]


def random_clip_state(seed=0):
  """open_clip's ViT CLIP keys and shapes, random values (LayerNorms off 1/0 too)."""
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape in expected_shapes(ARCH).items():
    if key.endswith(".weight") and len(shape) == 1:  # LayerNorm scales
      state[key] = 1 + 0.2 * rng.standard_normal(shape)
    elif key == "logit_scale":
      state[key] = np.array(math.log(1 / 0.07) - 0.5)
    else:
      fan_in = shape[-1] if len(shape) > 1 else 1
      state[key] = rng.standard_normal(shape) / np.sqrt(fan_in)
  return {k: np.asarray(v, np.float32) for k, v in state.items()}


def save_png(path, pixels):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """The checkpoint, an image folder, the pixels the model must see per image, captions."""
  root = tmp_path_factory.mktemp("images_cli")
  checkpoint = root / "clip.safetensors"
  safetensors.numpy.save_file(random_clip_state(), str(checkpoint),
                              metadata={"mlp_activation": "gelu"})
  folder, pixels = root / "photos", {}
  noise = np.random.default_rng(1).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
  # A solid colour stays itself through any resize and crop, so these are what the model sees.
  layout = {"blue.gif": ("blue", (16, 16)), "red.png": ("red", (16, 16)),
            "sub/green.PNG": ("green", (24, 40))}
  for name, (colour, (height, width)) in layout.items():
    save_png(folder / name, np.full((height, width, 3), COLOURS[colour], np.uint8))
    pixels[str(folder / name)] = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), COLOURS[colour], np.uint8)
  Image.fromarray(noise).save(folder / "noise.bmp")
  pixels[str(folder / "noise.bmp")] = noise
  (folder / "readme.txt").write_text("not an image")
  captions = root / "captions.txt"
  captions.write_text("\n".join(CAPTIONS[:3] + ["", "   "] + CAPTIONS[3:]) + "\n\n")
  paths = sorted(pixels)  # The CLI's order: sorted paths.
  return dict(root=root, checkpoint=checkpoint, folder=folder, captions=captions, paths=paths,
              pixels=np.stack([pixels[p] for p in paths]))


@pytest.fixture(scope="module")
def reference(files):
  """Embeddings straight from load_clip's model on all inputs at once."""
  model, params = load_clip(files["checkpoint"])
  encode_image = jax.jit(lambda x: model.apply({"params": params}, x, method=model.encode_image))
  encode_text = jax.jit(lambda t: model.apply({"params": params}, t, method=model.encode_text))
  tokenizer = ClipTokenizer()

  def encode_pixels(pixels):  # uint8 [N, S, S, 3], normalised as open_clip's preprocessing
    return np.asarray(encode_image((pixels.astype(np.float32) / 255 - MEAN) / STD))

  def embed_texts(texts):
    return np.asarray(encode_text(tokenizer.encode_batch(texts, CONTEXT_LENGTH)))

  image_emb = encode_pixels(files["pixels"])
  prompt_emb = embed_texts([t.format(c) for c in CLASSES for t in TEMPLATES])
  class_emb = prompt_emb.reshape(len(CLASSES), len(TEMPLATES), -1).astype(np.float64).mean(1)
  class_emb /= np.linalg.norm(class_emb, axis=1, keepdims=True)
  scale = math.exp(min(float(params["logit_scale"]), math.log(100)))
  logits = scale * image_emb.astype(np.float64) @ class_emb.T
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  return dict(image_emb=image_emb, caption_emb=embed_texts(CAPTIONS), probs=probs, scale=scale,
              encode_pixels=encode_pixels)


def run_cli(capsys, *args):
  """(exit status, stdout, stderr) of `mmjax *args` run in this process."""
  try:
    code = cli.main([str(a) for a in args])
  except SystemExit as e:  # argparse's usage errors
    code = e.code
  out, err = capsys.readouterr()
  return code, out, err


def stable_order(values, k):
  """[N, k] indices of a stable descending sort of each row."""
  return np.argsort(-values, axis=1, kind="stable")[:, :k]


def assert_separated(sorted_values, what, gap=1e-4):
  """The reference ranking is unambiguous (no near ties a rounding could swap)."""
  assert np.all(np.abs(np.diff(sorted_values, axis=1)) > gap), f"{what}: near tie in the fixture"


def test_zero_shot_prints_and_writes_the_closed_form_probabilities(files, reference, capsys,
                                                                   tmp_path):
  top_k = 3
  want = stable_order(reference["probs"], top_k)
  want_probs = np.take_along_axis(reference["probs"], want, 1)
  assert_separated(np.take_along_axis(reference["probs"], stable_order(reference["probs"], 4),
                                      1), "probs")
  args = ["zero-shot", "--checkpoint", files["checkpoint"], "--images", files["folder"],
          "--classes", ",".join(CLASSES), "--templates", *TEMPLATES, "--top-k", top_k,
          "--batch-size", 3]
  for suffix in (".json", ".csv"):
    out_path = tmp_path / f"results{suffix}"
    code, out, err = run_cli(capsys, *args, "--out", out_path)
    assert code == 0, err
    printed = [line for line in out.splitlines() if not line.startswith("wrote ")]
    assert len(printed) == len(files["paths"])
    for line, path, row, row_probs in zip(printed, files["paths"], want, want_probs):
      image, ranked = line.split(": ", 1)
      assert image == path
      pairs = [item.rsplit(" ", 1) for item in ranked.split(", ")]
      assert [name for name, _ in pairs] == [CLASSES[i] for i in row]
      np.testing.assert_allclose([float(p) for _, p in pairs], row_probs, atol=6e-5)
    if suffix == ".json":
      results = json.loads(out_path.read_text())["results"]
      rows = [(r["image"], r["classes"], r["probs"]) for r in results]
    else:
      with open(out_path, newline="") as f:
        table = list(csv.reader(f))
      assert table[0] == ["image", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3"]
      rows = [(r[0], r[1::2], [float(p) for p in r[2::2]]) for r in table[1:]]
    assert [image for image, _, _ in rows] == files["paths"]
    for (_, names, probs), row, row_probs in zip(rows, want, want_probs):
      assert names == [CLASSES[i] for i in row]
      np.testing.assert_allclose(probs, row_probs, atol=1e-5)


def test_classes_from_a_file_and_top_k_beyond_the_classes(files, reference, capsys, tmp_path):
  class_file = tmp_path / "classes.txt"
  class_file.write_text("\n".join(CLASSES) + "\n\n")
  out_path = tmp_path / "all.json"
  code, _, err = run_cli(capsys, "zero-shot", "--checkpoint", files["checkpoint"], "--images",
                         files["folder"], "--classes", class_file, "--templates", *TEMPLATES,
                         "--top-k", 9, "--out", out_path)
  assert code == 0, err
  assert "--top-k 9 > the 4 classes" in err
  results = json.loads(out_path.read_text())["results"]
  assert [r["image"] for r in results] == files["paths"]
  order = stable_order(reference["probs"], 4)
  for result, row, probs in zip(results, order, reference["probs"]):
    assert result["classes"] == [CLASSES[i] for i in row]
    np.testing.assert_allclose(result["probs"], probs[row], atol=1e-5)


def test_embed_images_and_captions(files, reference, capsys, tmp_path):
  code, _, err = run_cli(capsys, "embed", "--checkpoint", files["checkpoint"], "--images",
                         files["folder"], "--out", tmp_path / "img", "--batch-size", 3)
  assert code == 0, err
  np.testing.assert_allclose(np.load(tmp_path / "img.npy"), reference["image_emb"], atol=1e-5)
  assert (tmp_path / "img.txt").read_text().splitlines() == files["paths"]
  code, _, err = run_cli(capsys, "embed", "--checkpoint", files["checkpoint"], "--captions",
                         files["captions"], "--out", tmp_path / "cap.npy", "--batch-size", 4)
  assert code == 0, err
  assert "skipped 3 empty line(s)" in err and "line 4, 5, 9" in err
  embeddings = np.load(tmp_path / "cap.npy")
  assert embeddings.dtype == np.float32
  np.testing.assert_allclose(embeddings, reference["caption_emb"], atol=1e-5)
  assert (tmp_path / "cap.txt").read_text().splitlines() == CAPTIONS


def test_embedding_model_takes_arrays_and_paths(files, reference):
  model = EmbeddingModel.from_checkpoint(files["checkpoint"])
  assert (model.image_size, model.context_length) == (IMAGE_SIZE, CONTEXT_LENGTH)
  assert model.logit_scale == pytest.approx(reference["scale"], rel=1e-6)
  green = files["paths"].index(str(files["folder"] / "sub" / "green.PNG"))
  inputs = [np.full((30, 18, 3), COLOURS["green"], np.uint8), files["paths"][0],
            files["pixels"][1][..., 0]]  # a grey [H, W] array: one channel of image 1
  grey_emb = reference["encode_pixels"](np.repeat(files["pixels"][1:2, ..., :1], 3, axis=-1))
  np.testing.assert_allclose(model.embed_images(inputs, batch_size=2),
                             np.concatenate([reference["image_emb"][[green, 0]], grey_emb]),
                             atol=1e-5)
  with pytest.raises(ValueError, match="uint8"):
    model.embed_images([np.zeros((4, 4, 3), np.float32)])


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_retrieve_rankings_match_numpy(files, reference, capsys, tmp_path, metric):
  image_emb = reference["image_emb"].astype(np.float64)
  caption_emb = reference["caption_emb"].astype(np.float64)
  if metric == "cosine":
    closeness = image_emb @ caption_emb.T
    score = closeness
  else:
    distance = np.sqrt(((image_emb[:, None] - caption_emb[None]) ** 2).sum(-1))
    closeness, score = -distance, distance
  out_path = tmp_path / "retrieved.json"
  code, out, err = run_cli(capsys, "retrieve", "--checkpoint", files["checkpoint"], "--images",
                           files["folder"], "--captions", files["captions"], "--top-k", 3,
                           "--metric", metric, "--out", out_path)
  assert code == 0, err
  record = json.loads(out_path.read_text())
  assert record["metric"] == metric
  assert (len(record["i2t"]), len(record["t2i"])) == (len(files["paths"]), len(CAPTIONS))
  i2t, t2i = stable_order(closeness, 3), stable_order(closeness.T, 3)
  assert_separated(np.take_along_axis(closeness, stable_order(closeness, 6), 1), "i2t")
  assert_separated(np.take_along_axis(closeness.T, stable_order(closeness.T, 4), 1), "t2i")
  for entry, path, row in zip(record["i2t"], files["paths"], i2t):
    assert entry["image"] == path
    assert entry["captions"] == [CAPTIONS[i] for i in row]
    np.testing.assert_allclose(entry["scores"], score[files["paths"].index(path), row],
                               atol=1e-5)
  for entry, caption, row, scores in zip(record["t2i"], CAPTIONS, t2i, score.T):
    assert entry["caption"] == caption
    assert entry["images"] == [files["paths"][i] for i in row]
    np.testing.assert_allclose(entry["scores"], scores[row], atol=1e-5)
  assert f"  1. {record['i2t'][0]['scores'][0]:.4f}  {record['i2t'][0]['captions'][0]}" in out
  # On unit vectors the two metrics rank alike (what --help says).
  cosine = image_emb @ caption_emb.T
  np.testing.assert_array_equal(i2t, stable_order(cosine, 3))


def test_retrieve_one_direction(files, capsys, tmp_path):
  out_path = tmp_path / "t2i.json"
  code, _, err = run_cli(capsys, "retrieve", "--checkpoint", files["checkpoint"], "--images",
                         files["folder"], "--captions", files["captions"], "--top-k", 2,
                         "--direction", "t2i", "--out", out_path)
  assert code == 0, err
  record = json.loads(out_path.read_text())
  assert "i2t" not in record and len(record["t2i"]) == len(CAPTIONS)


def test_blocked_top_k_against_numpy_and_no_full_matrix():
  rng = np.random.default_rng(3)
  queries = rng.standard_normal((37, 8)).astype(np.float32) * rng.uniform(0.5, 2, (37, 1))
  candidates = rng.standard_normal((23, 8)).astype(np.float32) * rng.uniform(0.5, 2, (23, 1))
  q64, c64 = queries.astype(np.float64), candidates.astype(np.float64)
  cosine = (q64 / np.linalg.norm(q64, axis=1, keepdims=True)) @ (
      c64 / np.linalg.norm(c64, axis=1, keepdims=True)).T
  distance = np.sqrt(((q64[:, None] - c64[None]) ** 2).sum(-1))
  for metric, closeness, score in (("cosine", cosine, cosine), ("euclidean", -distance, distance)):
    indices, scores = top_k_neighbours(queries, candidates, 5, metric=metric, block_size=8)
    want = stable_order(closeness, 5)
    np.testing.assert_array_equal(indices, want, err_msg=metric)
    np.testing.assert_allclose(scores, np.take_along_axis(score, want, 1), atol=2e-5)
  # Not normalised, the two metrics rank differently: euclidean is not cosine in disguise.
  assert (stable_order(cosine, 5) != stable_order(-distance, 5)).any()
  logits = 7.0 * cosine
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  unit_q = (q64 / np.linalg.norm(q64, axis=1, keepdims=True)).astype(np.float32)
  unit_c = (c64 / np.linalg.norm(c64, axis=1, keepdims=True)).astype(np.float32)
  indices, got = top_k_probabilities(unit_q, unit_c, 7.0, 4, block_size=8)
  np.testing.assert_array_equal(indices, stable_order(probs, 4))
  np.testing.assert_allclose(got, np.take_along_axis(probs, stable_order(probs, 4), 1), atol=1e-6)
  # No value of the jitted computation is as large as all queries x all candidates.
  jaxpr = jax.make_jaxpr(_top_k, static_argnums=(2, 3, 4))(queries, candidates, 5, "cosine", 8)
  shapes = set()

  def collect(jaxpr):
    for eqn in jaxpr.eqns:
      shapes.update(tuple(v.aval.shape) for v in eqn.outvars)
      for param in eqn.params.values():
        for sub in param if isinstance(param, (list, tuple)) else [param]:
          if hasattr(sub, "jaxpr"):
            collect(sub.jaxpr)
          elif hasattr(sub, "eqns"):
            collect(sub)

  collect(jaxpr.jaxpr)
  assert (8, 23) in shapes and not [s for s in shapes if len(s) >= 2 and s[-1] == 23 and
                                    math.prod(s) > 8 * 23], shapes


def test_unreadable_image_names_the_file_or_is_skipped(files, reference, capsys, tmp_path):
  folder = tmp_path / "bad"
  folder.mkdir()
  Image.fromarray(files["pixels"][files["paths"].index(str(files["folder"] / "red.png"))]).save(
      folder / "a_red.png")
  good = (folder / "a_red.png").read_bytes()
  (folder / "b_broken.png").write_bytes(good[:len(good) // 2])
  args = ["embed", "--checkpoint", files["checkpoint"], "--images", folder, "--out",
          tmp_path / "bad_emb"]
  code, _, err = run_cli(capsys, *args)
  assert code == 2
  assert err.startswith("mmjax: error: cannot read image ") and "b_broken.png" in err
  assert "--skip-bad" in err and len(err.strip().splitlines()) == 1
  code, _, err = run_cli(capsys, *args, "--skip-bad")
  assert code == 0, err
  assert f"mmjax: warning: skipping unreadable image {folder / 'b_broken.png'} (" in err
  assert (tmp_path / "bad_emb.txt").read_text().splitlines() == [str(folder / "a_red.png")]
  np.testing.assert_allclose(np.load(tmp_path / "bad_emb.npy"),
                             reference["image_emb"][[files["paths"].index(
                                 str(files["folder"] / "red.png"))]], atol=1e-5)


def test_user_errors_exit_2_with_one_line(files, capsys, tmp_path):
  (tmp_path / "empty" / "deep").mkdir(parents=True)
  (tmp_path / "empty" / "deep" / "notes.txt").write_text("x")
  pickle = tmp_path / "model.pt"
  pickle.write_bytes(b"PK\x03\x04 not really")
  blank = tmp_path / "blank.txt"
  blank.write_text("\n  \n")
  clean = tmp_path / "clean.txt"
  clean.write_text("a caption\n")
  ckpt, folder = files["checkpoint"], files["folder"]
  cases = {
      "empty folder": (["zero-shot", "--checkpoint", ckpt, "--images", tmp_path / "empty",
                        "--classes", "a,b"], ["holds no image", str(tmp_path / "empty")]),
      "pickle checkpoint": (["embed", "--checkpoint", pickle, "--images", folder, "--out",
                             tmp_path / "x"], [str(pickle), "PyTorch pickle"]),
      "missing --classes": (["zero-shot", "--checkpoint", ckpt, "--images", folder],
                            ["the following arguments are required: --classes"]),
      "no model source": (["embed", "--images", folder, "--out", tmp_path / "x"],
                          ["one of the arguments --checkpoint --workdir is required"]),
      "only empty captions": (["embed", "--checkpoint", ckpt, "--captions", blank, "--out",
                               tmp_path / "x"], [str(blank), "holds no caption"]),
      "missing class file": (["zero-shot", "--checkpoint", ckpt, "--images", folder, "--classes",
                              tmp_path / "nope.txt"], [str(tmp_path / "nope.txt")]),
      "repeated class": (["zero-shot", "--checkpoint", ckpt, "--images", folder, "--classes",
                          "cat,dog,cat"], ["['cat'] more than once"]),
      "template without {}": (["zero-shot", "--checkpoint", ckpt, "--images", folder,
                               "--classes", "a,b", "--templates", "a photo"],
                              ["'a photo' must hold exactly one '{}'"]),
      "bad --out suffix": (["zero-shot", "--checkpoint", ckpt, "--images", folder, "--classes",
                            "a,b", "--out", tmp_path / "r.txt"], ["must end with .csv or .json"]),
      "checkpoint flags with --workdir": (["embed", "--workdir", tmp_path, "--vocab", "v.gz",
                                           "--captions", files["captions"], "--out",
                                           tmp_path / "x"], ["--vocab: only for --checkpoint"]),
      "workdir without a run": (["embed", "--workdir", tmp_path / "empty", "--captions",
                                 clean, "--out", tmp_path / "x"],
                                ["has no config.json"]),
      "config override": (["embed", "--checkpoint", ckpt, "--captions", files["captions"], "--out",
                           tmp_path / "x", "--config.batch_size=3"],
                          ["unrecognised argument '--config.batch_size=3' for `mmjax embed`"]),
  }
  for name, (args, needles) in cases.items():
    code, _, err = run_cli(capsys, *args)
    assert code == 2, (name, err)
    assert err.startswith("mmjax: error: ") and len(err.strip().splitlines()) == 1, (name, err)
    for needle in needles:
      assert needle in err, (name, err)
  assert not (tmp_path / "x.npy").exists()


# -- --workdir: a tiny contrastive run ------------------------------------------------------------

def _train_tiny_overrides():
  """tests/train/conftest.py's TINY config (loaded by path: that folder is not on sys.path)."""
  spec = importlib.util.spec_from_file_location("train_conftest_for_cli_images",
                                                ROOT / "tests" / "train" / "conftest.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.tiny_config("total_steps=2", "model.image_encoder.stem_channels=()")


def tree_listing(root):
  return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size if p.is_file() else 0)
          for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """(config, workdir, TrainResult) of 2 tiny contrastive steps (no end-of-run evaluation)."""
  from mmjax.train.tasks.contrastive import ContrastiveTask
  from mmjax.train.trainer import train
  workdir = tmp_path_factory.mktemp("contrastive_run")
  config = _train_tiny_overrides()
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(ContrastiveTask, "evaluate", lambda self, params, mesh: {})
    mp.setattr(ContrastiveTask, "write_artifacts", lambda self, params, mesh, workdir: [])
    result = train(config, workdir, devices=jax.devices()[:1], progress=False)
  return config, workdir, result


def test_workdir_embeddings_match_the_trained_params_and_leave_the_run_alone(
    trained_run, files, capsys, tmp_path):
  config, workdir, result = trained_run
  from mmjax.train.tasks.contrastive import ContrastiveTask
  task = ContrastiveTask(config)
  # A newer checkpoint that does not restore: skipped with a warning, and not renamed aside.
  checkpoints = workdir / "checkpoints"
  shutil.copytree(checkpoints / str(result.step), checkpoints / str(result.step + 1))
  (checkpoints / str(result.step + 1) / "state" / "_METADATA").write_text("{x")
  before = tree_listing(workdir)
  classes, out_path = ["red circle", "blue square", "green triangle"], tmp_path / "run.json"
  code, _, err = run_cli(capsys, "zero-shot", "--workdir", workdir, "--images", files["folder"],
                         "--classes", ",".join(classes), "--templates", "a {}", "a {} .",
                         "--top-k", 3, "--batch-size", 3, "--out", out_path)
  assert code == 0, err
  assert f"checkpoints/{result.step + 1} does not restore" in err
  assert tree_listing(workdir) == before
  record = json.loads(out_path.read_text())

  params, task = result.state.params, ContrastiveTask(config)
  apply = jax.jit(lambda inputs, method: task.model.apply({"params": params}, inputs,
                                                           method=method), static_argnums=1)
  images = files["pixels"].astype(np.float32) / 255  # as the training pipeline feeds them
  image_emb = np.asarray(apply(images, task.model.encode_image), np.float64)
  prompts = [template.format(c) for c in classes for template in ("a {}", "a {} .")]
  prompt_emb = np.asarray(apply(task.tokenizer.encode_batch(prompts, config.data.context_length),
                                task.model.encode_text), np.float64)
  class_emb = prompt_emb.reshape(len(classes), 2, -1).mean(1)
  class_emb /= np.linalg.norm(class_emb, axis=1, keepdims=True)
  scale = math.exp(min(float(params["logit_scale"]), math.log(100)))
  assert record["logit_scale"] == pytest.approx(scale, rel=1e-6)
  logits = scale * image_emb @ class_emb.T
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  order = stable_order(probs, 3)
  assert_separated(np.take_along_axis(probs, order, 1), "workdir probs", gap=1e-5)
  assert [r["image"] for r in record["results"]] == files["paths"]
  for result_row, row, row_probs in zip(record["results"], order, probs):
    assert result_row["classes"] == [classes[i] for i in row]
    np.testing.assert_allclose(result_row["probs"], row_probs[row], atol=1e-5)
