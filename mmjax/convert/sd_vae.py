"""Stable Diffusion's VAE (a diffusers `AutoencoderKL` safetensors) as mmjax's `KLAutoencoder`.

    model, params, scaling_factor = load_sd_vae("sd-vae/diffusion_pytorch_model.safetensors")
    posterior = model.apply({"params": params}, images, method=KLAutoencoder.encode)
    images = model.apply({"params": params}, posterior.mode(), method=KLAutoencoder.decode)
    latents = model.apply({"params": params}, images, method=KLAutoencoder.to_latents)

Images are NHWC in [-1, 1] (diffusers' NCHW transposed). The model is `KLAutoencoder(layout=
"sd")` (Stable Diffusion's blocks: see `mmjax.nn.autoencoder`), built through `build_model`,
with `scaling_factor` set. The architecture is read off the tensor shapes:
  channels (block_out_channels)   encoder.down_blocks.i.resnets.0.conv1.weight [C_i, ...]
  num_res_blocks (layers_per_block) the count of encoder.down_blocks.0.resnets.j
  latent_channels                 decoder.conv_in.weight [C, latent, 3, 3]
  in_channels                     encoder.conv_in.weight (decoder.conv_out must match)
  mid_attention                   encoder.mid_block.attentions.0 present or not
GroupNorm groups leave no trace in the shapes: `num_groups`, else the `norm_num_groups` of a
diffusers config.json beside the weights, else 32 (every released SD / SDXL VAE).

Key mapping (diffusers -> mmjax params):
  encoder.conv_in / conv_norm_out / conv_out  -> encoder/conv_in / norm_out / conv_out
  encoder.down_blocks.i.resnets.j             -> encoder/down_i_res_j: norm1, conv1, norm2,
                                                 conv2, conv_shortcut -> skip
  encoder.down_blocks.i.downsamplers.0.conv   -> encoder/down_i_downsample
  {en,de}coder.mid_block.resnets.k            -> {en,de}coder/mid/res_k
  {en,de}coder.mid_block.attentions.0         -> .../mid/attn: group_norm -> norm; to_q, to_k,
                                                 to_v -> attention/qkv; to_out.0 -> attention/out
                                                 (old names query / key / value / proj_attn
                                                 and 1x1-conv weights [C, C, 1, 1] accepted)
  quant_conv, post_quant_conv                 -> quant_conv, post_quant_conv
  decoder.conv_in / conv_norm_out / conv_out  -> decoder/conv_in / norm_out / conv_out
  decoder.up_blocks.i.resnets.j, .upsamplers.0.conv -> decoder/up_l_res_j, up_l_upsample with
                                                 l = levels - 1 - i (diffusers numbers its up
                                                 blocks from the lowest resolution)
Conv weights [O, I, kh, kw] -> kernels [kh, kw, I, O]; Linear [O, I] -> [I, (heads, head_dim)];
GroupNorm weight -> scale. The VAE's attention has one head (diffusers sets its head width to
the channel count).

Scaling factor (what a latent diffusion model multiplies z by), first that applies:
  1. `scaling_factor`: a number, or "sd" (0.18215, SD 1.x / 2.x) / "sdxl" (0.13025);
  2. the safetensors metadata key "scaling_factor";
  3. "scaling_factor" of a diffusers config.json beside the weights (save_pretrained's folder);
  4. 0.18215 for 4 latent channels, with a `mmjax: note:` on stderr: SDXL's VAE has exactly the
     same shapes as SD 1's, so the right value cannot be read off the weights.
Other latent widths with no factor given are a ValueError.

Refused with the reason: pickles (see `read_state_dict`), the original CompVis / ldm key layout
(encoder.down.0.block.0...), missing or extra weights, and wrong shapes (CheckpointMismatchError
listing the first ones).
"""
from __future__ import annotations

import json
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
from mmjax.errors import CheckpointMismatchError, DataError
from mmjax.models.registry import build_model

WHAT = "a diffusers AutoencoderKL (Stable Diffusion VAE)"
SCALING_FACTORS = {"sd": 0.18215, "sdxl": 0.13025}
SCALING_FACTOR_METADATA_KEY = "scaling_factor"
DEFAULT_NUM_GROUPS = 32
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # what diffusers' save_pretrained writes
_ATTENTION_HEADS = 1
_LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v",
                           "proj_attn": "to_out.0"}
_ATTENTION_LINEARS = ("to_q", "to_k", "to_v", "to_out.0")
_FROM_SINGLE_FILE_HINT = (
    "convert it once with diffusers: `diffusers.AutoencoderKL.from_single_file(PATH)"
    ".save_pretrained(DIR, safe_serialization=True)`")


def _weights_path(path: pathlib.Path) -> pathlib.Path:
  """The weights file `path` names: itself, or in a folder the one diffusers writes."""
  if not path.is_dir():
    return path
  candidates = sorted(path.glob("*.safetensors"))
  if path / WEIGHTS_NAME in candidates:
    return path / WEIGHTS_NAME
  if len(candidates) == 1:
    return candidates[0]
  raise FileNotFoundError(f"{path} is a folder without {WEIGHTS_NAME} and with "
                          f"{len(candidates)} other .safetensors files "
                          f"{[c.name for c in candidates]}; pass the weights file itself")


def _diffusers_config(weights: pathlib.Path) -> dict[str, Any]:
  """The AutoencoderKL config.json beside `weights` ({} when there is none)."""
  config_path = weights.parent / "config.json"
  if not config_path.is_file():
    return {}
  try:
    config = json.loads(config_path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f"{config_path} (beside {weights.name}) is not readable JSON ({e})") from None
  is_vae = isinstance(config, dict) and config.get("_class_name") == "AutoencoderKL"
  return config if is_vae else {}


def _modern_attention_names(state: dict[str, np.ndarray], path) -> dict[str, np.ndarray]:
  """Old attention names (query, key, value, proj_attn) renamed to to_q / to_k / to_v /
  to_out.0, and their 1x1-conv weights `[C, C, 1, 1]` squeezed to Linear `[C, C]`."""
  out = {}
  for key, value in state.items():
    match = re.fullmatch(r"(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)", key)
    if match:
      key = f"{match[1]}.{_LEGACY_ATTENTION_NAMES[match[2]]}.{match[3]}"
    if key in out:
      raise CheckpointMismatchError(f"{path} holds {key} under both the old and the current "
                                    "attention names; expected one of them")
    linear = re.search(r"\.attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$", key)
    if linear and value.ndim == 4 and value.shape[2:] == (1, 1):
      value = value[:, :, 0, 0]
    out[key] = value
  return out


def _count(state, prefix: str) -> int:
  indices = {int(m[1]) for k in state if (m := re.match(rf"{re.escape(prefix)}(\d+)\.", k))}
  return max(indices) + 1 if indices else 0


def _shape(state, key: str, path) -> tuple[int, ...]:
  if key not in state:
    raise CheckpointMismatchError(f"{path} does not fit {WHAT}: missing {key} (it has "
                                  f"{len(state)} keys, e.g. {sorted(state)[:4]})")
  shape = tuple(state[key].shape)
  if len(shape) != 4:
    raise CheckpointMismatchError(f"{path} does not fit {WHAT}: {key} has shape {list(shape)}, "
                                  "expected a conv weight [O, I, kh, kw]")
  return shape


def _architecture(state, path) -> dict[str, Any]:
  """KLAutoencoder fields the shapes fix: channels, num_res_blocks, latent/in channels, ..."""
  if "encoder.down.0.block.0.norm1.weight" in state or any(
      k.startswith("first_stage_model.") for k in state):
    raise CheckpointMismatchError(
        f"{path} is in the original CompVis / ldm layout (encoder.down.0.block...), not "
        f"diffusers'; {_FROM_SINGLE_FILE_HINT.replace('PATH', repr(str(path)))}")
  levels = _count(state, "encoder.down_blocks.")
  channels = tuple(_shape(state, f"encoder.down_blocks.{i}.resnets.0.conv1.weight", path)[0]
                   for i in range(max(levels, 1)))
  in_channels = _shape(state, "encoder.conv_in.weight", path)[1]
  out_channels = _shape(state, "decoder.conv_out.weight", path)[0]
  if out_channels != in_channels:
    raise CheckpointMismatchError(f"{path} encodes {in_channels}-channel images but decodes "
                                  f"{out_channels} channels; mmjax's KLAutoencoder decodes to its "
                                  "in_channels")
  return dict(channels=channels, num_res_blocks=_count(state, "encoder.down_blocks.0.resnets."),
              latent_channels=_shape(state, "decoder.conv_in.weight", path)[1],
              in_channels=in_channels,
              mid_attention=any(k.startswith("encoder.mid_block.attentions.0.") for k in state))


def _entries(arch) -> list[tuple[str, tuple[str, ...], str, tuple[int, ...]]]:
  """`(diffusers prefix, mmjax module path, kind, weight shape)` for every layer; kind is
  "conv" (weight [O, I, k, k] + bias), "norm" (weight, bias [C]) or "attention" (four Linears)."""
  ch, blocks, latent = arch["channels"], arch["num_res_blocks"], arch["latent_channels"]
  entries = []

  def conv(prefix, path, out, cin, k=3):
    entries.append((prefix, path, "conv", (out, cin, k, k)))

  def norm(prefix, path, width):
    entries.append((prefix, path, "norm", (width,)))

  def resnet(prefix, path, cin, cout):
    norm(f"{prefix}.norm1", path + ("norm1",), cin)
    conv(f"{prefix}.conv1", path + ("conv1",), cout, cin)
    norm(f"{prefix}.norm2", path + ("norm2",), cout)
    conv(f"{prefix}.conv2", path + ("conv2",), cout, cout)
    if cin != cout:
      conv(f"{prefix}.conv_shortcut", path + ("skip",), cout, cin, 1)

  def middle(coder):
    width, mid = ch[-1], f"{coder}.mid_block"
    resnet(f"{mid}.resnets.0", (coder, "mid", "res_0"), width, width)
    if arch["mid_attention"]:
      norm(f"{mid}.attentions.0.group_norm", (coder, "mid", "attn", "norm"), width)
      entries.append((f"{mid}.attentions.0", (coder, "mid", "attn", "attention"), "attention",
                      (width, width)))
    resnet(f"{mid}.resnets.1", (coder, "mid", "res_1"), width, width)

  conv("encoder.conv_in", ("encoder", "conv_in"), ch[0], arch["in_channels"])
  previous = ch[0]
  for i, width in enumerate(ch):
    for j in range(blocks):
      resnet(f"encoder.down_blocks.{i}.resnets.{j}", ("encoder", f"down_{i}_res_{j}"), previous,
             width)
      previous = width
    if i != len(ch) - 1:
      conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", ("encoder", f"down_{i}_downsample"),
           width, width)
  middle("encoder")
  norm("encoder.conv_norm_out", ("encoder", "norm_out"), ch[-1])
  conv("encoder.conv_out", ("encoder", "conv_out"), 2 * latent, ch[-1])
  conv("quant_conv", ("quant_conv",), 2 * latent, 2 * latent, 1)
  conv("post_quant_conv", ("post_quant_conv",), latent, latent, 1)
  conv("decoder.conv_in", ("decoder", "conv_in"), ch[-1], latent)
  middle("decoder")
  previous = ch[-1]
  for i, level in enumerate(reversed(range(len(ch)))):
    for j in range(blocks + 1):
      resnet(f"decoder.up_blocks.{i}.resnets.{j}", ("decoder", f"up_{level}_res_{j}"), previous,
             ch[level])
      previous = ch[level]
    if level != 0:
      conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", ("decoder", f"up_{level}_upsample"),
           ch[level], ch[level])
  norm("decoder.conv_norm_out", ("decoder", "norm_out"), ch[0])
  conv("decoder.conv_out", ("decoder", "conv_out"), arch["in_channels"], ch[0])
  return entries


def _expected_shapes(entries) -> dict[str, tuple[int, ...]]:
  shapes = {}
  for prefix, _, kind, shape in entries:
    linears = [prefix]
    if kind == "attention":
      linears = [f"{prefix}.{name}" for name in _ATTENTION_LINEARS]
    for key in linears:
      shapes[f"{key}.weight"], shapes[f"{key}.bias"] = shape, shape[:1]
  return shapes


def _convert(state, entries) -> dict[str, Any]:
  """The mmjax params (nested dict of float32 arrays) of a checked state dict."""
  params = {}
  for prefix, path, kind, shape in entries:
    def get(name, prefix=prefix):
      return state[prefix + name].astype(np.float32)

    if kind == "conv":
      leaves = {"kernel": get(".weight").transpose(2, 3, 1, 0), "bias": get(".bias")}
    elif kind == "norm":
      leaves = {"scale": get(".weight"), "bias": get(".bias")}
    else:  # Linear [out, in] -> kernel [in, heads, head_dim] (q, k, v stacked on axis 1)
      width = shape[0]
      heads = (_ATTENTION_HEADS, width // _ATTENTION_HEADS)
      qkv = ("to_q", "to_k", "to_v")
      leaves = {
          "qkv": {"kernel": np.stack([get(f".{n}.weight").T for n in qkv], axis=1).reshape(
                      width, 3, *heads),
                  "bias": np.stack([get(f".{n}.bias") for n in qkv]).reshape(3, *heads)},
          "out": {"kernel": get(".to_out.0.weight").T.reshape(*heads, width),
                  "bias": get(".to_out.0.bias")}}
    node = params
    for part in path:
      node = node.setdefault(part, {})
    node.update(leaves)
  return jax.tree.map(lambda a: np.array(a, np.float32, order="C"), params)


def _check_tree(params, model, in_channels: int) -> None:
  """Raises if `params` is not exactly the VAE `model.init`'s tree: a converter bug."""
  size = model.downsample_factor
  check_converted_tree(params, model, (jnp.zeros((1, size, size, in_channels), jnp.float32),),
                       "SD VAE")


def _check_config(config: dict[str, Any], arch, config_path: pathlib.Path) -> None:
  """A config.json beside the weights must describe them (else it is another model's)."""
  facts = {"block_out_channels": list(arch["channels"]), "latent_channels": arch["latent_channels"],
           "layers_per_block": arch["num_res_blocks"], "in_channels": arch["in_channels"]}
  wrong = [f"{k}={config[k]} (weights: {v})" for k, v in facts.items()
           if k in config and config[k] != v]
  if wrong:
    raise CheckpointMismatchError(f"{config_path} does not describe the weights beside it: "
                                  f"{'; '.join(wrong)}")


def _scaling_factor(requested, metadata, config, latent_channels: int, path) -> float:
  """See the module docstring (explicit, metadata, config.json, then SD 1's with a note)."""
  if isinstance(requested, str):
    if requested not in SCALING_FACTORS:
      raise ValueError(f"scaling_factor must be a number or one of {sorted(SCALING_FACTORS)}, "
                       f"got {requested!r}")
    value = SCALING_FACTORS[requested]
  elif requested is not None:
    value = requested
  elif SCALING_FACTOR_METADATA_KEY in metadata:
    try:
      value = float(metadata[SCALING_FACTOR_METADATA_KEY])
    except ValueError:
      raise CheckpointMismatchError(f"{path}: metadata {SCALING_FACTOR_METADATA_KEY}="
                                    f"{metadata[SCALING_FACTOR_METADATA_KEY]!r} is not a "
                                    "number") from None
  elif config.get("scaling_factor") is not None:
    value = config["scaling_factor"]
  elif latent_channels == 4:
    value = SCALING_FACTORS["sd"]
    print(f"mmjax: note: {path} says nothing of its latent scaling factor (no "
          f"{SCALING_FACTOR_METADATA_KEY!r} metadata, no diffusers config.json beside it); using "
          f"{value} (SD 1.x / 2.x). SDXL's VAE has the same shapes and needs "
          f"{SCALING_FACTORS['sdxl']}: pass load_sd_vae(..., scaling_factor='sdxl')",
          file=sys.stderr)
  else:
    raise ValueError(f"{path} has {latent_channels} latent channels and no scaling factor in "
                     "its metadata or config.json; pass load_sd_vae(..., scaling_factor=<1 / std "
                     "of its latents>)")
  value = float(value)
  if not (math.isfinite(value) and value > 0):
    raise ValueError(f"scaling_factor must be a positive number, got {value}")
  return value


def load_sd_vae(path: str | pathlib.Path, *, scaling_factor: float | str | None = None,
                num_groups: int | None = None) -> tuple[Any, dict[str, Any], float]:
  """A diffusers `AutoencoderKL` `.safetensors` (or `.npz`, or save_pretrained's folder) as
  `(model, params, scaling_factor)`.

  Args:
    path: the weights file, or a folder holding diffusion_pytorch_model.safetensors (and its
      config.json). Pickles (`.bin`, `.pt`, `.ckpt`) are refused with the conversion command.
    scaling_factor: a number, "sd" (0.18215) or "sdxl" (0.13025); None: from the metadata or
      config.json, else 0.18215 with a note (see the module docstring).
    num_groups: GroupNorm groups; None: config.json's norm_num_groups, else 32.

  Returns:
    model: `KLAutoencoder(layout="sd", scaling_factor=...)` built by `build_model`;
    params: nested dict of float32 NumPy arrays for `model.apply({"params": params}, x,
      method=KLAutoencoder.encode)` (x `[B, H, W, C]` in [-1, 1], H, W divisible by
      `model.downsample_factor`: a `DiagonalGaussian` with mean / logvar `[B, H/f, W/f, c]`)
      and `method=KLAutoencoder.decode` (unscaled z -> `[B, H, W, C]`);
    scaling_factor: the factor chosen (also `model.scaling_factor`).
  """
  weights = _weights_path(pathlib.Path(path))
  state, metadata = read_state_dict_with_metadata(weights)
  state = _modern_attention_names(state, weights)
  arch = _architecture(state, weights)
  entries = _entries(arch)
  expected = _expected_shapes(entries)
  require_keys(state, expected, WHAT, weights)
  extra = sorted(set(state) - set(expected))
  if extra:
    more = f" (and {len(extra) - 6} more)" if len(extra) > 6 else ""
    raise CheckpointMismatchError(f"{weights} has weights {WHAT} does not have: {extra[:6]}{more}"
                                  "; that variant is not supported")
  config = _diffusers_config(weights)
  _check_config(config, arch, weights.parent / "config.json")
  groups = num_groups or config.get("norm_num_groups") or DEFAULT_NUM_GROUPS
  bad = sorted({c for c in arch["channels"] if c % groups})
  if bad:
    raise ValueError(f"{weights}: {groups} GroupNorm groups do not divide the channel counts "
                     f"{bad}; pass load_sd_vae(..., num_groups=<its norm_num_groups>)")
  factor = _scaling_factor(scaling_factor, metadata, config, arch["latent_channels"], weights)
  model = build_model(dict(name="kl_autoencoder", layout="sd", num_groups=groups,
                           num_heads=_ATTENTION_HEADS, scaling_factor=factor, **arch))
  params = _convert(state, entries)
  _check_tree(params, model, arch["in_channels"])
  return model, params, factor
