"""Reads PyTorch state dicts (.pth), .npz and .safetensors files without torch.

A `.pth` written by `torch.save` is a pickle whose tensors point ("persistent ids") to raw
storages: in the zip format (torch >= 1.6) each storage is a file `<archive>/data/<key>`;
in the legacy format the storages follow the pickle, each as an int64 element count and
the raw little-endian bytes. The unpickler here only admits the handful of globals a state
dict needs (tensor rebuild functions, storage types, OrderedDict), so a file cannot run
arbitrary code.
"""
import collections
import json
import os
import pickle
import struct
import zipfile

import numpy as np

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _Storage:
  """A lazily filled typed storage: `array` is set once the bytes are read."""

  def __init__(self, dtype, numel):
    self.dtype, self.numel, self.array = np.dtype(dtype), numel, None


def _rebuild_tensor(storage, offset, size, stride, *unused_args):
  return ("tensor", storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *unused_args):
  return data


class _StateDictUnpickler(pickle.Unpickler):

  def __init__(self, file, storages):
    super().__init__(file)
    self._storages = storages

  def find_class(self, module, name):
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return _STORAGE_DTYPES[name]
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    raise pickle.UnpicklingError(
        f"refusing to load {module}.{name}: not part of a plain tensor state dict.")

  def persistent_load(self, saved_id):
    kind, storage_type, key, _, numel = saved_id[:5]
    if kind != "storage":
      raise pickle.UnpicklingError(f"unknown persistent id {saved_id!r}.")
    if key not in self._storages:
      self._storages[key] = _Storage(storage_type, numel)
    return self._storages[key]


def _materialise(obj):
  if isinstance(obj, tuple) and len(obj) == 5 and obj[0] == "tensor":
    _, storage, offset, size, stride = obj
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage.array[offset:], shape=size, strides=[s * itemsize for s in stride])
    return np.array(view)
  if isinstance(obj, dict):
    return collections.OrderedDict((k, _materialise(v)) for k, v in obj.items())
  return obj


def _read_zip_pth(path):
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
    if len(pickles) != 1:
      raise ValueError(f"{path}: expected one data.pkl in the torch zip archive, found "
                       f"{pickles}.")
    prefix = pickles[0][:-len("data.pkl")]
    storages = {}
    with archive.open(pickles[0]) as f:
      obj = _StateDictUnpickler(f, storages).load()
    for key, storage in storages.items():
      raw = archive.read(f"{prefix}data/{key}")
      storage.array = np.frombuffer(raw, storage.dtype.newbyteorder("<"), storage.numel)
  return obj


def _read_legacy_pth(path):
  with open(path, "rb") as f:
    if pickle.load(f) != _LEGACY_MAGIC:
      raise ValueError(f"{path}: not a torch file (bad magic number).")
    pickle.load(f)  # protocol version
    sys_info = pickle.load(f)
    if not sys_info.get("little_endian", True):
      raise ValueError(f"{path}: big-endian torch files are not supported.")
    storages = {}
    obj = _StateDictUnpickler(f, storages).load()
    for key in pickle.load(f):
      storage = storages[key]
      (numel,) = struct.unpack("<q", f.read(8))
      raw = f.read(numel * storage.dtype.itemsize)
      storage.array = np.frombuffer(raw, storage.dtype.newbyteorder("<"), numel)
  return obj


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
                       "U8": np.uint8, "BOOL": np.bool_}


def _read_safetensors(path):
  with open(path, "rb") as f:
    (header_len,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(header_len))
    data = f.read()
  out = collections.OrderedDict()
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in _SAFETENSORS_DTYPES:
      raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}.")
    begin, end = info["data_offsets"]
    array = np.frombuffer(data[begin:end], np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
                          .newbyteorder("<"))
    out[name] = array.reshape(info["shape"]).copy()
  return out


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """{name: numpy array} from a torch .pth/.pt (zip or legacy), .npz or .safetensors file.

  A .pth holding {'state_dict': ...} is unwrapped.
  """
  if not os.path.exists(path):
    raise ValueError(f"weight file {path!r} does not exist (nothing is downloaded: pass the "
                     "path of a local copy).")
  if path.endswith(".npz"):
    with np.load(path) as data:
      return collections.OrderedDict((k, data[k]) for k in data.files)
  if path.endswith(".safetensors"):
    return _read_safetensors(path)
  obj = _read_zip_pth(path) if zipfile.is_zipfile(path) else _read_legacy_pth(path)
  obj = _materialise(obj)
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a state dict (a dict of tensors), got {type(obj)}.")
  return obj
