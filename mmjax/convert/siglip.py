"""SigLIP checkpoints as mmjax's own `CLIP`: `load_siglip(path)`.

Two layouts, told apart by their names:
  (a) Hugging Face transformers `SiglipModel` `.safetensors` (google/siglip-base-patch16-224 ...),
      with the `config.json` beside it when there is one;
  (b) big_vision's two-tower `.npz` ("params/img/...", "params/txt/...", "params/t", "params/b";
      the "params/" prefix optional), as big_vision/models/vit.py, proj/image_text/
      text_transformer.py and two_towers.py name them.
Both are first mapped onto big_vision's tree (its attention kernels show the heads), then onto
mmjax's params; the model is built through `mmjax.models.build_model` (the class users train):

  HF vision_model. / big_vision img/               -> image_encoder/
    embeddings.patch_embedding [W, 3, p, p] + bias   -> patch_embed kernel [p*p*3, W] ("(p q c)"
      / embedding kernel [p, p, 3, W] + bias             rows) and bias
    embeddings.position_embedding [N, W] / pos_embedding [1, N, W] -> pos_embed [N, W]
    encoder.layers.i. / Transformer/encoderblock_i/  -> transformer/block_i/
      layer_norm1, layer_norm2 / LayerNorm_0, _1     -> ln_attn, ln_mlp
      self_attn.{q,k,v}_proj / MultiHeadDotProductAttention_0/{query,key,value}
                                                     -> self_attn/qkv kernel [W, 3, heads, hd]
      self_attn.out_proj / .../out                   -> self_attn/out kernel [heads, hd, W]
      mlp.fc1, fc2 / MlpBlock_0/Dense_0, _1          -> mlp/fc1, fc2
    post_layernorm / Transformer/encoder_norm        -> transformer/ln_final (all tokens)
    head. / MAPHead_0/                               -> map_head/
      probe [1, 1, W]                                -> probe
      attention.in_proj (rows q, k, v), out_proj / MultiHeadDotProductAttention_0
                                                     -> attn/query [W, heads, hd], attn/kv
                                                        [W, 2, heads, hd], attn/out
      layernorm, mlp / LayerNorm_0, MlpBlock_0       -> ln, mlp
  HF text_model. / big_vision txt/                 -> text_encoder/
    embeddings.token_embedding / Embed_0             -> token_embed
    embeddings.position_embedding / pos_embedding    -> pos_embed [L, Wt]
    encoder.layers.i. / Encoder_0/encoderblock_i/    -> transformer/block_i/ (as above)
    final_layer_norm / Encoder_0/encoder_norm        -> transformer/ln_final
    head [E, Wt] + bias / head kernel [Wt, E] + bias -> text_proj kernel [Wt, E] + bias
  logit_scale / t, logit_bias / b  ([1])           -> logit_scale, logit_bias  ([])

The model: ViT without class token and ln_pre, MAP pooling (`pool="map"`), no image projection
(the MAP head's output is the embedding, E = W); a bidirectional text tower that attends to its
padding (`padding_mask=False`) and pools the last position (`pool="last"`), a biased text
head; tanh GELU, LayerNorm eps 1e-6 (the HF config's gelu_pytorch_tanh / layer_norm_eps, and
flax's defaults in big_vision); logits `exp(t) * cos + b` with no clip on t
(`max_logit_scale=None`: So400m/14-384 learned t = 4.72, exp(t) ~ 112).

big_vision variants also read: scanned towers (one "encoderblock" stacked over layers, as
So400m/14-224 and B/16-512 are saved), bfloat16 arrays saved as 2-byte void, a text
"Encoder_0/pos_embedding" added twice by old checkpoints (summed, as big_vision's loader does)
and a missing "txt/head" (the i18n B/16-256: an identity). Refused with the variant named: an
image head (out_dim[0] set), a class token or other pooling than MAP, sincos position
embeddings, SigLIP 2 / NaFlex (Linear patch embedding), a HF vision tower without head.
"""
from __future__ import annotations

import json
import math
import pathlib
import re
from typing import Any

import numpy as np

from mmjax.convert.clip import check_clip_tree, mlp_ratio_of, strip_prefixes
from mmjax.convert.state_dict import (bfloat16_bits_to_float32, read_state_dict_with_metadata,
                                      require_keys)
from mmjax.errors import CheckpointMismatchError
from mmjax.models.registry import build_model

# SiglipImageProcessor / big_vision's value_range(-1, 1): pixels in [0, 1] -> (x - 0.5) / 0.5.
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
# The official spiece.model's </s>: appended to every text and used as padding.
SIGLIP_EOS_ID = SIGLIP_PAD_ID = 1
SIGLIP_LAYER_NORM_EPSILON = 1e-6
HEAD_WIDTH = 64
# So400m (1152) and giant-opt (1536) have 16 heads; B (768: 12) and L (1024: 16) width // 64.
HEADS_BY_WIDTH = {1152: 16, 1536: 16}
HF_ACTIVATIONS = {"gelu_pytorch_tanh": True, "gelu": False}  # hidden_act -> gelu_approximate
WHAT_HF = "a Hugging Face SiglipModel"
WHAT_BIG_VISION = "a big_vision SigLIP two-tower checkpoint"

_BIG_VISION_PREFIXES = ("params/", "opt/target/")
_HF_IGNORED = re.compile(r"\.position_ids$")
_ATTENTION = "MultiHeadDotProductAttention_0"
_BIG_VISION_UNSUPPORTED = (
    (r"^img/head/", "an image head (out_dim[0] set); mmjax's SigLIP image embedding is the MAP "
     "head's output"),
    (r"^img/cls$", "a class token (pool_type='tok'); only MAP pooling is supported"),
    (r"^txt/MAPHead_0/", "a MAP-pooled text tower; only 'last' pooling is supported"),
    (r"^img/pre_logits/", "a pre-logits layer (rep_size)"),
)


def _shape(state, key: str, ndim: int, what: str, path) -> tuple[int, ...]:
  if key not in state:
    raise CheckpointMismatchError(f"{path} does not fit {what}: missing {key} (it has "
                                  f"{len(state)} keys, e.g. {sorted(state)[:4]})")
  shape = tuple(state[key].shape)
  if len(shape) != ndim:
    raise CheckpointMismatchError(f"{path} does not fit {what}: {key} has shape {list(shape)}, "
                                  f"expected {ndim} dimensions")
  return shape


def _layer_count(state, prefix: str) -> int:
  """1 + the largest i of the keys `<prefix><i>.` (HF) or `<prefix><i>/` (big_vision)."""
  pattern = re.compile(rf"{re.escape(prefix)}(\d+)[./]")
  indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
  return max(indices) + 1 if indices else 0


def _heads(width: int, heads: int | None, tower: str) -> int:
  heads = HEADS_BY_WIDTH.get(width, width // HEAD_WIDTH) if heads is None else heads
  if heads < 1 or width % heads:
    raise ValueError(f"{tower} width {width} cannot be split into {heads} attention heads (the "
                     f"weights do not show the head count); pass {tower}_heads=<a divisor of "
                     f"{width}>")
  return heads


def _grid(tokens: int, key: str, path) -> int:
  grid = math.isqrt(tokens)
  if grid * grid != tokens:
    raise CheckpointMismatchError(f"{path}: {key} has {tokens} positions, expected a square "
                                  "number of patches (SigLIP has no class token)")
  return grid


# ---------------------------------------------------------------- (a) Hugging Face SiglipModel


def _hf_config(path: pathlib.Path) -> dict[str, Any]:
  """The `config.json` beside a Hugging Face checkpoint (a SiglipModel's), or {}."""
  config_path = path.parent / "config.json"
  if not config_path.is_file():
    return {}
  try:
    config = json.loads(config_path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointMismatchError(f"{config_path} beside {path} is not readable JSON ({e})"
                                  ) from None
  if config.get("model_type") != "siglip":
    raise CheckpointMismatchError(f"{config_path} beside {path} has model_type="
                                  f"{config.get('model_type')!r}, expected 'siglip' (move the "
                                  "checkpoint away from it, or pass the heads yourself)")
  return config


def _hf_tower_settings(config: dict[str, Any], tower: str, width: int, config_path):
  """(heads or None, gelu_approximate, layer_norm_epsilon) from a tower's sub-config."""
  sub = config.get(f"{tower}_config") or {}
  if "hidden_size" in sub and sub["hidden_size"] != width:
    raise CheckpointMismatchError(f"{config_path}: {tower}_config.hidden_size="
                                  f"{sub['hidden_size']} but the weights have width {width}; "
                                  "that config.json belongs to another model")
  act = sub.get("hidden_act", "gelu_pytorch_tanh")
  if act not in HF_ACTIVATIONS:
    raise CheckpointMismatchError(f"{config_path}: {tower}_config.hidden_act={act!r}; "
                                  f"supported: {sorted(HF_ACTIVATIONS)}")
  return (sub.get("num_attention_heads"), HF_ACTIVATIONS[act],
          float(sub.get("layer_norm_eps", SIGLIP_LAYER_NORM_EPSILON)))


def _hf_architecture(state, path, config, vision_heads, text_heads) -> dict[str, Any]:
  patch_key = "vision_model.embeddings.patch_embedding.weight"
  if patch_key in state and state[patch_key].ndim == 2:
    raise CheckpointMismatchError(f"{path} is SigLIP 2 / NaFlex: its {patch_key} is a Linear "
                                  f"{list(state[patch_key].shape)}; only SigLIP's convolutional "
                                  "patch embedding is supported")
  width, channels, patch, patch_w = _shape(state, "vision_model.embeddings.patch_embedding."
                                           "weight", 4, WHAT_HF, path)
  if channels != 3 or patch != patch_w:
    raise CheckpointMismatchError(f"{path}: vision_model.embeddings.patch_embedding.weight has "
                                  f"shape {[width, channels, patch, patch_w]}, expected "
                                  "[width, 3, p, p] (square RGB patches)")
  if "vision_model.head.probe" not in state:
    raise CheckpointMismatchError(f"{path} has no vision_model.head (vision_use_head=False): "
                                  "its image tower gives no embedding; not supported")
  key = "vision_model.embeddings.position_embedding.weight"
  grid = _grid(_shape(state, key, 2, WHAT_HF, path)[0], key, path)
  vocab, text_width = _shape(state, "text_model.embeddings.token_embedding.weight", 2, WHAT_HF,
                             path)
  embed_dim = _shape(state, "text_model.head.weight", 2, WHAT_HF, path)[0]
  config_path = path.parent / "config.json"
  v_heads, v_approx, v_eps = _hf_tower_settings(config, "vision", width, config_path)
  t_heads, t_approx, t_eps = _hf_tower_settings(config, "text", text_width, config_path)
  if (v_approx, v_eps) != (t_approx, t_eps):
    raise CheckpointMismatchError(f"{config_path}: the towers' hidden_act / layer_norm_eps "
                                  "differ; mmjax's SigLIP shares them")
  vision_mlp = _shape(state, "vision_model.encoder.layers.0.mlp.fc1.weight", 2, WHAT_HF, path)[0]
  text_mlp = _shape(state, "text_model.encoder.layers.0.mlp.fc1.weight", 2, WHAT_HF, path)[0]
  return dict(
      embed_dim=embed_dim, vision_width=width, patch_size=patch, image_size=grid * patch,
      vision_layers=_layer_count(state, "vision_model.encoder.layers."),
      vision_heads=_heads(width, vision_heads if vision_heads is not None else v_heads,
                          "vision"),
      vision_mlp_dim=vision_mlp, text_width=text_width,
      text_layers=_layer_count(state, "text_model.encoder.layers."),
      text_heads=_heads(text_width, text_heads if text_heads is not None else t_heads, "text"),
      text_mlp_dim=text_mlp,
      context_length=_shape(state, "text_model.embeddings.position_embedding.weight", 2,
                            WHAT_HF, path)[0],
      vocab_size=vocab, text_head=True, gelu_approximate=v_approx, layer_norm_epsilon=v_eps)


def _hf_block_shapes(prefix: str, width: int, mlp_dim: int, layers: int) -> dict[str, tuple]:
  shapes = {}
  for i in range(layers):
    p = f"{prefix}{i}."
    for norm in ("layer_norm1", "layer_norm2"):
      shapes.update({f"{p}{norm}.weight": (width,), f"{p}{norm}.bias": (width,)})
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
      shapes.update({f"{p}self_attn.{proj}.weight": (width, width),
                     f"{p}self_attn.{proj}.bias": (width,)})
    shapes.update({f"{p}mlp.fc1.weight": (mlp_dim, width), f"{p}mlp.fc1.bias": (mlp_dim,),
                   f"{p}mlp.fc2.weight": (width, mlp_dim), f"{p}mlp.fc2.bias": (width,)})
  return shapes


def expected_hf_shapes(arch: dict[str, Any]) -> dict[str, tuple[int, ...]]:
  """`{key: shape}` of a Hugging Face SiglipModel state dict for the architecture `arch`."""
  w, wt, e = arch["vision_width"], arch["text_width"], arch["embed_dim"]
  p, grid, mlp = arch["patch_size"], arch["image_size"] // arch["patch_size"], arch[
      "vision_mlp_dim"]
  v, t = "vision_model.", "text_model."
  return {
      f"{v}embeddings.patch_embedding.weight": (w, 3, p, p),
      f"{v}embeddings.patch_embedding.bias": (w,),
      f"{v}embeddings.position_embedding.weight": (grid * grid, w),
      **_hf_block_shapes(f"{v}encoder.layers.", w, mlp, arch["vision_layers"]),
      f"{v}post_layernorm.weight": (w,), f"{v}post_layernorm.bias": (w,),
      f"{v}head.probe": (1, 1, w),
      f"{v}head.attention.in_proj_weight": (3 * w, w), f"{v}head.attention.in_proj_bias": (3 * w,),
      f"{v}head.attention.out_proj.weight": (w, w), f"{v}head.attention.out_proj.bias": (w,),
      f"{v}head.layernorm.weight": (w,), f"{v}head.layernorm.bias": (w,),
      f"{v}head.mlp.fc1.weight": (mlp, w), f"{v}head.mlp.fc1.bias": (mlp,),
      f"{v}head.mlp.fc2.weight": (w, mlp), f"{v}head.mlp.fc2.bias": (w,),
      f"{t}embeddings.token_embedding.weight": (arch["vocab_size"], wt),
      f"{t}embeddings.position_embedding.weight": (arch["context_length"], wt),
      **_hf_block_shapes(f"{t}encoder.layers.", wt, arch["text_mlp_dim"], arch["text_layers"]),
      f"{t}final_layer_norm.weight": (wt,), f"{t}final_layer_norm.bias": (wt,),
      f"{t}head.weight": (e, wt), f"{t}head.bias": (e,),
      "logit_scale": (1,), "logit_bias": (1,),
  }


def _hf_attention(q, k, v, out, heads: int) -> dict[str, np.ndarray]:
  """big_vision attention params from torch (weight [out, in], bias) pairs."""
  width = out[0].shape[0]
  tree = {}
  for name, (weight, bias) in (("query", q), ("key", k), ("value", v)):
    tree[f"{name}/kernel"] = weight.T.reshape(width, heads, -1)
    tree[f"{name}/bias"] = bias.reshape(heads, -1)
  tree["out/kernel"] = out[0].T.reshape(heads, -1, width)
  tree["out/bias"] = out[1]
  return tree


def _hf_to_big_vision(state, arch) -> dict[str, np.ndarray]:
  """A checked HF SiglipModel state dict as big_vision's flat tree (without "params/")."""
  def pair(name):
    return state[name + ".weight"], state[name + ".bias"]

  def norm(name):
    return {"scale": state[name + ".weight"], "bias": state[name + ".bias"]}

  def dense(name):  # torch [out, in] -> flax kernel [in, out]
    return {"kernel": state[name + ".weight"].T, "bias": state[name + ".bias"]}

  tree = {}

  def put(prefix, sub):
    tree.update({f"{prefix}/{k}": a for k, a in sub.items()})

  for tower, stack, name in (("vision_model", "img/Transformer", "vision"),
                             ("text_model", "txt/Encoder_0", "text")):
    for i in range(arch[f"{name}_layers"]):
      p, b = f"{tower}.encoder.layers.{i}.", f"{stack}/encoderblock_{i}"
      put(f"{b}/LayerNorm_0", norm(p + "layer_norm1"))
      put(f"{b}/{_ATTENTION}", _hf_attention(
          pair(p + "self_attn.q_proj"), pair(p + "self_attn.k_proj"),
          pair(p + "self_attn.v_proj"), pair(p + "self_attn.out_proj"), arch[f"{name}_heads"]))
      put(f"{b}/LayerNorm_1", norm(p + "layer_norm2"))
      put(f"{b}/MlpBlock_0/Dense_0", dense(p + "mlp.fc1"))
      put(f"{b}/MlpBlock_0/Dense_1", dense(p + "mlp.fc2"))
  v, t = "vision_model.", "text_model."
  conv = state[f"{v}embeddings.patch_embedding.weight"]  # [W, 3, p, q]
  tree["img/embedding/kernel"] = conv.transpose(2, 3, 1, 0)
  tree["img/embedding/bias"] = state[f"{v}embeddings.patch_embedding.bias"]
  tree["img/pos_embedding"] = state[f"{v}embeddings.position_embedding.weight"][None]
  put("img/Transformer/encoder_norm", norm(f"{v}post_layernorm"))
  tree["img/MAPHead_0/probe"] = state[f"{v}head.probe"]
  in_weight = np.split(state[f"{v}head.attention.in_proj_weight"], 3)  # rows q, k, v
  in_bias = np.split(state[f"{v}head.attention.in_proj_bias"], 3)
  put(f"img/MAPHead_0/{_ATTENTION}", _hf_attention(
      *zip(in_weight, in_bias), pair(f"{v}head.attention.out_proj"), arch["vision_heads"]))
  put("img/MAPHead_0/LayerNorm_0", norm(f"{v}head.layernorm"))
  put("img/MAPHead_0/MlpBlock_0/Dense_0", dense(f"{v}head.mlp.fc1"))
  put("img/MAPHead_0/MlpBlock_0/Dense_1", dense(f"{v}head.mlp.fc2"))
  tree["txt/Embed_0/embedding"] = state[f"{t}embeddings.token_embedding.weight"]
  tree["txt/pos_embedding"] = state[f"{t}embeddings.position_embedding.weight"][None]
  put("txt/Encoder_0/encoder_norm", norm(f"{t}final_layer_norm"))
  put("txt/head", dense(f"{t}head"))
  tree["t"], tree["b"] = state["logit_scale"], state["logit_bias"]
  return tree


def _prepare_hf(state, path, config, vision_heads, text_heads):
  state = {k: v for k, v in strip_prefixes(state).items() if not _HF_IGNORED.search(k)}
  arch = _hf_architecture(state, path, config, vision_heads, text_heads)
  for key in ("logit_scale", "logit_bias"):
    if key in state and state[key].shape == ():
      state[key] = state[key].reshape(1)
  expected = expected_hf_shapes(arch)
  require_keys(state, expected, WHAT_HF, path)
  extra = sorted(k for k in state if k not in expected)
  if extra:
    raise CheckpointMismatchError(f"{path} has weights {WHAT_HF} does not have: {extra[:6]}; "
                                  "that variant is not supported")
  return _hf_to_big_vision(state, arch), arch


# ---------------------------------------------------------------- (b) big_vision two towers


def _big_vision_key(key: str) -> str:
  for prefix in _BIG_VISION_PREFIXES:
    key = key.removeprefix(prefix)
  return key


def _big_vision_flat(state, path) -> dict[str, np.ndarray]:
  """Keys without "params/", scanned towers unstacked, bfloat16 voids as float32."""
  tree = {}
  for key, value in state.items():
    key = _big_vision_key(key)
    if value.dtype.kind == "V":  # np.save writes bfloat16 as 2-byte void
      if value.dtype.itemsize != 2:
        raise CheckpointMismatchError(f"{path}: {key} has dtype {value.dtype}, expected a "
                                      "number (or 2-byte bfloat16)")
      value = bfloat16_bits_to_float32(value.view(np.uint16))
    tree[key] = value
  for stack in ("img/Transformer/encoderblock/", "txt/Encoder_0/encoderblock/"):
    scanned = [k for k in tree if k.startswith(stack)]
    if not scanned:
      continue
    layers = {tree[k].shape[0] for k in scanned}
    if len(layers) != 1:
      raise CheckpointMismatchError(f"{path}: the scanned {stack[:-1]} arrays disagree on the "
                                    f"layer count (leading axes {sorted(layers)})")
    for key in scanned:
      stacked = tree.pop(key)
      for i in range(stacked.shape[0]):
        tree[key.replace(stack, f"{stack[:-1]}_{i}/")] = stacked[i]
  old_pos = tree.pop("txt/Encoder_0/pos_embedding", None)
  if old_pos is not None and "txt/pos_embedding" in tree:
    # Old text towers added a second position embedding inside the encoder (big_vision's
    # text_transformer.load sums the two).
    tree["txt/pos_embedding"] = tree["txt/pos_embedding"] + old_pos
  return tree


def _big_vision_architecture(tree, path, vision_heads, text_heads) -> dict[str, Any]:
  for pattern, variant in _BIG_VISION_UNSUPPORTED:
    keys = [k for k in tree if re.search(pattern, k)]
    if keys:
      raise CheckpointMismatchError(f"{path} has {variant}: its key {keys[0]!r} has no place in "
                                    "mmjax's SigLIP; that variant is not supported")
  what = WHAT_BIG_VISION
  if "img/embedding/kernel" in tree and "img/pos_embedding" not in tree:
    raise CheckpointMismatchError(f"{path} has no img/pos_embedding (a sincos2d position "
                                  "embedding); only learned ones are supported")
  if "img/embedding/kernel" in tree and "img/MAPHead_0/probe" not in tree:
    raise CheckpointMismatchError(f"{path} has no img/MAPHead_0 (global average or other "
                                  "pooling); only SigLIP's MAP pooling is supported")
  patch, patch_w, channels, width = _shape(tree, "img/embedding/kernel", 4, what, path)
  if channels != 3 or patch != patch_w:
    raise CheckpointMismatchError(f"{path}: img/embedding/kernel has shape "
                                  f"{[patch, patch_w, channels, width]}, expected [p, p, 3, W]")
  grid = _grid(_shape(tree, "img/pos_embedding", 3, what, path)[1], "img/pos_embedding", path)
  vocab, text_width = _shape(tree, "txt/Embed_0/embedding", 2, what, path)
  attn = f"encoderblock_0/{_ATTENTION}/query/kernel"
  v_heads = _shape(tree, f"img/Transformer/{attn}", 3, what, path)[1]
  t_heads = _shape(tree, f"txt/Encoder_0/{attn}", 3, what, path)[1]
  for tower, given, found in (("vision", vision_heads, v_heads), ("text", text_heads, t_heads)):
    if given is not None and given != found:
      raise ValueError(f"{tower}_heads={given}, but the checkpoint's attention kernels have "
                       f"{found} heads")
  text_head = "txt/head/kernel" in tree
  embed_dim = _shape(tree, "txt/head/kernel", 2, what, path)[1] if text_head else text_width
  dense0 = "encoderblock_0/MlpBlock_0/Dense_0/kernel"
  return dict(
      embed_dim=embed_dim, vision_width=width, patch_size=patch, image_size=grid * patch,
      vision_layers=_layer_count(tree, "img/Transformer/encoderblock_"), vision_heads=v_heads,
      vision_mlp_dim=_shape(tree, f"img/Transformer/{dense0}", 2, what, path)[1],
      text_width=text_width, text_layers=_layer_count(tree, "txt/Encoder_0/encoderblock_"),
      text_heads=t_heads,
      text_mlp_dim=_shape(tree, f"txt/Encoder_0/{dense0}", 2, what, path)[1],
      context_length=_shape(tree, "txt/pos_embedding", 3, what, path)[1], vocab_size=vocab,
      text_head=text_head, gelu_approximate=True, layer_norm_epsilon=SIGLIP_LAYER_NORM_EPSILON)


def _big_vision_attention_shapes(prefix: str, width: int, heads: int) -> dict[str, tuple]:
  head_dim = width // heads
  shapes = {f"{prefix}/{name}/kernel": (width, heads, head_dim) for name in
            ("query", "key", "value")}
  shapes.update({f"{prefix}/{name}/bias": (heads, head_dim) for name in
                 ("query", "key", "value")})
  shapes.update({f"{prefix}/out/kernel": (heads, head_dim, width), f"{prefix}/out/bias": (width,)})
  return shapes


def _big_vision_mlp_shapes(prefix: str, width: int, mlp_dim: int) -> dict[str, tuple]:
  return {f"{prefix}/Dense_0/kernel": (width, mlp_dim), f"{prefix}/Dense_0/bias": (mlp_dim,),
          f"{prefix}/Dense_1/kernel": (mlp_dim, width), f"{prefix}/Dense_1/bias": (width,)}


def _big_vision_norm_shapes(prefix: str, width: int) -> dict[str, tuple]:
  return {f"{prefix}/scale": (width,), f"{prefix}/bias": (width,)}


def _big_vision_stack_shapes(prefix, width, heads, mlp_dim, layers) -> dict[str, tuple]:
  shapes = {}
  for i in range(layers):
    b = f"{prefix}/encoderblock_{i}"
    shapes.update({**_big_vision_norm_shapes(f"{b}/LayerNorm_0", width),
                   **_big_vision_attention_shapes(f"{b}/{_ATTENTION}", width, heads),
                   **_big_vision_norm_shapes(f"{b}/LayerNorm_1", width),
                   **_big_vision_mlp_shapes(f"{b}/MlpBlock_0", width, mlp_dim)})
  return {**shapes, **_big_vision_norm_shapes(f"{prefix}/encoder_norm", width)}


def expected_big_vision_shapes(arch: dict[str, Any]) -> dict[str, tuple[int, ...]]:
  """`{key: shape}` of big_vision's SigLIP tree (no "params/") for the architecture `arch`."""
  w, wt, p = arch["vision_width"], arch["text_width"], arch["patch_size"]
  grid = arch["image_size"] // p
  shapes = {
      "img/embedding/kernel": (p, p, 3, w), "img/embedding/bias": (w,),
      "img/pos_embedding": (1, grid * grid, w),
      **_big_vision_stack_shapes("img/Transformer", w, arch["vision_heads"],
                                 arch["vision_mlp_dim"], arch["vision_layers"]),
      "img/MAPHead_0/probe": (1, 1, w),
      **_big_vision_attention_shapes(f"img/MAPHead_0/{_ATTENTION}", w, arch["vision_heads"]),
      **_big_vision_norm_shapes("img/MAPHead_0/LayerNorm_0", w),
      **_big_vision_mlp_shapes("img/MAPHead_0/MlpBlock_0", w, arch["vision_mlp_dim"]),
      "txt/Embed_0/embedding": (arch["vocab_size"], wt),
      "txt/pos_embedding": (1, arch["context_length"], wt),
      **_big_vision_stack_shapes("txt/Encoder_0", wt, arch["text_heads"], arch["text_mlp_dim"],
                                 arch["text_layers"]),
      "t": (1,), "b": (1,),
  }
  if arch["text_head"]:
    shapes.update({"txt/head/kernel": (wt, arch["embed_dim"]), "txt/head/bias": (arch[
        "embed_dim"],)})
  return shapes


def _prepare_big_vision(state, path, vision_heads, text_heads):
  tree = _big_vision_flat(state, path)
  arch = _big_vision_architecture(tree, path, vision_heads, text_heads)
  for key in ("t", "b"):
    if key in tree and tree[key].shape == ():
      tree[key] = tree[key].reshape(1)
  expected = expected_big_vision_shapes(arch)
  require_keys(tree, expected, WHAT_BIG_VISION, path)
  extra = sorted(k for k in tree if k not in expected)
  if extra:
    raise CheckpointMismatchError(f"{path} has weights {WHAT_BIG_VISION} does not have: "
                                  f"{extra[:6]}; that variant is not supported")
  if not arch["text_head"]:
    # The i18n B/16-256 was trained without a text head: the pooled token is the embedding.
    tree["txt/head/kernel"] = np.eye(arch["text_width"], dtype=np.float32)
    tree["txt/head/bias"] = np.zeros(arch["text_width"], np.float32)
  return tree, arch


# ---------------------------------------------------------------- mmjax params and model


def _check_embedding_widths(arch, path) -> None:
  if arch["embed_dim"] != arch["vision_width"]:
    raise CheckpointMismatchError(
        f"{path}: the text head maps to {arch['embed_dim']} dimensions but the image embedding "
        f"(the MAP head's output) has the vision width {arch['vision_width']}; SigLIP's towers "
        "must meet in one width")


def _mmjax_attention(tree, prefix: str, self_attention: bool) -> dict[str, Any]:
  q, k, v = (tree[f"{prefix}/{name}/kernel"] for name in ("query", "key", "value"))
  qb, kb, vb = (tree[f"{prefix}/{name}/bias"] for name in ("query", "key", "value"))
  out = {"out": {"kernel": tree[f"{prefix}/out/kernel"], "bias": tree[f"{prefix}/out/bias"]}}
  if self_attention:
    return {"qkv": {"kernel": np.stack([q, k, v], axis=1), "bias": np.stack([qb, kb, vb])},
            **out}
  return {"query": {"kernel": q, "bias": qb},
          "kv": {"kernel": np.stack([k, v], axis=1), "bias": np.stack([kb, vb])}, **out}


def _mmjax_norm(tree, prefix: str) -> dict[str, np.ndarray]:
  return {"scale": tree[f"{prefix}/scale"], "bias": tree[f"{prefix}/bias"]}


def _mmjax_mlp(tree, prefix: str) -> dict[str, Any]:
  return {f"fc{i + 1}": {"kernel": tree[f"{prefix}/Dense_{i}/kernel"],
                         "bias": tree[f"{prefix}/Dense_{i}/bias"]} for i in range(2)}


def _mmjax_transformer(tree, prefix: str, layers: int) -> dict[str, Any]:
  params = {}
  for i in range(layers):
    b = f"{prefix}/encoderblock_{i}"
    params[f"block_{i}"] = {
        "ln_attn": _mmjax_norm(tree, f"{b}/LayerNorm_0"),
        "self_attn": _mmjax_attention(tree, f"{b}/{_ATTENTION}", self_attention=True),
        "ln_mlp": _mmjax_norm(tree, f"{b}/LayerNorm_1"),
        "mlp": _mmjax_mlp(tree, f"{b}/MlpBlock_0")}
  params["ln_final"] = _mmjax_norm(tree, f"{prefix}/encoder_norm")
  return params


def convert_params(tree: dict[str, np.ndarray], arch: dict[str, Any]) -> dict[str, Any]:
  """mmjax CLIP params (nested dict of float32 arrays) from a checked big_vision SigLIP tree."""
  kernel = tree["img/embedding/kernel"]  # [p, q, C, W]: rows in "(p q c)" order once flattened
  vision = {
      "patch_embed": {"kernel": kernel.reshape(-1, kernel.shape[-1]),
                      "bias": tree["img/embedding/bias"]},
      "pos_embed": tree["img/pos_embedding"][0],
      "transformer": _mmjax_transformer(tree, "img/Transformer", arch["vision_layers"]),
      "map_head": {
          "probe": tree["img/MAPHead_0/probe"],
          "attn": _mmjax_attention(tree, f"img/MAPHead_0/{_ATTENTION}", self_attention=False),
          "ln": _mmjax_norm(tree, "img/MAPHead_0/LayerNorm_0"),
          "mlp": _mmjax_mlp(tree, "img/MAPHead_0/MlpBlock_0")}}
  text = {
      "token_embed": {"embedding": tree["txt/Embed_0/embedding"]},
      "pos_embed": tree["txt/pos_embedding"][0],
      "transformer": _mmjax_transformer(tree, "txt/Encoder_0", arch["text_layers"])}
  params = {"image_encoder": vision, "text_encoder": text,
            "text_proj": {"kernel": tree["txt/head/kernel"], "bias": tree["txt/head/bias"]},
            "logit_scale": tree["t"].reshape(()), "logit_bias": tree["b"].reshape(())}
  return _as_float32(params)


def _as_float32(tree):
  if isinstance(tree, dict):
    return {k: _as_float32(v) for k, v in tree.items()}
  return np.array(tree, np.float32, order="C")


def _config(arch, logit_scale: float, logit_bias: float, dtype: str) -> dict[str, Any]:
  model = dict(
      name="clip", embed_dim=arch["embed_dim"], logit_scale_init=logit_scale,
      logit_bias_init=logit_bias, max_logit_scale=None, project_image=False,
      text_proj_bias=True, dtype=dtype, mlp_activation="gelu",
      gelu_approximate=arch["gelu_approximate"], layer_norm_epsilon=arch["layer_norm_epsilon"],
      image_encoder=dict(name="vision_transformer", patch_size=arch["patch_size"],
                         width=arch["vision_width"], num_layers=arch["vision_layers"],
                         num_heads=arch["vision_heads"],
                         mlp_ratio=mlp_ratio_of(arch["vision_width"], arch["vision_mlp_dim"]),
                         pool="map", class_token=False, pre_norm=False),
      text_encoder=dict(name="text_transformer", width=arch["text_width"],
                        num_layers=arch["text_layers"], num_heads=arch["text_heads"],
                        mlp_ratio=mlp_ratio_of(arch["text_width"], arch["text_mlp_dim"]),
                        causal=False, padding_mask=False, pool="last"))
  text_fields = dict(vocab_size=arch["vocab_size"], context_length=arch["context_length"],
                     pad_id=SIGLIP_PAD_ID, eos_id=SIGLIP_EOS_ID)
  return dict(model=model, text_tower_fields=text_fields, image_size=arch["image_size"],
              context_length=arch["context_length"], vocab_size=arch["vocab_size"],
              image_mean=SIGLIP_MEAN, image_std=SIGLIP_STD)


def _prepare(state, path: pathlib.Path, vision_heads, text_heads):
  """(big_vision tree, architecture) of either layout, every key and shape checked."""
  keys = list(strip_prefixes(state))
  if any(k.startswith(("vision_model.", "text_model.")) for k in keys):
    tree, arch = _prepare_hf(state, path, _hf_config(path), vision_heads, text_heads)
  elif any(_big_vision_key(k).startswith(("img/", "txt/")) for k in state):
    tree, arch = _prepare_big_vision(state, path, vision_heads, text_heads)
  else:
    raise CheckpointMismatchError(
        f"{path} is neither {WHAT_HF} (vision_model.* / text_model.* keys) nor {WHAT_BIG_VISION} "
        f"(params/img/*, params/txt/*); it has {len(keys)} keys, e.g. {sorted(keys)[:4]}")
  _check_embedding_widths(arch, path)
  return tree, arch


def siglip_config_from_state_dict(state: dict[str, np.ndarray], *,
                                  vision_heads: int | None = None,
                                  text_heads: int | None = None,
                                  dtype: str = "float32") -> dict[str, Any]:
  """What a config needs to build the SigLIP a state dict (either layout) holds.

  Returns `{"model", "text_tower_fields", "image_size", "context_length", "vocab_size",
  "image_mean", "image_std"}` as `clip_config_from_state_dict` does (pad_id = eos_id = 1).
  A Hugging Face state dict given here has no config.json: its heads come from the arguments
  or the width (see `load_siglip`).
  """
  path = pathlib.Path("the state dict")
  tree, arch = _prepare(state, path, vision_heads, text_heads)
  return _config(arch, float(tree["t"].reshape(())), float(tree["b"].reshape(())), dtype)


def load_siglip(path: str | pathlib.Path, *, vision_heads: int | None = None,
                text_heads: int | None = None, dtype: str = "float32"
                ) -> tuple[Any, dict[str, Any]]:
  """A SigLIP checkpoint (HF `SiglipModel` `.safetensors`, big_vision `.npz`) as `(model, params)`.

  Args:
    path: the checkpoint; pickles (`.pt`, `.bin`) are refused with the conversion command.
    vision_heads, text_heads: attention heads. big_vision kernels show them (a different value
      is a ValueError); for Hugging Face weights they come from the `config.json` beside the
      file when there is one, else from the width (width // 64; 16 for So400m's 1152 and
      giant-opt's 1536).
    dtype: compute dtype of the model ("float32" / "bfloat16"); params are float32.

  Returns:
    model: `mmjax.models.clip.CLIP` built by `build_model` (see the module docstring);
    params: nested dict of float32 NumPy arrays, for
      `model.apply({"params": params}, images [B, S, S, 3], method=model.encode_image)` (S the
      checkpoint's image size) and `method=model.encode_text` on token ids `[B, L]`;
      `method=model.image_features / text_features` give HF's get_image_features /
      get_text_features (not normalised), and `method=model.logit_params` the (unclipped)
      logit_scale and logit_bias: logits = exp(logit_scale) * cos + logit_bias.

  Inputs as SigLIP was trained:
    images: resized to S x S (HF's processor: bicubic, no crop), then
      `normalize_images(images, SIGLIP_MEAN, SIGLIP_STD)`, i.e. [0, 1] -> [-1, 1]. S is
      patches x patch size: 378 for So400m/14-384, whose 384 px input loses its last 6 rows
      and columns to the valid convolution (pass `images[:, :378, :378]` for HF's numbers).
    text: the model's own spiece.model through
      `mmjax.data.sentencepiece_tokenizer.SentencePieceTokenizer(spiece_path, add_bos=False,
      add_eos=True, pad_id=SIGLIP_PAD_ID)`
      and `encode_batch(texts, context_length)` (64 for most models, 16 for So400m/14-224):
      ids, then </s> (id 1), padded with 1 to the full length, which the model needs (it pools
      the last position and attends to the padding). That is what HF's SiglipTokenizer with
      `padding="max_length"` gives (eos appended, pad_token "</s>"), and big_vision's
      `tokenize(eos="sticky", pad_value=1)`. Pass pad_id=1 explicitly: SentencePieceTokenizer
      otherwise pads with the model file's own pad (or unk) piece. HF's tokenizer also lowercases the text and strips punctuation
      first (`canonicalize_text`): do the same for identical ids.
  """
  path = pathlib.Path(path)
  state, _ = read_state_dict_with_metadata(path)
  tree, arch = _prepare(state, path, vision_heads, text_heads)
  config = _config(arch, float(tree["t"].reshape(())), float(tree["b"].reshape(())), dtype)
  model = build_model(config["model"], text_encoder=config["text_tower_fields"])
  params = convert_params(tree, arch)
  check_clip_tree(params, model, arch["image_size"], arch["context_length"])
  return model, params
