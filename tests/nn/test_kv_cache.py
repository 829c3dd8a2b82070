"""SlotKVCache against a numpy cache that copies every row on every reorder (what a plain row
gather does): writes, attention, expansion and beam-style reorders must read the same K/V."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.decoding import expand_rows, gather_rows
from mmjax.nn.kv_cache import ContextKVCache, SlotKVCache

HEADS, SLOTS, HEAD_DIM = 2, 7, 4


def numpy_attention(query, key, value, mask):
  """query [R, T, H, D]; key/value [R, H, S, D]; mask [R, 1, T, S] -> [R, T, H, D] (float64)."""
  q, k, v = (np.asarray(a, np.float64) for a in (query, key, value))
  logits = np.einsum("rthd,rhsd->rhts", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(np.asarray(mask), logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("rhts,rhsd->rthd", weights, v)


def random_kv(rng, rows, tokens):
  return (rng.normal(size=(rows, tokens, HEADS, HEAD_DIM)).astype(np.float32),
          rng.normal(size=(rows, tokens, HEADS, HEAD_DIM)).astype(np.float32))


def numpy_write(key, value, new_key, new_value, positions):
  for r in range(key.shape[0]):
    for t, p in enumerate(positions[r]):
      key[r, :, p], value[r, :, p] = new_key[r, t], new_value[r, t]


def slot_mask(positions):
  return (np.arange(SLOTS)[None, None, :] <= positions[:, :, None])[:, None]


@pytest.mark.parametrize("num_beams", [1, 3])
def test_beam_reorders_within_groups_read_what_copied_rows_hold(num_beams):
  """Prefill 2 prompts (ragged), expand to k beams, then 4 steps of write + attend + a random
  reorder within each prompt's beams: every attention output and the final rows equal the
  numpy cache that physically copies rows."""
  rng = np.random.default_rng(0)
  batch = 2
  cache = SlotKVCache.zeros(batch, HEADS, SLOTS, HEAD_DIM, jnp.float32)
  ref_key = np.zeros((batch, HEADS, SLOTS, HEAD_DIM), np.float32)
  ref_value = np.zeros_like(ref_key)
  prompt_key, prompt_value = random_kv(rng, batch, 3)
  prompt_positions = np.broadcast_to(np.arange(3, dtype=np.int32), (batch, 3))
  cache = cache.write(jnp.asarray(prompt_key), jnp.asarray(prompt_value), prompt_positions)
  numpy_write(ref_key, ref_value, prompt_key, prompt_value, prompt_positions)
  lengths = np.array([3, 2], np.int32)  # row 1's slot 2 is padding, overwritten below

  cache = expand_rows({"kv": cache}, num_beams, share=True)["kv"]
  ref_key, ref_value = (np.repeat(a, num_beams, axis=0) for a in (ref_key, ref_value))
  lengths = np.repeat(lengths, num_beams)
  assert cache.group == num_beams
  attend = jax.jit(lambda c, q, m: c.attend(q, m))
  for step in range(4):
    positions = (lengths + step)[:, None]
    new_key, new_value = random_kv(rng, batch * num_beams, 1)
    cache = cache.write(jnp.asarray(new_key), jnp.asarray(new_value), jnp.asarray(positions))
    numpy_write(ref_key, ref_value, new_key, new_value, positions)
    query, _ = random_kv(rng, batch * num_beams, 1)
    mask = slot_mask(positions)
    np.testing.assert_allclose(attend(cache, jnp.asarray(query), jnp.asarray(mask)),
                               numpy_attention(query, ref_key, ref_value, mask),
                               rtol=1e-5, atol=1e-6)
    parents = rng.integers(0, num_beams, size=(batch, num_beams))
    rows = (np.arange(batch)[:, None] * num_beams + parents).reshape(-1)
    before = cache.key
    cache = gather_rows({"kv": cache}, jnp.asarray(rows), group_size=num_beams)["kv"]
    if num_beams > 1:
      np.testing.assert_array_equal(cache.key, before)  # only the slot table moved
    ref_key, ref_value = ref_key[rows], ref_value[rows]

  key, value = cache.rows()
  for r, length in enumerate(lengths):
    written = length + 4  # the slots each row may attend to
    np.testing.assert_array_equal(np.asarray(key)[r, :, :written], ref_key[r, :, :written])
    np.testing.assert_array_equal(np.asarray(value)[r, :, :written], ref_value[r, :, :written])


def test_expansion_without_sharing_gives_each_copy_its_own_row():
  """Sampled sequences (no reorders) expand into independent rows: group 1, copies of K/V."""
  rng = np.random.default_rng(3)
  key, value = (jnp.asarray(rng.normal(size=(2, HEADS, SLOTS, HEAD_DIM)), jnp.float32)
                for _ in range(2))
  expanded = expand_rows(SlotKVCache.from_rows(key, value, group=1), 3)
  assert expanded.group == 1
  np.testing.assert_array_equal(expanded.rows()[0], np.repeat(np.asarray(key), 3, axis=0))
  np.testing.assert_array_equal(expanded.rows()[1], np.repeat(np.asarray(value), 3, axis=0))


def test_gather_across_groups_copies_rows():
  """Without the within-group promise (or across groups) rows are copied, whatever the group."""
  rng = np.random.default_rng(1)
  key, value = (jnp.asarray(rng.normal(size=(6, HEADS, SLOTS, HEAD_DIM)), jnp.float32)
                for _ in range(2))
  cache = SlotKVCache.from_rows(key, value, group=3)
  cache = cache.replace(source=jnp.asarray(rng.integers(0, 3, size=(6, SLOTS)), jnp.int32))
  own_key, own_value = cache.rows()
  rows = jnp.array([4, 4, 0, 5, 1, 2])
  moved = gather_rows(cache, rows)
  np.testing.assert_array_equal(moved.rows()[0], np.asarray(own_key)[np.asarray(rows)])
  np.testing.assert_array_equal(moved.rows()[1], np.asarray(own_value)[np.asarray(rows)])
  assert moved.group == 3


def test_attend_takes_each_slot_from_the_row_source_names():
  """A hand-built table: row 1 of a group reads slot 0 from row 0 and slot 1 from itself."""
  key = np.zeros((2, 1, 2, 1), np.float32)  # [R, H, S, Dh]
  value = np.array([[[[10.0], [20.0]]], [[[30.0], [40.0]]]], np.float32)
  cache = SlotKVCache.from_rows(jnp.asarray(key), jnp.asarray(value), group=2)
  cache = cache.replace(source=jnp.array([[0, 0], [0, 1]], jnp.int32))
  out = cache.attend(jnp.zeros((2, 1, 1, 1)), jnp.ones((2, 1, 1, 2), bool))
  # Zero keys: uniform weights over the row's two slots.
  np.testing.assert_allclose(np.asarray(out)[:, 0, 0, 0], [15.0, 25.0])


def test_bad_group_raises():
  with pytest.raises(ValueError, match="groups of 4"):
    SlotKVCache.from_rows(jnp.zeros((6, 1, 2, 1)), jnp.zeros((6, 1, 2, 1)), group=4)


def test_context_cache_shared_by_a_group_attends_as_per_row_copies():
  """Expanded to 3 rows per context and reordered within groups, each row (with its own mask,
  e.g. a media mask) attends as numpy does over its own copy; a reorder across groups copies."""
  rng = np.random.default_rng(2)
  batch, context, times = 2, 5, 3
  key, value = random_kv(rng, batch, context)  # [B, Tk, H, Dh]
  cache = expand_rows({"ctx": ContextKVCache.from_rows(jnp.asarray(key), jnp.asarray(value))},
                      times)["ctx"]
  assert cache.group == times and cache.key.shape[0] == batch  # nothing copied
  cache = gather_rows(cache, jnp.array([2, 0, 0, 4, 5, 3]), group_size=times)
  query, _ = random_kv(rng, batch * times, 2)
  mask = rng.random((batch * times, 1, 2, context)) > 0.3
  mask[..., 0] = True
  rows_key = np.swapaxes(np.repeat(key, times, axis=0), 1, 2)  # [R, H, Tk, Dh]
  rows_value = np.swapaxes(np.repeat(value, times, axis=0), 1, 2)
  np.testing.assert_allclose(cache.attend(jnp.asarray(query), jnp.asarray(mask)),
                             numpy_attention(query, rows_key, rows_value, mask),
                             rtol=1e-5, atol=1e-6)
  rows = np.array([3, 1, 5, 0, 2, 4])
  moved = gather_rows(cache, jnp.asarray(rows))  # rows from other groups: copied
  assert moved.group == 1
  np.testing.assert_array_equal(moved.rows()[0], np.repeat(key, times, axis=0)[rows])
  np.testing.assert_allclose(moved.attend(jnp.asarray(query), None),
                             numpy_attention(query, rows_key[rows], rows_value[rows],
                                             np.ones((6, 1, 2, context), bool)),
                             rtol=1e-5, atol=1e-6)
