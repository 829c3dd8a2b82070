"""Flax InceptionV3 vs pytorch-fid's network (outputs committed by make_fixture.py).

The fixture holds the torch outputs for weights drawn by tests/fixtures/inception/weights.py;
here the same weights go through mmjax's state-dict loader into the Flax model.
"""
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.metrics import inception
from mmjax.metrics.torch_state_dict import read_state_dict

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures" / "inception"


def _weights_module():
  spec = importlib.util.spec_from_file_location("inception_fixture_weights",
                                                FIXTURES / "weights.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


weights = _weights_module()


def test_flax_inception_matches_pytorch_fid(tmp_path):
  fixture = np.load(FIXTURES / "fid_inception_outputs.npz")
  state_dict = weights.random_state_dict(json.loads(str(fixture["spec"])))
  # Round trip through a file, as a user's converted checkpoint would arrive.
  np.savez(tmp_path / "pt_inception.npz", **state_dict)
  model, variables = inception.load_fid_inception(str(tmp_path / "pt_inception.npz"))
  out = inception.inception_outputs(model, variables, jnp.asarray(fixture["images"]))
  assert out["pool"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
  np.testing.assert_allclose(out["pool"], fixture["pool"], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["logits"], fixture["logits"], rtol=1e-4, atol=1e-4)
  bias = state_dict["fc.bias"]
  np.testing.assert_allclose(out["logits_unbiased"], fixture["logits"] - bias, rtol=1e-4,
                             atol=1e-4)


def test_resize_matches_torch_formula_on_known_values():
  # Upsampling 2 -> 4 with align_corners=False: sources at -0.25 (clamped), 0.25, 0.75, 1.25.
  images = jnp.array([0.0, 1.0]).reshape(1, 2, 1, 1) * jnp.ones((1, 2, 3, 1))
  out = inception.resize_bilinear(images, 4)
  np.testing.assert_allclose(out[0, :, 0, 0], [0.0, 0.25, 0.75, 1.0], atol=1e-7)


@pytest.mark.parametrize("filename", ["tiny_zip.pth", "tiny_legacy.pth"])
def test_reads_torch_files_without_torch(filename):
  got = read_state_dict(str(FIXTURES / filename))
  want = weights.tiny_state_dict()
  want["transposed"] = want["double"].T
  assert list(got) == list(want)
  for name, value in want.items():
    assert got[name].dtype == value.dtype, name
    np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_reads_safetensors(tmp_path):
  import json as json_lib
  import struct
  arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.int64)}
  header, offset, blobs = {}, 0, []
  for name, value in arrays.items():
    blob = value.tobytes()
    header[name] = {"dtype": {"float32": "F32", "int64": "I64"}[str(value.dtype)],
                    "shape": list(value.shape), "data_offsets": [offset, offset + len(blob)]}
    offset += len(blob)
    blobs.append(blob)
  encoded = json_lib.dumps(header).encode()
  (tmp_path / "w.safetensors").write_bytes(struct.pack("<Q", len(encoded)) + encoded
                                           + b"".join(blobs))
  got = read_state_dict(str(tmp_path / "w.safetensors"))
  for name, value in arrays.items():
    np.testing.assert_array_equal(got[name], value)


def test_wrong_weights_and_inputs_raise(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    inception.load_fid_inception(str(tmp_path / "missing.pth"))
  np.savez(tmp_path / "bad.npz", **{"fc.weight": np.zeros((10, 2048)), "fc.bias": np.zeros(10)})
  with pytest.raises(ValueError, match="do not fit"):
    inception.load_fid_inception(str(tmp_path / "bad.npz"))
  with pytest.raises(ValueError, match="NHWC"):
    jax.eval_shape(lambda x: inception.FIDInceptionV3().init(jax.random.key(0), x),
                   jnp.zeros((1, 3, 8, 8)))
