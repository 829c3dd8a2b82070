"""ITM hard-negative mining and loss: positives never drawn, draw frequencies equal the softmax
over negatives, sharded = unsharded, edge cases, and the loss against a hand computation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmjax.losses import itm_loss, mine_itm_negatives, positive_mask_from_ids
from mmjax.losses.itm import negative_probabilities

DRAWS = 20_000
N = 6
negative_probs = jax.jit(negative_probabilities)
mine = jax.jit(mine_itm_negatives)


@jax.jit
def _draws(keys, sim, positive_mask):
  """Negatives for `len(keys)` independent keys: (text_index, image_index), each `[K, N]`."""
  out = jax.vmap(lambda key: mine_itm_negatives(key, sim, positive_mask))(keys)
  return out.text_index, out.image_index


def _frequencies(index, n):
  """`[K, N]` draws -> `[N, N]` empirical frequency of column j in row i."""
  return np.stack([np.bincount(index[:, i], minlength=n) for i in range(n)]) / len(index)


@pytest.fixture(scope="module")
def setup():
  rng = np.random.default_rng(0)
  sim = jnp.asarray(rng.normal(size=(N, N)) * 1.5, jnp.float32)
  # Captions 1 and 4 are identical, so they are positives of each other's images.
  ids = jnp.array([0, 1, 2, 3, 1, 5])
  mask = positive_mask_from_ids(ids)
  keys = jax.random.split(jax.random.key(0), DRAWS)
  text_index, image_index = map(np.asarray, _draws(keys, sim, mask))
  return sim, mask, text_index, image_index


def test_positives_are_never_drawn(setup):
  _, mask, text_index, image_index = setup
  rows = np.arange(mask.shape[0])
  mask = np.asarray(mask)
  assert not mask[rows, text_index].any()     # image i never gets one of its own captions
  assert not mask.T[rows, image_index].any()  # text t never gets one of its own images


def test_frequencies_match_softmax_over_negatives(setup):
  sim, mask, text_index, image_index = setup
  n = sim.shape[0]
  # Standard error of a frequency is <= sqrt(0.25 / 20000) = 0.0035; 0.02 is > 5.5 sigma, and
  # the keys are fixed, so this is deterministic anyway.
  for index, expected in ((text_index, negative_probs(sim, mask)),
                          (image_index, negative_probs(sim.T, mask.T))):
    expected = np.asarray(expected)
    np.testing.assert_allclose(expected.sum(1), 1.0, rtol=1e-5)
    assert np.abs(_frequencies(index, n) - expected).max() < 0.02
  # The expected distribution is the plain softmax renormalised over the negatives.
  row = np.asarray(sim[0], np.float64)
  allowed = ~np.asarray(mask[0])
  reference = np.where(allowed, np.exp(row - row.max()), 0) / np.exp(row - row.max())[allowed].sum()
  np.testing.assert_allclose(negative_probs(sim, mask)[0], reference, rtol=1e-5)


def test_all_equal_similarities_give_uniform_negatives():
  keys = jax.random.split(jax.random.key(1), DRAWS)
  text_index, image_index = map(np.asarray, _draws(keys, jnp.zeros((N, N)), jnp.eye(N, dtype=bool)))
  uniform = (1 - np.eye(N)) / (N - 1)
  for index in (text_index, image_index):
    assert np.abs(_frequencies(index, N) - uniform).max() < 0.02


def test_sharded_mining_equals_unsharded():
  devices = np.array(jax.devices()[:8])
  assert len(devices) == 8, "tests/conftest.py sets 8 simulated CPU devices"
  mesh = Mesh(devices, ("data",))
  rng = np.random.default_rng(1)
  image_emb = jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)
  text_emb = jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)
  captions = jnp.asarray(rng.integers(0, 4, size=(32, 3)), jnp.int32)  # some duplicates

  def mine(key, image_emb, text_emb, captions):
    sim = image_emb @ text_emb.T / 0.1
    return mine_itm_negatives(key, sim, positive_mask_from_ids(captions))

  key = jax.random.key(7)
  expected = jax.jit(mine)(key, image_emb, text_emb, captions)
  shard = NamedSharding(mesh, P("data"))
  placed = [jax.device_put(x, shard) for x in (image_emb, text_emb, captions)]
  assert len(placed[0].sharding.device_set) == 8
  got = jax.jit(mine)(key, *placed)
  for want, have in zip(expected, got):
    np.testing.assert_array_equal(np.asarray(want), np.asarray(have))
  assert not np.asarray(positive_mask_from_ids(captions))[np.arange(32), got.text_index].any()


def test_rows_without_negatives_are_flagged():
  # Captions 0..2 are identical: image 0's only negative is text 3; with all four identical
  # no negative exists and the rows are flagged invalid.
  captions = np.array([[5, 6], [5, 6], [5, 6], [7, 8]])
  mask = captions[:, None, 0] == captions[None, :, 0]
  np.testing.assert_array_equal(positive_mask_from_ids(jnp.asarray(captions)), mask)
  out = mine(jax.random.key(0), jnp.zeros((4, 4)), jnp.asarray(mask))
  np.testing.assert_array_equal(out.text_index[:3], [3, 3, 3])
  np.testing.assert_array_equal(out.image_index[:3], [3, 3, 3])
  np.testing.assert_array_equal(out.text_valid, [True] * 4)
  out = mine(jax.random.key(0), jnp.zeros((4, 4)), jnp.ones((4, 4), bool))
  assert not np.asarray(out.text_valid).any() and not np.asarray(out.image_valid).any()


def test_bad_inputs_raise():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="N >= 2 pairs.*got N=1"):
    mine_itm_negatives(key, jnp.zeros((1, 1)))
  with pytest.raises(ValueError, match=r"square \[N, N\].*got shape \(2, 3\)"):
    mine_itm_negatives(key, jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match=r"positive_mask must be bool \[N, N\] = \[2, 2\]"):
    mine_itm_negatives(key, jnp.zeros((2, 2)), jnp.ones((3, 3), bool))
  with pytest.raises(ValueError, match=r"ids must be \[N\] or \[N, L\]"):
    positive_mask_from_ids(jnp.zeros((2, 2, 2)))
  with pytest.raises(ValueError, match=r"negative_logits must be \[rows, 2\]"):
    itm_loss(jnp.zeros((2, 2)), jnp.zeros((4, 3)))


def test_itm_loss_against_hand_computation():
  pos = np.array([[0.0, 2.0], [1.0, 0.0]])
  neg = np.array([[3.0, 0.0], [0.0, 0.0], [0.0, 5.0]])
  nll = lambda logits, label: np.log(np.exp(logits).sum()) - logits[label]
  rows = [nll(pos[0], 1), nll(pos[1], 1), nll(neg[0], 0), nll(neg[1], 0), nll(neg[2], 0)]

  @jax.jit
  def losses(pos, neg, valid):
    return itm_loss(pos, neg), itm_loss(pos, neg, valid), jax.grad(itm_loss)(pos, neg)

  full, masked, grad = losses(pos, neg, jnp.array([True, True, False]))
  np.testing.assert_allclose(full, np.mean(rows), rtol=1e-6)
  np.testing.assert_allclose(masked, np.mean(rows[:4]), rtol=1e-6)
  assert np.isfinite(np.asarray(grad)).all()
