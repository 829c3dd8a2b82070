"""`load_siglip`: mmjax's CLIP on converted SigLIP weights (Hugging Face safetensors and
big_vision npz) against transformers' own SiglipModel outputs
(tests/fixtures/convert_siglip/make_siglip_fixture.py), the architecture read off full-size
SiglipModel shapes, big_vision's saved variants (scan, bfloat16, no prefix, old posemb), the
CLIP options SigLIP needs, and the refusals."""
import gzip
import json
import math
import pathlib
import shutil

import jax
import numpy as np
import pytest
import safetensors.numpy

from mmjax.convert import (SIGLIP_MEAN, SIGLIP_STD, load_siglip, normalize_images,
                           siglip_config_from_state_dict)
from mmjax.convert import siglip as convert_siglip
from mmjax.convert.state_dict import read_state_dict
from mmjax.errors import CheckpointMismatchError

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures" / "convert_siglip"
HF = FIXTURES / "hf" / "model.safetensors"
BIG_VISION = FIXTURES / "big_vision.npz"
REFERENCE = dict(np.load(FIXTURES / "outputs.npz"))
HF_CONFIG = json.loads((FIXTURES / "hf" / "config.json").read_text())
HEADS = dict(vision_heads=HF_CONFIG["vision_config"]["num_attention_heads"],
             text_heads=HF_CONFIG["text_config"]["num_attention_heads"])
REAL = json.loads(gzip.decompress((FIXTURES / "real_shapes.json.gz").read_bytes()))
# float32 through these towers differs from PyTorch by ~1e-6; the logits carry exp(t) ~ 117.
FEATURE_ATOL, LOGIT_ATOL = 1e-5, 2e-4


def outputs(model, params):
  variables = {"params": params}
  images, tokens = REFERENCE["images"], REFERENCE["tokens"]
  image_emb = np.asarray(model.apply(variables, images, method=model.encode_image))
  text_emb = np.asarray(model.apply(variables, tokens, method=model.encode_text))
  logit = model.apply(variables, method=model.logit_params)
  return dict(
      image_features=np.asarray(model.apply(variables, images, method=model.image_features)),
      text_features=np.asarray(model.apply(variables, tokens, method=model.text_features)),
      image_emb=image_emb, text_emb=text_emb,
      logits=np.exp(float(logit["logit_scale"])) * image_emb @ text_emb.T
      + float(logit["logit_bias"]))


def normalised(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def assert_matches_transformers(got):
  np.testing.assert_allclose(got["image_features"], REFERENCE["image_features"],
                             atol=FEATURE_ATOL)
  np.testing.assert_allclose(got["text_features"], REFERENCE["text_features"], atol=FEATURE_ATOL)
  np.testing.assert_allclose(got["image_emb"], normalised(REFERENCE["image_features"]),
                             atol=FEATURE_ATOL)
  np.testing.assert_allclose(got["text_emb"], normalised(REFERENCE["text_features"]),
                             atol=FEATURE_ATOL)
  np.testing.assert_allclose(got["logits"], REFERENCE["logits_per_image"], atol=LOGIT_ATOL)


def resave(tmp_path, state, name="model.safetensors"):
  path = tmp_path / name
  state = {k: np.ascontiguousarray(v) for k, v in state.items()}
  if name.endswith(".npz"):
    np.savez(path, **state)
  else:
    safetensors.numpy.save_file(state, str(path))
  return path


def shapes_only(shapes):
  return {k: np.broadcast_to(np.float32(0), tuple(s)) for k, s in shapes.items()}


@pytest.mark.parametrize("path", [HF, BIG_VISION], ids=["hugging_face", "big_vision"])
def test_outputs_match_transformers(path):
  model, params = load_siglip(path)
  assert_matches_transformers(outputs(model, params))
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype(np.float32)}


def test_model_is_siglips_architecture():
  model, params = load_siglip(HF)
  vision, text = model.image_encoder, model.text_encoder
  assert (vision.pool, vision.class_token, vision.pre_norm) == ("map", False, False)
  assert (text.causal, text.padding_mask, text.pool) == (False, False, "last")
  assert (model.project_image, model.text_proj_bias, model.max_logit_scale) == (False, True, None)
  assert vision.gelu_approximate and text.gelu_approximate  # HF: gelu_pytorch_tanh
  assert vision.layer_norm_epsilon == text.layer_norm_epsilon == 1e-6
  # The learned t is above CLIP's clip at log(100) and reaches the logits unclipped.
  logit = model.apply({"params": params}, method=model.logit_params)
  assert float(logit["logit_scale"]) == pytest.approx(float(REFERENCE["logit_scale"]))
  assert float(REFERENCE["logit_scale"]) > math.log(100)
  assert float(logit["logit_bias"]) == pytest.approx(float(REFERENCE["logit_bias"]))


def test_clips_default_clip_would_change_the_logits():
  model, params = load_siglip(HF)
  clipped = model.clone(max_logit_scale=math.log(100.0))
  logit = clipped.apply({"params": params}, method=clipped.logit_params)
  assert float(logit["logit_scale"]) == pytest.approx(math.log(100.0))
  got = outputs(clipped, params)
  assert np.abs(got["logits"] - REFERENCE["logits_per_image"]).max() > 100 * LOGIT_ATOL


def test_config_matches_the_hf_config():
  vision_cfg, text_cfg = HF_CONFIG["vision_config"], HF_CONFIG["text_config"]
  for state in (read_state_dict(HF), read_state_dict(BIG_VISION)):
    config = siglip_config_from_state_dict(state, **HEADS)
    vision, text = config["model"]["image_encoder"], config["model"]["text_encoder"]
    assert (vision["width"], vision["num_layers"], vision["num_heads"], vision["patch_size"]) == (
        vision_cfg["hidden_size"], vision_cfg["num_hidden_layers"],
        vision_cfg["num_attention_heads"], vision_cfg["patch_size"])
    assert int(vision["width"] * vision["mlp_ratio"]) == vision_cfg["intermediate_size"]
    assert (text["width"], text["num_layers"], text["num_heads"]) == (
        text_cfg["hidden_size"], text_cfg["num_hidden_layers"], text_cfg["num_attention_heads"])
    assert int(text["width"] * text["mlp_ratio"]) == text_cfg["intermediate_size"]
    assert config["model"]["embed_dim"] == text_cfg["projection_size"]
    assert (config["image_size"], config["context_length"], config["vocab_size"]) == (
        vision_cfg["image_size"], text_cfg["max_position_embeddings"], text_cfg["vocab_size"])
    assert config["text_tower_fields"]["pad_id"] == config["text_tower_fields"]["eos_id"] == 1
    assert (config["image_mean"], config["image_std"]) == (SIGLIP_MEAN, SIGLIP_STD)


@pytest.mark.parametrize("name, image_size", [("siglip-base-patch16-224", 224),
                                              ("siglip-so400m-patch14-384", 378)])
def test_full_size_architecture_and_default_heads(name, image_size):
  real = REAL[name]
  config = siglip_config_from_state_dict(shapes_only(real["shapes"]))  # no config.json
  vision_cfg, text_cfg = real["config"]["vision_config"], real["config"]["text_config"]
  vision, text = config["model"]["image_encoder"], config["model"]["text_encoder"]
  assert (vision["width"], vision["num_layers"], vision["num_heads"]) == (
      vision_cfg["hidden_size"], vision_cfg["num_hidden_layers"],
      vision_cfg["num_attention_heads"])
  assert int(vision["width"] * vision["mlp_ratio"]) == vision_cfg["intermediate_size"]
  assert (text["width"], text["num_layers"], text["num_heads"]) == (
      text_cfg["hidden_size"], text_cfg["num_hidden_layers"], text_cfg["num_attention_heads"])
  assert int(text["width"] * text["mlp_ratio"]) == text_cfg["intermediate_size"]
  # 384 px at patch 14: HF's valid convolution sees 27 x 27 patches, i.e. 378 px.
  assert config["image_size"] == image_size
  assert config["context_length"] == 64 and config["vocab_size"] == 32000


def test_hf_heads_from_config_json_arguments_or_width(tmp_path):
  lone = tmp_path / "model.safetensors"
  shutil.copy(HF, lone)  # no config.json beside it
  assert_matches_transformers(outputs(*load_siglip(lone, **HEADS)))
  with pytest.raises(ValueError, match="vision width 32 cannot be split into 0 attention heads.*"
                                       "vision_heads="):
    load_siglip(lone)  # 32 // 64 = 0
  # An argument overrides config.json, and the head count matters.
  model, params = load_siglip(HF, vision_heads=2)
  got = outputs(model, params)
  assert np.abs(got["image_features"] - REFERENCE["image_features"]).max() > 100 * FEATURE_ATOL


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(model_type="clip"), "model_type='clip', expected 'siglip'"),
    (lambda c: c["vision_config"].update(hidden_size=64),
     "vision_config.hidden_size=64 but the weights have width 32"),
    (lambda c: c["text_config"].update(hidden_act="relu"), "hidden_act='relu'"),
])
def test_a_config_json_that_does_not_fit_is_refused(tmp_path, edit, message):
  config = json.loads(json.dumps(HF_CONFIG))
  edit(config)
  shutil.copy(HF, tmp_path / "model.safetensors")
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(CheckpointMismatchError, match=message):
    load_siglip(tmp_path / "model.safetensors")


def test_exact_gelu_from_config_json(tmp_path):
  config = json.loads(json.dumps(HF_CONFIG))
  for tower in ("vision_config", "text_config"):
    config[tower]["hidden_act"] = "gelu"
  shutil.copy(HF, tmp_path / "model.safetensors")
  (tmp_path / "config.json").write_text(json.dumps(config))
  model, params = load_siglip(tmp_path / "model.safetensors")
  assert not model.image_encoder.gelu_approximate and not model.text_encoder.gelu_approximate
  got = outputs(model, params)  # the fixture was made with tanh GELU: now it must differ
  assert np.abs(got["image_features"] - REFERENCE["image_features"]).max() > 10 * FEATURE_ATOL


def _big_vision_tree():
  return dict(np.load(BIG_VISION))


def test_big_vision_scanned_unprefixed_and_old_posemb_variants(tmp_path):
  tree = {k.removeprefix("params/"): v for k, v in _big_vision_tree().items()}
  for stack in ("img/Transformer/encoderblock", "txt/Encoder_0/encoderblock"):
    names = [k.removeprefix(stack + "_0/") for k in tree if k.startswith(stack + "_0/")]
    for name in names:
      layers = [tree.pop(f"{stack}_{i}/{name}") for i in range(2)]
      tree[f"{stack}/{name}"] = np.stack(layers)  # nn.scan's layout: [layers, ...]
  # Old text towers: the position embedding in two parts (not a constant: LayerNorm hides one).
  extra = np.random.default_rng(0).normal(size=tree["txt/pos_embedding"].shape)
  tree["txt/pos_embedding"] = (tree["txt/pos_embedding"] - extra).astype(np.float32)
  tree["txt/Encoder_0/pos_embedding"] = extra.astype(np.float32)
  assert not any("encoderblock_" in k for k in tree)
  assert_matches_transformers(outputs(*load_siglip(resave(tmp_path, tree, "scanned.npz"))))


def test_big_vision_bfloat16_voids_are_read_as_their_float32_values(tmp_path):
  tree = _big_vision_tree()
  truncated = {k: (v.view(np.uint32) & 0xFFFF0000).view(np.float32) for k, v in tree.items()}
  voids = {k: (v.view(np.uint32) >> 16).astype(np.uint16).view("V2") for k, v in tree.items()}
  from_voids = load_siglip(resave(tmp_path, voids, "bf16.npz"))[1]
  from_float32 = load_siglip(resave(tmp_path, truncated, "f32.npz"))[1]
  jax.tree.map(np.testing.assert_array_equal, from_voids, from_float32)
  assert not np.array_equal(from_float32["text_proj"]["kernel"],
                            load_siglip(BIG_VISION)[1]["text_proj"]["kernel"])


def test_big_vision_heads_are_read_off_the_kernels():
  with pytest.raises(ValueError, match="vision_heads=2, but the checkpoint's attention kernels "
                                       "have 4 heads"):
    load_siglip(BIG_VISION, vision_heads=2)


def test_big_vision_without_text_head_is_an_identity():
  tree = {k.removeprefix("params/"): v for k, v in _big_vision_tree().items()
          if "txt/head/" not in k}
  prepared, arch = convert_siglip._prepare_big_vision(tree, "x.npz", None, None)
  np.testing.assert_array_equal(prepared["txt/head/kernel"], np.eye(24, dtype=np.float32))
  np.testing.assert_array_equal(prepared["txt/head/bias"], np.zeros(24, np.float32))
  assert arch["embed_dim"] == 24
  # Here the text width (24) is not the image width (32): no shared space.
  with pytest.raises(CheckpointMismatchError, match="text head maps to 24 dimensions but the "
                                                    "image embedding .* vision width 32"):
    siglip_config_from_state_dict(tree)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("vision_model.head.layernorm.bias"), "missing vision_model.head.layernorm"),
    (lambda s: s.update({"text_model.head.bias": np.zeros(7, np.float32)}),
     r"text_model.head.bias has shape \[7\], expected \[32\]"),
    (lambda s: s.update({"vision_model.extra.weight": np.ones(3, np.float32)}),
     r"does not have: \['vision_model.extra.weight'\]"),
    (lambda s: s.update({"vision_model.embeddings.patch_embedding.weight":
                         np.zeros((32, 192), np.float32)}), "SigLIP 2 / NaFlex"),
    (lambda s: [s.pop(k) for k in list(s) if k.startswith("vision_model.head.")],
     r"no vision_model.head \(vision_use_head=False\)"),
])
def test_hf_mismatches_name_the_key(tmp_path, edit, message):
  state = read_state_dict(HF)
  edit(state)
  with pytest.raises(CheckpointMismatchError, match=message):
    load_siglip(resave(tmp_path, state), **HEADS)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("params/img/MAPHead_0/probe"), "no img/MAPHead_0"),
    (lambda s: s.pop("params/img/pos_embedding"), "sincos2d position embedding"),
    (lambda s: s.update({"params/img/head/kernel": np.zeros((32, 8), np.float32)}),
     "an image head"),
    (lambda s: s.update({"params/img/cls": np.zeros((1, 1, 32), np.float32)}), "a class token"),
    (lambda s: s.pop("params/txt/Encoder_0/encoderblock_1/MlpBlock_0/Dense_1/bias"),
     "missing txt/Encoder_0/encoderblock_1/MlpBlock_0/Dense_1/bias"),
    (lambda s: s.update({"params/img/MAPHead_0/MlpBlock_0/Dense_0/kernel":
                         np.zeros((32, 20), np.float32)}),
     r"MAPHead_0/MlpBlock_0/Dense_0/kernel has shape \[32, 20\], expected \[32, 48\]"),
])
def test_big_vision_mismatches_name_the_key(tmp_path, edit, message):
  tree = _big_vision_tree()
  edit(tree)
  with pytest.raises(CheckpointMismatchError, match=message):
    load_siglip(resave(tmp_path, tree, "bad.npz"))


def test_another_models_checkpoint_is_refused(tmp_path):
  clip_like = {"visual.conv1.weight": np.zeros((8, 3, 4, 4), np.float32)}
  with pytest.raises(CheckpointMismatchError, match="neither a Hugging Face SiglipModel"):
    load_siglip(resave(tmp_path, clip_like))


def test_a_converter_bug_is_caught_by_the_tree_check(monkeypatch):
  convert = convert_siglip.convert_params

  def dropping_a_leaf(tree, arch):
    params = convert(tree, arch)
    del params["image_encoder"]["map_head"]["probe"]
    return params

  monkeypatch.setattr(convert_siglip, "convert_params", dropping_a_leaf)
  with pytest.raises(RuntimeError, match=r"mmjax bug.*\['map_head'\]\['probe'\]"):
    load_siglip(HF)


def test_normalize_images_is_siglips_processor():
  images = normalize_images(REFERENCE["pixels_uint8"], SIGLIP_MEAN, SIGLIP_STD)
  np.testing.assert_allclose(np.asarray(images), REFERENCE["images"], atol=1e-6)


def test_clip_without_image_projection_needs_matching_widths():
  model, params = load_siglip(HF)
  wider = model.clone(embed_dim=40)
  with pytest.raises(ValueError, match="project_image=False needs the image encoder's pooled "
                                       "width 32 to equal embed_dim=40"):
    wider.apply({"params": params}, REFERENCE["images"], method=wider.image_features)
