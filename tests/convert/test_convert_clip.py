"""`load_clip`: mmjax's CLIP on converted open_clip weights against open_clip's own embeddings
(tests/fixtures/convert_clip/make_clip_fixtures.py), the architecture read off full-size
open_clip shapes, the QuickGELU decision, and the refusals (wrong shapes, other variants)."""
import gzip
import json
import pathlib

import jax
import numpy as np
import pytest
import safetensors.numpy

from mmjax.convert import clip as convert_clip
from mmjax.convert import clip_config_from_state_dict, load_clip, normalize_images
from mmjax.convert.state_dict import read_state_dict
from mmjax.errors import CheckpointMismatchError, DataError

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures" / "convert_clip"
REFERENCE = dict(np.load(FIXTURES / "outputs.npz"))
FIELDS = [str(f) for f in REFERENCE["architecture_fields"]]
PARITY_ATOL = 1e-5
REAL = json.loads(gzip.decompress((FIXTURES / "real_shapes.json.gz").read_bytes()))


def architecture(name):
  return dict(zip(FIELDS, (int(v) for v in REFERENCE[f"{name}/architecture"])))


def heads(name):
  arch = architecture(name)
  return dict(vision_heads=arch["vision_heads"], text_heads=arch["text_heads"])


def embeddings(model, params):
  image = model.apply({"params": params}, REFERENCE["images"], method=model.encode_image)
  text = model.apply({"params": params}, REFERENCE["tokens"], method=model.encode_text)
  return np.asarray(image), np.asarray(text)


def shapes_only(shapes):
  """A state dict of zero-stride arrays with these shapes (no memory for a full-size model)."""
  return {k: np.broadcast_to(np.float32(0), tuple(s)) for k, s in shapes.items()}


def resave(tmp_path, state, name="model.safetensors", metadata=None):
  path = tmp_path / name
  path.parent.mkdir(parents=True, exist_ok=True)
  safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path),
                              metadata=metadata)
  return path


@pytest.mark.parametrize("name, file", [("gelu_clip", "gelu_clip"), ("qgelu_clip", "qgelu_clip"),
                                        ("gelu_clip_bf16", "gelu_clip_bf16")])
def test_embeddings_match_open_clip(name, file):
  model, params = load_clip(FIXTURES / f"{file}.safetensors",
                            **heads(name.removesuffix("_bf16")))
  image, text = embeddings(model, params)
  # float32 through these towers differs from PyTorch by ~3e-7; 1e-5 leaves a wide margin and
  # still fails on a GELU of the wrong form (tanh against erf).
  np.testing.assert_allclose(image, REFERENCE[f"{name}/image_emb"], atol=PARITY_ATOL)
  np.testing.assert_allclose(text, REFERENCE[f"{name}/text_emb"], atol=PARITY_ATOL)


def test_the_activation_matters():
  model, params = load_clip(FIXTURES / "gelu_clip.safetensors", quick_gelu=True,
                            **heads("gelu_clip"))
  image, text = embeddings(model, params)
  assert np.abs(image - REFERENCE["gelu_clip/image_emb"]).max() > 100 * PARITY_ATOL
  assert np.abs(text - REFERENCE["gelu_clip/text_emb"]).max() > 100 * PARITY_ATOL


def test_params_are_float32_and_logit_scale_is_the_checkpoints():
  _, params = load_clip(FIXTURES / "qgelu_clip.safetensors", **heads("qgelu_clip"))
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype(np.float32)}
  logit_scale = read_state_dict(FIXTURES / "qgelu_clip.safetensors")["logit_scale"]
  assert params["logit_scale"].shape == () and params["logit_scale"] == logit_scale


@pytest.mark.parametrize("name", ["gelu_clip", "qgelu_clip"])
def test_config_matches_the_open_clip_architecture(name):
  state = read_state_dict(FIXTURES / f"{name}.safetensors")
  config = clip_config_from_state_dict(state, quick_gelu=False, **heads(name))
  want = architecture(name)
  vision, text = config["model"]["image_encoder"], config["model"]["text_encoder"]
  assert config["model"]["embed_dim"] == want["embed_dim"]
  assert (vision["width"], vision["num_layers"], vision["num_heads"], vision["patch_size"]) == (
      want["vision_width"], want["vision_layers"], want["vision_heads"], want["patch_size"])
  assert int(vision["width"] * vision["mlp_ratio"]) == want["vision_mlp_dim"]
  assert (text["width"], text["num_layers"], text["num_heads"]) == (
      want["text_width"], want["text_layers"], want["text_heads"])
  assert int(text["width"] * text["mlp_ratio"]) == want["text_mlp_dim"]
  assert (config["image_size"], config["context_length"], config["vocab_size"]) == (
      want["image_size"], want["context_length"], want["vocab_size"])
  assert config["text_tower_fields"] == dict(vocab_size=want["vocab_size"],
                                             context_length=want["context_length"], pad_id=0,
                                             eos_id=want["vocab_size"] - 1)


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-H-14"])
def test_full_size_architecture_and_default_heads(name):
  real = REAL[name]
  config = clip_config_from_state_dict(shapes_only(real["shapes"]), quick_gelu=True)
  vision_cfg, text_cfg = real["config"]["vision_cfg"], real["config"]["text_cfg"]
  vision, text = config["model"]["image_encoder"], config["model"]["text_encoder"]
  assert config["model"]["embed_dim"] == real["config"]["embed_dim"]
  assert {k: vision[k] for k in ("width", "num_layers", "num_heads", "patch_size")} == dict(
      width=vision_cfg["width"], num_layers=vision_cfg["layers"], num_heads=vision_cfg["heads"],
      patch_size=vision_cfg["patch_size"])
  assert int(vision["width"] * vision["mlp_ratio"]) == 4 * vision_cfg["width"]
  assert {k: text[k] for k in ("width", "num_layers", "num_heads")} == dict(
      width=text_cfg["width"], num_layers=text_cfg["layers"], num_heads=text_cfg["heads"])
  assert config["image_size"] == vision_cfg["image_size"]
  assert config["text_tower_fields"]["eos_id"] == text_cfg["vocab_size"] - 1 == 49407
  assert config["model"]["mlp_activation"] == "quick_gelu"
  assert config["model"]["layer_norm_epsilon"] == 1e-5
  assert config["model"]["gelu_approximate"] is False


def test_quick_gelu_from_metadata_name_or_a_note(tmp_path, capsys):
  model, _ = load_clip(FIXTURES / "qgelu_clip.safetensors", **heads("qgelu_clip"))
  assert model.image_encoder.mlp_activation == model.text_encoder.mlp_activation == "quick_gelu"
  assert "mmjax: note" not in capsys.readouterr().err
  state = read_state_dict(FIXTURES / "qgelu_clip.safetensors")
  hub_like = resave(tmp_path, state, "vit_base_patch32_clip_224.openai/snapshots/0a1b/"
                                     "open_clip_model.safetensors")
  model, params = load_clip(hub_like, **heads("qgelu_clip"))
  assert model.text_encoder.mlp_activation == "quick_gelu"
  assert "mmjax: note" not in capsys.readouterr().err
  np.testing.assert_allclose(embeddings(model, params)[0], REFERENCE["qgelu_clip/image_emb"],
                             atol=PARITY_ATOL)
  model, _ = load_clip(resave(tmp_path, state, "anonymous.safetensors"), **heads("qgelu_clip"))
  assert model.image_encoder.mlp_activation == "gelu"
  assert "mmjax: note: cannot tell whether" in capsys.readouterr().err
  with pytest.raises(CheckpointMismatchError, match="mlp_activation='relu'"):
    load_clip(resave(tmp_path, state, "bad.safetensors", {"mlp_activation": "relu"}),
              **heads("qgelu_clip"))


def test_wrapper_prefixes_and_unused_buffers_are_accepted(tmp_path):
  state = read_state_dict(FIXTURES / "gelu_clip.safetensors")
  wrapped = {f"state_dict.module.{k}": v for k, v in state.items()}
  wrapped["module.attn_mask"] = np.zeros((12, 12), np.float32)
  model, params = load_clip(resave(tmp_path, wrapped), quick_gelu=False, **heads("gelu_clip"))
  np.testing.assert_allclose(embeddings(model, params)[1], REFERENCE["gelu_clip/text_emb"],
                             atol=PARITY_ATOL)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("visual.ln_post.bias"), "missing visual.ln_post.bias"),
    (lambda s: s.update({"transformer.resblocks.1.mlp.c_fc.bias": np.zeros(7, np.float32)}),
     r"transformer.resblocks.1.mlp.c_fc.bias has shape \[7\], expected \[96\]"),
    (lambda s: s.update({"text_projection": np.zeros((24, 9), np.float32)}),
     r"text_projection has shape \[24, 9\], expected \[24, 16\]"),
    (lambda s: s.update({"visual.transformer.resblocks.0.ls_1.gamma": np.ones(24, np.float32)}),
     "layer scale.*ls_1.gamma.*not supported"),
    (lambda s: s.update({"visual.attn_pool.query": np.ones((4, 24), np.float32)}),
     "attentional pooling.*not supported"),
    (lambda s: s.update({"cls_emb": np.ones(24, np.float32)}), "text class token.*not supported"),
    (lambda s: s.update({"visual.extra.weight": np.ones(3, np.float32)}),
     r"weights .* does not have: \['visual.extra.weight'\]; that variant is not supported"),
])
def test_mismatches_name_the_key(tmp_path, edit, message):
  state = read_state_dict(FIXTURES / "gelu_clip.safetensors")
  edit(state)
  with pytest.raises(CheckpointMismatchError, match=message):
    load_clip(resave(tmp_path, state), quick_gelu=False, **heads("gelu_clip"))


def test_another_models_state_dict_is_refused(tmp_path):
  vae = {"encoder.conv_in.weight": np.zeros((8, 3, 3, 3), np.float32),
         "decoder.conv_out.bias": np.zeros(3, np.float32)}
  with pytest.raises(CheckpointMismatchError, match="does not fit an open_clip.*missing "
                                                    "visual.conv1.weight"):
    load_clip(resave(tmp_path, vae), quick_gelu=False)


@pytest.mark.parametrize("name, message", [
    ("RN50", "ModifiedResNet visual tower.*only ViT towers are supported"),
    ("ViT-M-16-alt", "layer scale"),
])
def test_unsupported_open_clip_models(name, message):
  with pytest.raises(CheckpointMismatchError, match=message):
    clip_config_from_state_dict(shapes_only(REAL[name]["shapes"]), quick_gelu=False)


def test_heads_that_do_not_divide_the_width():
  state = read_state_dict(FIXTURES / "gelu_clip.safetensors")
  with pytest.raises(ValueError, match="vision width 24 cannot be split into 0 attention heads.*"
                                       "vision_heads="):
    clip_config_from_state_dict(state, quick_gelu=False)  # 24 // 64 = 0
  with pytest.raises(ValueError, match="text width 24 cannot be split into 5"):
    clip_config_from_state_dict(state, quick_gelu=False, vision_heads=2, text_heads=5)


def test_pickle_is_refused(tmp_path):
  (tmp_path / "open_clip_pytorch_model.pt").write_bytes(b"\x80\x04not a pickle")
  with pytest.raises(DataError, match="never unpickles"):
    load_clip(tmp_path / "open_clip_pytorch_model.pt")


def test_a_converter_bug_is_caught_by_the_tree_check(monkeypatch):
  convert = convert_clip.convert_params

  def dropping_a_leaf(state, arch):
    params = convert(state, arch)
    del params["image_encoder"]["ln_pre"]["bias"]
    return params

  monkeypatch.setattr(convert_clip, "convert_params", dropping_a_leaf)
  with pytest.raises(RuntimeError, match=r"mmjax bug.*\['image_encoder'\]\['ln_pre'\]\['bias'\]"):
    load_clip(FIXTURES / "gelu_clip.safetensors", quick_gelu=False, **heads("gelu_clip"))


def test_normalize_images_is_open_clips():
  np.testing.assert_allclose(np.asarray(normalize_images(REFERENCE["images01"])),
                             REFERENCE["images"], atol=1e-6)
  as_uint8 = np.round(REFERENCE["images01"] * 255).astype(np.uint8)
  np.testing.assert_allclose(np.asarray(normalize_images(as_uint8)),
                             np.asarray(normalize_images(as_uint8 / 255.0)), atol=1e-6)
  with pytest.raises(ValueError, match=r"\[..., H, W, 3\]"):
    normalize_images(np.zeros((2, 3, 16, 16), np.float32))
