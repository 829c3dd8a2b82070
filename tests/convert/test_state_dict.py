"""`read_state_dict`: safetensors against the `safetensors` package's own writer, bfloat16 against
hand-packed bits of exactly representable values, and the refusals (pickle, truncation)."""
import json
import struct

import numpy as np
import pytest
import safetensors.numpy

from mmjax.convert.state_dict import read_state_dict, read_state_dict_with_metadata
from mmjax.errors import DataError


def test_safetensors_matches_the_reference_writer(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {"a.weight": rng.normal(size=(3, 5)).astype(np.float32),
             "b": rng.normal(size=(7,)).astype(np.float16),
             "ids": np.arange(6, dtype=np.int64).reshape(2, 3)}
  path = tmp_path / "m.safetensors"
  safetensors.numpy.save_file(tensors, str(path), metadata={"arch": "ViT-B-32"})
  got, metadata = read_state_dict_with_metadata(path)
  assert metadata == {"arch": "ViT-B-32"}
  assert sorted(got) == sorted(tensors)
  for name, value in tensors.items():
    assert got[name].dtype == value.dtype
    np.testing.assert_array_equal(got[name], value)


def _write_bf16(path, name, values):
  bits = (np.asarray(values, np.float32).view(np.uint32) >> 16).astype("<u2")
  header = json.dumps({name: {"dtype": "BF16", "shape": list(bits.shape),
                              "data_offsets": [0, bits.nbytes]}}).encode()
  path.write_bytes(struct.pack("<Q", len(header)) + header + bits.tobytes())


def test_bfloat16_is_read_exactly_as_float32(tmp_path):
  values = np.array([[1.5, -2.0, 3.140625], [0.0, -0.0078125, 65280.0]], np.float32)
  _write_bf16(tmp_path / "w.safetensors", "w", values)
  got = read_state_dict(tmp_path / "w.safetensors")["w"]
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, values)


def test_npz(tmp_path):
  np.savez(tmp_path / "w.npz", **{"img/a": np.ones((2, 2), np.float32)})
  np.testing.assert_array_equal(read_state_dict(tmp_path / "w.npz")["img/a"], np.ones((2, 2)))


@pytest.mark.parametrize("name", ["model.pt", "open_clip_pytorch_model.bin", "x.ckpt"])
def test_pickles_are_refused_with_the_conversion(tmp_path, name):
  (tmp_path / name).write_bytes(b"\x80\x04not really a pickle")
  with pytest.raises(DataError, match=r"never unpickles.*safetensors.torch.save_file"):
    read_state_dict(tmp_path / name)


def test_truncated_file_names_the_tensor(tmp_path):
  path = tmp_path / "m.safetensors"
  safetensors.numpy.save_file({"big": np.zeros((64, 64), np.float32)}, str(path))
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(DataError, match="'big'.*truncated"):
    read_state_dict(path)


def test_missing_file():
  with pytest.raises(FileNotFoundError, match="does not exist"):
    read_state_dict("/nonexistent/model.safetensors")
