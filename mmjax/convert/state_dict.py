"""Reading a public checkpoint's tensors as NumPy arrays: `.safetensors` or `.npz`, never pickle.

`read_state_dict(path)` returns `{name: np.ndarray}` in the file's order. A `.safetensors` file
is a little-endian u64 header length, a JSON header (per tensor: dtype, shape, byte offsets;
optional "__metadata__" str -> str) and the raw bytes; it is memory-mapped and each tensor
copied out. bfloat16 has no NumPy dtype: its 16 bits are the top half of a float32, so they are
read as uint16 and shifted into float32 (exact). `.pt` / `.pth` / `.bin` / `.ckpt` files are
pickles that can run code when loaded and are refused, with the one-line conversion to run in
PyTorch instead.
"""
from __future__ import annotations

import json
import pathlib
import struct
import zipfile
from typing import Any

import numpy as np

from mmjax.errors import CheckpointMismatchError, DataError

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32,
    "U64": np.uint64, "BOOL": np.bool_, "BF16": np.uint16,
}
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
_CONVERT_HINT = (
    "convert it once in PyTorch: `import torch, safetensors.torch; sd = torch.load(PATH, "
    "map_location='cpu', weights_only=True); sd = sd.get('state_dict', sd); "
    "safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, "
    "'model.safetensors')`")


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
  """uint16 bfloat16 bit patterns (any shape) -> the float32 values they encode (exact)."""
  return (bits.astype(np.uint32) << 16).view(np.float32)


def _read_safetensors(path: pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  raw = np.memmap(path, dtype=np.uint8, mode="r")
  if raw.size < 8:
    raise DataError(f"{path} is not a safetensors file: {raw.size} bytes, no header")
  (header_len,) = struct.unpack("<Q", raw[:8].tobytes())
  if header_len > raw.size - 8:
    raise DataError(f"{path} is not a safetensors file (or is truncated): header length "
                    f"{header_len} > file size {raw.size}")
  try:
    header = json.loads(raw[8:8 + header_len].tobytes())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f"{path} is not a safetensors file: its header is not JSON ({e})") from None
  metadata = header.pop("__metadata__", None) or {}
  data = raw[8 + header_len:]
  tensors = {}
  for name, info in header.items():
    dtype_name = info.get("dtype")
    if dtype_name not in _SAFETENSORS_DTYPES:
      raise DataError(f"{path}: tensor {name!r} has dtype {dtype_name!r}; supported: "
                      f"{sorted(_SAFETENSORS_DTYPES)}")
    start, end = info["data_offsets"]
    dtype = np.dtype(_SAFETENSORS_DTYPES[dtype_name])
    shape = tuple(info["shape"])
    if end > data.size or end - start != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
      raise DataError(f"{path}: tensor {name!r} ({dtype_name} {list(shape)}) has byte range "
                      f"[{start}, {end}) that does not fit its shape or the file (truncated?)")
    array = np.frombuffer(data[start:end].tobytes(), dtype=dtype).reshape(shape)
    tensors[name] = bfloat16_bits_to_float32(array) if dtype_name == "BF16" else array
  return tensors, dict(metadata)


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """All tensors of a `.safetensors` or `.npz` checkpoint as `{name: np.ndarray}`.

  bfloat16 tensors come back as float32 (exactly); other dtypes unchanged.
  """
  return read_state_dict_with_metadata(path)[0]


def read_state_dict_with_metadata(path: str | pathlib.Path
                                  ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """`(tensors, metadata)`: metadata is a safetensors file's "__metadata__" ({} for `.npz`)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint {path} does not exist (expected a .safetensors or "
                            f".npz file)")
  suffix = path.suffix.lower()
  if suffix in PICKLE_SUFFIXES or zipfile.is_zipfile(path) and suffix != ".npz":
    raise DataError(f"{path} is a PyTorch pickle ({suffix}); mmjax never unpickles (a pickle "
                    f"can run code). {_CONVERT_HINT.replace('PATH', repr(str(path)))}")
  if suffix == ".npz":
    try:
      with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}, {}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
      raise DataError(f"{path} is not a readable .npz of arrays ({e})") from None
  if suffix != ".safetensors":
    raise DataError(f"{path}: unknown checkpoint format {suffix!r}; expected .safetensors or "
                    f".npz")
  return _read_safetensors(path)


def require_keys(state: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]],
                 what: str, path: str | pathlib.Path) -> None:
  """Raises CheckpointMismatchError listing the first missing keys / wrong shapes.

  Args:
    expected: `{key: shape}` the converter needs.
    what: the architecture, for the message (e.g. "an open_clip ViT CLIP").
  """
  problems = []
  for key, shape in expected.items():
    if key not in state:
      problems.append(f"missing {key}")
    elif tuple(state[key].shape) != tuple(shape):
      problems.append(f"{key} has shape {list(state[key].shape)}, expected {list(shape)}")
  if problems:
    more = f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""
    raise CheckpointMismatchError(f"{path} does not fit {what}: {'; '.join(problems[:6])}{more}")


def check_converted_tree(params: Any, model: Any, init_inputs: tuple, what: str) -> None:
  """Raises RuntimeError if converted `params` are not exactly the tree (paths, shapes) that
  `model.init(key, *init_inputs)` makes: a converter bug, never the user's input."""
  import flax.linen as nn
  import jax
  shapes = jax.eval_shape(model.init, jax.random.key(0), *init_inputs)["params"]

  def flat(tree):
    return {jax.tree_util.keystr(k): tuple(v.shape)
            for k, v in jax.tree_util.tree_flatten_with_path(nn.unbox(tree))[0]}

  diff = sorted(set(flat(shapes).items()) ^ set(flat(params).items()))
  if diff:
    raise RuntimeError(f"mmjax bug: converted {what} params differ from model.init's tree: "
                       f"{diff[:6]}")
