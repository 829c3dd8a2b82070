"""open_clip / OpenAI CLIP ViT checkpoints as mmjax's own `CLIP`: `load_clip(path)`.

The architecture is read off the tensor shapes (widths, layer counts, patch and image size,
MLP width, context length, vocabulary, embedding width), the model is built through
`mmjax.models.build_model` (the class users train) and the weights are mapped onto its params:

  visual.conv1.weight [W, 3, p, p]     -> image_encoder/patch_embed kernel [p*p*3, W] (the rows
                                          in mmjax's "(p q c)" patch order), bias zeros
  visual.class_embedding / positional_embedding -> image_encoder/cls_token / pos_embed
  visual.ln_pre / ln_post              -> image_encoder/ln_pre / transformer/ln_final (open_clip
                                          pools token 0 after ln_post; mmjax pools token 0 of
                                          its ln_final output: the same vector)
  [visual.]transformer.resblocks.i.    -> transformer/block_i/
    ln_1, ln_2                         -> ln_attn, ln_mlp
    attn.in_proj_weight/bias [3W, W]   -> self_attn/qkv kernel [W, 3, heads, head_dim] / bias
    attn.out_proj                      -> self_attn/out kernel [heads, head_dim, W]
    mlp.c_fc, mlp.c_proj               -> mlp/fc1, mlp/fc2
  visual.proj [W, E], text_projection [Wt, E] -> image_proj / text_proj kernels
  token_embedding, positional_embedding, ln_final -> text_encoder/token_embed, pos_embed,
                                          transformer/ln_final
  logit_scale (log)                    -> logit_scale

The text tower is causal and pools at the first token `vocab_size - 1` (OpenAI's
<|endoftext|>, the largest id, which is where open_clip's argmax(ids) lands); LayerNorm eps is
PyTorch's 1e-5 and GELU the exact erf form, or QuickGELU for OpenAI's weights (`quick_gelu`).

Attention heads leave no trace in the weights (the fused in_proj is [3W, W] for any count):
they default to width // 64, as every open_clip config's text tower and OpenAI's towers, with
open_clip's ViT-H/g/bigG/e vision towers (head_width 80/88/104/112: 16 heads) looked up by
width; pass `vision_heads` / `text_heads` for anything else.

Only the plain ViT/transformer CLIP is supported: ModifiedResNet (RN50...), timm or Hugging
Face towers, layer scale, attentional pooling, CoCa, a text class token, a biased text
projection and CLIPA's missing ln_pre are refused with the variant named.
"""
from __future__ import annotations

import math
import pathlib
import re
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.convert.state_dict import (check_converted_tree, read_state_dict_with_metadata,
                                      require_keys)
from mmjax.errors import CheckpointMismatchError
from mmjax.models.registry import build_model

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
OPEN_CLIP_LAYER_NORM_EPSILON = 1e-5
# Safetensors "__metadata__" key a converter may write: "quick_gelu" or "gelu".
ACTIVATION_METADATA_KEY = "mlp_activation"
HEAD_WIDTH = 64
VISION_HEADS_BY_WIDTH = {1280: 16, 1408: 16, 1664: 16, 1792: 16}
# Path parts that mark OpenAI's QuickGELU weights (open_clip's "openai" pretrained tag, its
# "-quickgelu" model names).
QUICK_GELU_NAME_MARKS = ("openai", "quickgelu")
WHAT = "an open_clip / OpenAI CLIP ViT"

_PREFIXES = ("state_dict.", "module.")
_IGNORED_KEYS = ("attn_mask", "visual.attn_mask", "transformer.attn_mask")
# key pattern -> the open_clip variant it belongs to.
_UNSUPPORTED = (
    (r"^visual\.(layer1|attnpool|bn1)\.", "a ModifiedResNet visual tower (RN50, RN101...); "
     "only ViT towers are supported"),
    (r"^visual\.trunk\.", "a timm visual tower (ConvNeXt, ...); only ViT towers are supported"),
    (r"^text\.", "a Hugging Face text tower (RoBERTa, mT5, ...)"),
    (r"^text_decoder\.", "a CoCa model"),
    (r"\.ls_[12]\.", "layer scale (ls_init_value)"),
    (r"^visual\.attn_pool", "attentional pooling"),
    (r"(^|\.)cls_emb$", "a text class token (embed_cls)"),
    (r"^text_projection\.(weight|bias)$", "a biased nn.Linear text projection (proj_bias)"),
    (r"^logit_bias$", "a learned logit bias (SigLIP-style open_clip models)"),
    (r"\.(ln_q|ln_k|ln_inner|ln_attn)\.|\.mlp\.ln\.|\.attn\.(head_scale|logit_scale)$",
     "a custom attention block (qk_norm, scale_attn, scaled cosine attention, ...)"),
)


def normalize_images(images: Any, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD) -> jax.Array:
  """Images `[..., H, W, 3]` (uint8 0..255, or float in [0, 1]) -> `(x - mean) / std` float32.

  `mean` / `std` default to OpenAI's, which open_clip's ViT checkpoints also use.
  """
  images = jnp.asarray(images)
  if images.ndim < 3 or images.shape[-1] != 3:
    raise ValueError(f"images must be [..., H, W, 3] (RGB, channels last), got shape "
                     f"{images.shape}")
  scale = 1 / 255 if images.dtype == jnp.uint8 else 1.0
  images = images.astype(jnp.float32) * scale
  return (images - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def strip_prefixes(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Keys without leading "state_dict." / "module." (DataParallel / Lightning wrappers)."""
  out = {}
  for key, value in state.items():
    while key.startswith(_PREFIXES):
      key = key.split(".", 1)[1]
    out[key] = value
  return out


def _layer_count(state, prefix: str) -> int:
  indices = {int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}(\d+)\.", k))}
  return max(indices) + 1 if indices else 0


def _shape(state, key: str, ndim: int, path) -> tuple[int, ...]:
  if key not in state:
    raise CheckpointMismatchError(f"{path} does not fit {WHAT}: missing {key} (it has "
                                  f"{len(state)} keys, e.g. {sorted(state)[:4]})")
  shape = tuple(state[key].shape)
  if len(shape) != ndim:
    raise CheckpointMismatchError(f"{path} does not fit {WHAT}: {key} has shape {list(shape)}, "
                                  f"expected {ndim} dimensions")
  return shape


def _heads(width: int, heads: int | None, default: int, tower: str) -> int:
  heads = default if heads is None else heads
  if heads < 1 or width % heads:
    raise ValueError(f"{tower} width {width} cannot be split into {heads} attention heads (the "
                     f"weights do not show the head count); pass {tower}_heads=<a divisor of "
                     f"{width}>")
  return heads


def mlp_ratio_of(width: int, mlp_dim: int) -> float:
  """A ratio with int(width * ratio) == mlp_dim, as the towers compute their MLP width."""
  ratio = mlp_dim / width
  return ratio if int(width * ratio) == mlp_dim else (mlp_dim + 0.5) / width


def _check_variant(state, path) -> None:
  for pattern, variant in _UNSUPPORTED:
    keys = [k for k in state if re.search(pattern, k)]
    if keys:
      raise CheckpointMismatchError(f"{path} is {variant}: its key {keys[0]!r} has no place in "
                                    f"mmjax's CLIP; that variant is not supported")
  if "visual.conv1.weight" in state and "visual.ln_pre.weight" not in state:
    raise CheckpointMismatchError(f"{path} has no visual.ln_pre (a no_ln_pre / CLIPA tower); "
                                  "that variant is not supported")


def _architecture(state, path, vision_heads, text_heads) -> dict[str, int | float]:
  """The shapes' facts: widths, layers, heads, patch/image size, MLP ratios, text sizes."""
  width, channels, patch, patch_w = _shape(state, "visual.conv1.weight", 4, path)
  if channels != 3 or patch != patch_w:
    raise CheckpointMismatchError(f"{path}: visual.conv1.weight has shape "
                                  f"{[width, channels, patch, patch_w]}, expected [width, 3, p, p] "
                                  "(square RGB patches)")
  tokens, _ = _shape(state, "visual.positional_embedding", 2, path)
  grid = math.isqrt(tokens - 1)
  if grid * grid != tokens - 1:
    raise CheckpointMismatchError(f"{path}: visual.positional_embedding has {tokens} rows, "
                                  "expected 1 + a square number of patches")
  text_width = _shape(state, "token_embedding.weight", 2, path)[1]
  vision_mlp = _shape(state, "visual.transformer.resblocks.0.mlp.c_fc.weight", 2, path)[0]
  text_mlp = _shape(state, "transformer.resblocks.0.mlp.c_fc.weight", 2, path)[0]
  return dict(
      embed_dim=_shape(state, "visual.proj", 2, path)[1],
      vision_width=width, vision_layers=_layer_count(state, "visual.transformer.resblocks."),
      vision_heads=_heads(width, vision_heads,
                          VISION_HEADS_BY_WIDTH.get(width, width // HEAD_WIDTH), "vision"),
      vision_mlp_ratio=mlp_ratio_of(width, vision_mlp), patch_size=patch, image_size=grid * patch,
      text_width=text_width, text_layers=_layer_count(state, "transformer.resblocks."),
      text_heads=_heads(text_width, text_heads, text_width // HEAD_WIDTH, "text"),
      text_mlp_ratio=mlp_ratio_of(text_width, text_mlp),
      context_length=_shape(state, "positional_embedding", 2, path)[0],
      vocab_size=state["token_embedding.weight"].shape[0])


def _block_shapes(prefix: str, width: int, mlp_dim: int, layers: int) -> dict[str, tuple]:
  shapes = {}
  for i in range(layers):
    p = f"{prefix}{i}."
    shapes.update({
        p + "ln_1.weight": (width,), p + "ln_1.bias": (width,),
        p + "attn.in_proj_weight": (3 * width, width), p + "attn.in_proj_bias": (3 * width,),
        p + "attn.out_proj.weight": (width, width), p + "attn.out_proj.bias": (width,),
        p + "ln_2.weight": (width,), p + "ln_2.bias": (width,),
        p + "mlp.c_fc.weight": (mlp_dim, width), p + "mlp.c_fc.bias": (mlp_dim,),
        p + "mlp.c_proj.weight": (width, mlp_dim), p + "mlp.c_proj.bias": (width,)})
  return shapes


def expected_shapes(arch: dict[str, Any]) -> dict[str, tuple[int, ...]]:
  """`{key: shape}` of open_clip's ViT CLIP state dict for the architecture `arch`."""
  w, wt, e = arch["vision_width"], arch["text_width"], arch["embed_dim"]
  p, grid = arch["patch_size"], arch["image_size"] // arch["patch_size"]
  return {
      "visual.conv1.weight": (w, 3, p, p), "visual.class_embedding": (w,),
      "visual.positional_embedding": (grid * grid + 1, w),
      "visual.ln_pre.weight": (w,), "visual.ln_pre.bias": (w,),
      **_block_shapes("visual.transformer.resblocks.", w, int(w * arch["vision_mlp_ratio"]),
                      arch["vision_layers"]),
      "visual.ln_post.weight": (w,), "visual.ln_post.bias": (w,), "visual.proj": (w, e),
      "token_embedding.weight": (arch["vocab_size"], wt),
      "positional_embedding": (arch["context_length"], wt),
      **_block_shapes("transformer.resblocks.", wt, int(wt * arch["text_mlp_ratio"]),
                      arch["text_layers"]),
      "ln_final.weight": (wt,), "ln_final.bias": (wt,), "text_projection": (wt, e),
      "logit_scale": (),
  }


def _prepare(state, path, vision_heads, text_heads):
  """(state without prefixes, architecture), after every key and shape was checked."""
  state = strip_prefixes(state)
  _check_variant(state, path)
  arch = _architecture(state, path, vision_heads, text_heads)
  expected = expected_shapes(arch)
  if state.get("logit_scale") is not None and state["logit_scale"].shape == (1,):
    state["logit_scale"] = state["logit_scale"].reshape(())  # nonscalar_logit_scale
  require_keys(state, expected, WHAT, path)
  extra = sorted(k for k in state if k not in expected and k not in _IGNORED_KEYS)
  if extra:
    raise CheckpointMismatchError(f"{path} has weights {WHAT} does not have: {extra[:6]}; that "
                                  "variant is not supported")
  return state, arch


def clip_config_from_state_dict(state: dict[str, np.ndarray], *, quick_gelu: bool,
                                vision_heads: int | None = None, text_heads: int | None = None,
                                dtype: str = "float32") -> dict[str, Any]:
  """What a config needs to build the CLIP a state dict holds.

  Returns:
    "model": the registry dict (name="clip", embed_dim, logit_scale_init, image_encoder,
      text_encoder, and the shared settings mlp_activation, gelu_approximate=False,
      layer_norm_epsilon=1e-5, dtype) without the data's fields;
    "text_tower_fields": those fields (vocab_size, context_length, pad_id=0,
      eos_id=vocab_size-1), for `build_model(model, text_encoder=text_tower_fields)`;
    "image_size", "context_length", "vocab_size", "image_mean", "image_std": data facts.
  """
  state, arch = _prepare(state, "the state dict", vision_heads, text_heads)
  return _config(arch, float(state["logit_scale"]), quick_gelu, dtype)


def _config(arch, logit_scale: float, quick_gelu: bool, dtype: str) -> dict[str, Any]:
  model = dict(
      name="clip", embed_dim=arch["embed_dim"], logit_scale_init=logit_scale, dtype=dtype,
      mlp_activation="quick_gelu" if quick_gelu else "gelu", gelu_approximate=False,
      layer_norm_epsilon=OPEN_CLIP_LAYER_NORM_EPSILON,
      image_encoder=dict(name="vision_transformer", patch_size=arch["patch_size"],
                         width=arch["vision_width"], num_layers=arch["vision_layers"],
                         num_heads=arch["vision_heads"], mlp_ratio=arch["vision_mlp_ratio"],
                         pool="cls"),
      text_encoder=dict(name="text_transformer", width=arch["text_width"],
                        num_layers=arch["text_layers"], num_heads=arch["text_heads"],
                        mlp_ratio=arch["text_mlp_ratio"], causal=True, pool="eos"))
  text_fields = dict(vocab_size=arch["vocab_size"], context_length=arch["context_length"],
                     pad_id=0, eos_id=arch["vocab_size"] - 1)
  return dict(model=model, text_tower_fields=text_fields, image_size=arch["image_size"],
              context_length=arch["context_length"], vocab_size=arch["vocab_size"],
              image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)


def _transformer_params(state, prefix: str, layers: int, heads: int) -> dict[str, Any]:
  def ln(name):
    return {"scale": state[name + ".weight"], "bias": state[name + ".bias"]}

  def linear(name):  # torch Linear weight [out, in] -> Dense kernel [in, out]
    return {"kernel": state[name + ".weight"].T, "bias": state[name + ".bias"]}

  params = {}
  for i in range(layers):
    p = f"{prefix}{i}."
    in_proj = state[p + "attn.in_proj_weight"]  # [3W, W] rows: q, k, v; heads within each
    width = in_proj.shape[1]
    head_dim = width // heads
    out_proj = state[p + "attn.out_proj.weight"]  # [W_out, W_in], W_in = (heads, head_dim)
    params[f"block_{i}"] = {
        "ln_attn": ln(p + "ln_1"),
        "self_attn": {
            "qkv": {"kernel": in_proj.reshape(3, heads, head_dim, width).transpose(3, 0, 1, 2),
                    "bias": state[p + "attn.in_proj_bias"].reshape(3, heads, head_dim)},
            "out": {"kernel": out_proj.T.reshape(heads, head_dim, width),
                    "bias": state[p + "attn.out_proj.bias"]}},
        "ln_mlp": ln(p + "ln_2"),
        "mlp": {"fc1": linear(p + "mlp.c_fc"), "fc2": linear(p + "mlp.c_proj")}}
  return params


def convert_params(state: dict[str, np.ndarray], arch: dict[str, Any]) -> dict[str, Any]:
  """mmjax CLIP params (nested dict of float32 arrays) from a checked open_clip state dict."""
  conv = state["visual.conv1.weight"]  # [W, C, p, q]
  vision = {
      "patch_embed": {"kernel": conv.transpose(2, 3, 1, 0).reshape(-1, conv.shape[0]),
                      "bias": np.zeros(conv.shape[0], np.float32)},
      "cls_token": state["visual.class_embedding"],
      "pos_embed": state["visual.positional_embedding"],
      "ln_pre": {"scale": state["visual.ln_pre.weight"], "bias": state["visual.ln_pre.bias"]},
      "transformer": {
          **_transformer_params(state, "visual.transformer.resblocks.", arch["vision_layers"],
                                arch["vision_heads"]),
          "ln_final": {"scale": state["visual.ln_post.weight"],
                       "bias": state["visual.ln_post.bias"]}}}
  text = {
      "token_embed": {"embedding": state["token_embedding.weight"]},
      "pos_embed": state["positional_embedding"],
      "transformer": {
          **_transformer_params(state, "transformer.resblocks.", arch["text_layers"],
                                arch["text_heads"]),
          "ln_final": {"scale": state["ln_final.weight"], "bias": state["ln_final.bias"]}}}
  params = {"image_encoder": vision, "text_encoder": text,
            "image_proj": {"kernel": state["visual.proj"]},
            "text_proj": {"kernel": state["text_projection"]},
            "logit_scale": state["logit_scale"].reshape(())}
  return jax.tree.map(lambda a: np.array(a, np.float32, order="C"), params)


def quick_gelu_from_checkpoint(path: pathlib.Path, metadata: dict[str, str]) -> bool:
  """QuickGELU or not, from the metadata key, else the path's name; a note when neither tells."""
  if ACTIVATION_METADATA_KEY in metadata:
    value = metadata[ACTIVATION_METADATA_KEY]
    if value not in ("quick_gelu", "gelu"):
      raise CheckpointMismatchError(f"{path}: metadata {ACTIVATION_METADATA_KEY}={value!r}, "
                                    "expected 'quick_gelu' or 'gelu'")
    return value == "quick_gelu"
  # The last four parts reach the repository folder of a Hugging Face hub cache
  # (models--timm--vit_base_patch32_clip_224.openai/snapshots/<hash>/<file>).
  parts = [part.lower() for part in path.resolve().parts[-4:]]
  if any(mark in part for part in parts for mark in QUICK_GELU_NAME_MARKS):
    return True
  print(f"mmjax: note: cannot tell whether {path} was trained with QuickGELU (OpenAI's weights) "
        f"or GELU: no {ACTIVATION_METADATA_KEY!r} metadata and no "
        f"{' / '.join(QUICK_GELU_NAME_MARKS)} in its name; using exact GELU (open_clip's "
        "non-OpenAI models). Pass load_clip(..., quick_gelu=True) for OpenAI weights",
        file=sys.stderr)
  return False


def check_clip_tree(params, model, image_size: int, context_length: int) -> None:
  """Raises if `params` is not exactly the CLIP `model.init`'s tree: a converter bug."""
  check_converted_tree(params, model, (jnp.zeros((1, image_size, image_size, 3), jnp.float32),
                                       jnp.zeros((1, context_length), jnp.int32)), "CLIP")


def load_clip(path: str | pathlib.Path, *, quick_gelu: bool | None = None,
              vision_heads: int | None = None, text_heads: int | None = None,
              dtype: str = "float32") -> tuple[Any, dict[str, Any]]:
  """An open_clip / OpenAI CLIP ViT `.safetensors` (or `.npz`) as `(model, params)`.

  Args:
    path: the state dict; pickles (`.pt`, `.bin`) are refused with the conversion command.
    quick_gelu: the MLP nonlinearity (True: OpenAI's weights). None decides from the
      safetensors metadata "mlp_activation" ("quick_gelu" / "gelu"), else from "openai" or
      "quickgelu" in the file or folder name, else exact GELU with a `mmjax: note:` on stderr.
    vision_heads, text_heads: attention heads (default: see the module docstring).
    dtype: compute dtype of the model ("float32" / "bfloat16"); params are float32.

  Returns:
    model: `mmjax.models.clip.CLIP` built by `build_model`;
    params: nested dict of float32 NumPy arrays, for
      `model.apply({"params": params}, images [B, S, S, 3], method=model.encode_image)` with
      images normalised as `normalize_images` does, and `method=model.encode_text` on token
      ids `[B, L <= context_length]` (OpenAI's BPE: <|endoftext|> = vocab_size - 1).
  """
  path = pathlib.Path(path)
  state, metadata = read_state_dict_with_metadata(path)
  state, arch = _prepare(state, path, vision_heads, text_heads)
  if quick_gelu is None:
    quick_gelu = quick_gelu_from_checkpoint(path, metadata)
  config = _config(arch, float(state["logit_scale"]), quick_gelu, dtype)
  model = build_model(config["model"], text_encoder=config["text_tower_fields"])
  params = convert_params(state, arch)
  check_clip_tree(params, model, arch["image_size"], arch["context_length"])
  return model, params
