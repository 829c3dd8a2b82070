"""predict_in_chunks: outputs of every row, in order, and none of the padding rows, for pytree
outputs on the host and on device."""
import jax
import numpy as np
import pytest

from mmjax.train import sharding
from mmjax.train.evaluators import predict_in_chunks


@pytest.mark.parametrize("host", [True, False])
def test_outputs_cover_exactly_the_rows(host):
  rows = np.arange(11, dtype=np.float32)[:, None] * np.array([[1.0, -1.0]], np.float32)
  fn = jax.jit(lambda params, x: {"scaled": x * params, "count": x.sum(1) + 1.0})
  out = predict_in_chunks(fn, np.float32(2.0), (rows,), sharding.make_mesh({"data": 8}), 3,
                          host=host)
  assert isinstance(out["scaled"], np.ndarray if host else jax.Array)
  np.testing.assert_array_equal(np.asarray(out["scaled"]), rows * 2)
  np.testing.assert_array_equal(np.asarray(out["count"]), np.ones(11))  # padding gives 1 too


def test_empty_input_raises():
  with pytest.raises(ValueError, match="at least one row"):
    predict_in_chunks(jax.jit(lambda p, x: x), None, (np.zeros((0, 2)),),
                      sharding.make_mesh({"data": 8}), 3)
