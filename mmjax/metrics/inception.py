"""InceptionV3 for FID/IS in Flax, matching pytorch-fid's network and preprocessing.

The network is torchvision's Inception3 with pytorch-fid's patches (which reproduce the
TensorFlow graph 'inception-2015-12-05' the original FID and IS were defined with):
average pools in Mixed_5*, Mixed_6b-e and Mixed_7b exclude padding from the average,
Mixed_7c's pool branch is a 3x3 *max* pool, and the classifier has 1008 classes.

Preprocessing (pytorch-fid's InceptionV3 wrapper): images in [0, 1] are resized to
299x299 with bilinear interpolation (align_corners=False, no antialiasing), then scaled
to [-1, 1].

Outputs: 'pool' [B, 2048] (the FID features: global average pool after Mixed_7c),
'logits' [B, 1008] (fc with bias) and 'logits_unbiased' [B, 1008] (fc without bias: the
original IS code computed its softmax from pool3 @ W without the bias, as torch-fidelity
does; use these for the standard Inception Score).

Weights: `load_fid_inception(path)` reads pytorch-fid's `pt_inception-2015-12-05-*.pth`
without torch (`torch_state_dict.read_state_dict`), or an .npz/.safetensors conversion of
the same state dict. Nothing is downloaded. Images are NHWC, unlike pytorch's NCHW.

This module needs flax (the rest of mmjax.metrics does not) and is imported on demand.
"""
from collections.abc import Mapping
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.metrics.torch_state_dict import read_state_dict

INPUT_SIZE = 299
NUM_CLASSES = 1008


def _pair(value):
  return (value, value) if isinstance(value, int) else tuple(value)


class BasicConv2d(nn.Module):
  """Conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU, NHWC."""
  features: int
  kernel_size: int | tuple[int, int]
  stride: int = 1
  padding: int | tuple[int, int] = 0

  @nn.compact
  def __call__(self, x):
    pad_h, pad_w = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel_size), strides=_pair(self.stride),
                padding=((pad_h, pad_h), (pad_w, pad_w)), use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x):
  # TensorFlow's average pool, unlike torchvision's, ignores the zero padding.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3_stride2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    branch1x1 = BasicConv2d(64, 1, name="branch1x1")(x)
    branch5x5 = BasicConv2d(48, 1, name="branch5x5_1")(x)
    branch5x5 = BasicConv2d(64, 5, padding=2, name="branch5x5_2")(branch5x5)
    branch3x3dbl = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
    branch3x3dbl = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_3")(branch3x3dbl)
    branch_pool = BasicConv2d(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):

  @nn.compact
  def __call__(self, x):
    branch3x3 = BasicConv2d(384, 3, stride=2, name="branch3x3")(x)
    branch3x3dbl = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
    branch3x3dbl = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = BasicConv2d(96, 3, stride=2, name="branch3x3dbl_3")(branch3x3dbl)
    return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    branch1x1 = BasicConv2d(192, 1, name="branch1x1")(x)
    branch7x7 = BasicConv2d(c7, 1, name="branch7x7_1")(x)
    branch7x7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(branch7x7)
    branch7x7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(branch7x7)
    dbl = BasicConv2d(c7, 1, name="branch7x7dbl_1")(x)
    dbl = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(dbl)
    dbl = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(dbl)
    dbl = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(dbl)
    dbl = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(dbl)
    branch_pool = BasicConv2d(192, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch7x7, dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):

  @nn.compact
  def __call__(self, x):
    branch3x3 = BasicConv2d(192, 1, name="branch3x3_1")(x)
    branch3x3 = BasicConv2d(320, 3, stride=2, name="branch3x3_2")(branch3x3)
    branch7x7x3 = BasicConv2d(192, 1, name="branch7x7x3_1")(x)
    branch7x7x3 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(branch7x7x3)
    branch7x7x3 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(branch7x7x3)
    branch7x7x3 = BasicConv2d(192, 3, stride=2, name="branch7x7x3_4")(branch7x7x3)
    return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionE(nn.Module):
  """pytorch-fid's FIDInceptionE_1 (average pool) or, with max_pool, FIDInceptionE_2."""
  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    branch1x1 = BasicConv2d(320, 1, name="branch1x1")(x)
    branch3x3 = BasicConv2d(384, 1, name="branch3x3_1")(x)
    branch3x3 = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(branch3x3),
        BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(branch3x3),
    ], axis=-1)
    dbl = BasicConv2d(448, 1, name="branch3x3dbl_1")(x)
    dbl = BasicConv2d(384, 3, padding=1, name="branch3x3dbl_2")(dbl)
    dbl = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(dbl),
        BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(dbl),
    ], axis=-1)
    if self.max_pool:
      # The FID graph max-pools here (where the paper average-pools); pytorch-fid copies it.
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3(x)
    branch_pool = BasicConv2d(192, 1, name="branch_pool")(pooled)
    return jnp.concatenate([branch1x1, branch3x3, dbl, branch_pool], axis=-1)


@functools.lru_cache(maxsize=16)
def _bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of torch's bilinear resize (align_corners=False, no antialias)."""
  scale = in_size / out_size
  matrix = np.zeros((out_size, in_size), np.float32)
  for dst in range(out_size):
    src = max(scale * (dst + 0.5) - 0.5, 0.0)
    x0 = min(int(src), in_size - 1)
    x1 = x0 + 1 if x0 < in_size - 1 else x0
    lam = src - x0
    matrix[dst, x0] += 1.0 - lam
    matrix[dst, x1] += lam
  return matrix


def resize_bilinear(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """Resizes [B, H, W, C] to [B, size, size, C] as torch's F.interpolate(mode='bilinear')."""
  _, height, width, _ = images.shape
  rows = jnp.asarray(_bilinear_matrix(height, size))
  cols = jnp.asarray(_bilinear_matrix(width, size))
  hi = jax.lax.Precision.HIGHEST
  images = jnp.einsum("oh,bhwc->bowc", rows, images, precision=hi)
  return jnp.einsum("pw,bowc->bopc", cols, images, precision=hi)


class FIDInceptionV3(nn.Module):
  """pytorch-fid's InceptionV3 (block 3 features) plus its 1008-way classifier.

  Call with images [B, H, W, 3] in [0, 1] (any H, W: resized to 299 inside) and get
  {'pool': [B, 2048], 'logits': [B, 1008], 'logits_unbiased': [B, 1008]}.
  """
  resize_input: bool = True
  normalize_input: bool = True

  @nn.compact
  def __call__(self, images):
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must have shape [B, H, W, 3] (NHWC, values in [0, 1]), got "
                       f"{images.shape}.")
    x = images.astype(jnp.float32)
    if self.resize_input:
      x = resize_bilinear(x, INPUT_SIZE)
    if self.normalize_input:
      x = 2 * x - 1
    x = BasicConv2d(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv2d(32, 3, name="Conv2d_2a_3x3")(x)
    x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_stride2(x)
    x = BasicConv2d(80, 1, name="Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, 3, name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_stride2(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))
    fc = nn.Dense(NUM_CLASSES, name="fc")
    logits = fc(pool)
    logits_unbiased = jnp.dot(pool, fc.variables["params"]["kernel"])
    return {"pool": pool, "logits": logits, "logits_unbiased": logits_unbiased}


def variables_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
  """Maps a pytorch-fid / torchvision Inception state dict to Flax variables.

  'A.B.conv.weight' [O, I, kh, kw] -> params A/B/conv/kernel [kh, kw, I, O];
  'bn.weight'/'bn.bias' -> params bn/scale, bn/bias; 'bn.running_mean'/'running_var' ->
  batch_stats bn/mean, bn/var; 'fc.weight' [1008, 2048] -> fc/kernel (transposed).
  'num_batches_tracked' and the auxiliary classifier ('AuxLogits.*') are not used.

  Returns:
    {'params': ..., 'batch_stats': ...} nested dicts of float32 numpy arrays.
  """
  variables = {"params": {}, "batch_stats": {}}
  for name, value in state_dict.items():
    parts = name.split(".")
    if parts[-1] == "num_batches_tracked" or parts[0] == "AuxLogits":
      continue
    value = np.asarray(value, np.float32)
    *path, kind = parts
    if path[-1] == "conv" and kind == "weight":
      collection, leaf, value = "params", "kernel", value.transpose(2, 3, 1, 0)
    elif path[-1] == "bn":
      collection, leaf = {"weight": ("params", "scale"), "bias": ("params", "bias"),
                          "running_mean": ("batch_stats", "mean"),
                          "running_var": ("batch_stats", "var")}[kind]
    elif path == ["fc"]:
      collection, leaf = "params", {"weight": "kernel", "bias": "bias"}[kind]
      value = value.T if kind == "weight" else value
    else:
      raise ValueError(f"unexpected entry {name!r} in the Inception state dict.")
    node = variables[collection]
    for key in path:
      node = node.setdefault(key, {})
    node[leaf] = value
  return variables


def check_variables(variables: Mapping) -> None:
  """Raises ValueError if `variables` does not have exactly FIDInceptionV3's shapes."""
  expected = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0),
                            jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))
  want = {jax.tree_util.keystr(k): v.shape
          for k, v in jax.tree_util.tree_leaves_with_path(dict(expected))}
  got = {jax.tree_util.keystr(k): np.shape(v)
         for k, v in jax.tree_util.tree_leaves_with_path(dict(variables))}
  missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
  if missing or unexpected or wrong:
    raise ValueError(
        "the weights do not fit pytorch-fid's InceptionV3: "
        f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
        f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
        f"wrong shapes {[(k, got[k], want[k]) for k in wrong[:5]]}.")


def load_fid_inception(path: str) -> tuple[FIDInceptionV3, dict]:
  """Model and variables from pytorch-fid's weight file (or an .npz/.safetensors of it).

  Args:
    path: `pt_inception-2015-12-05-6726825d.pth` (read without torch), or an .npz or
      .safetensors file holding the same state dict names.

  Returns:
    (model, variables): use as `model.apply(variables, images)`.
  """
  variables = variables_from_state_dict(read_state_dict(path))
  check_variables(variables)
  return FIDInceptionV3(), jax.tree.map(jnp.asarray, variables)


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, variables, images):
  return model.apply(variables, images)


def inception_outputs(model: FIDInceptionV3, variables: Mapping, images: jax.Array
                      ) -> dict[str, jax.Array]:
  """Jitted forward pass: images [B, H, W, 3] in [0, 1] -> {'pool', 'logits', ...}."""
  return _apply(model, variables, images)
