"""The per-row self-attention KV cache, whose slots groups of rows (beams) share instead of copy.

Beam search reorders its k beams every step: beam b continues the hypothesis of beam
`parent[b]`. Copying every layer's K/V rows by parent (what a plain row gather does, and what
transformers' `reorder_cache` does over the filled positions) moves the whole cache through
memory at every step; in the decoding benchmark that copy cost as much as the model itself.

Here the beams of one prompt are a *group* of G adjacent rows, and the cache records, per row
and slot, which row of the group holds that slot's K/V (`source`, like a paged-attention block
table). A reorder copies only that small int table; K/V stay where they were written. This is
safe because the rows of a group decode in lockstep: slot p is written at the same call by
every row of the group, each into its own storage row, so a slot that some row still reads is
never overwritten.

Storage is group-major then heads (B groups): keys `[B, H, Dh, G, S]`, values
`[B, H, G, S, Dh]`, so one batched GEMM per group and head reads all G rows' keys without any
transpose. Keys are (Dh, slots)-major because XLA:CPU's small batched GEMMs ran faster with
that operand layout than with (slots, Dh) at the decoding benchmark's shapes. A query of row
(b, g) scores all G rows' keys at every slot and keeps, per slot, the row `source` names (a
mask over the G * S keys): G times the attention products, none of the copies. With G = 1 it
is a plain heads-major cache.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class SlotKVCache:
  """Keys and values of R = B * G rows, `S` slots each.

  Attributes:
    key: `[B, H, Dh, G, S]`; row r = b * G + g lives at `[b, :, :, g]`.
    value: `[B, H, G, S, Dh]`; row r at `[b, :, g]`.
    source: int32 `[R, S]`, the row of r's group (in [0, G)) whose storage holds r's slot s.
    group: static G, the rows that share slots (1 outside beam search).
  """
  key: jax.Array
  value: jax.Array
  source: jax.Array
  group: int = flax.struct.field(pytree_node=False, default=1)

  @classmethod
  def zeros(cls, rows: int, heads: int, slots: int, head_dim: int, dtype) -> "SlotKVCache":
    """An empty cache of `rows` rows, each its own group."""
    return cls.from_rows(jnp.zeros((rows, heads, slots, head_dim), dtype),
                         jnp.zeros((rows, heads, slots, head_dim), dtype), 1)

  @classmethod
  def from_rows(cls, key: jax.Array, value: jax.Array, group: int) -> "SlotKVCache":
    """The cache holding row r's own K/V `key[r]`/`value[r]` (`[R, H, S, Dh]`), in groups of
    `group` adjacent rows, each slot pointing to its own row."""
    rows, heads, slots, head_dim = key.shape
    if rows % group:
      raise ValueError(f"{rows} rows do not split into groups of {group}")
    grouped = (rows // group, group, heads, slots, head_dim)
    member = jnp.arange(rows, dtype=jnp.int32)[:, None] % group
    return cls(key.reshape(grouped).transpose(0, 2, 4, 1, 3),
               value.reshape(grouped).transpose(0, 2, 1, 3, 4),
               jnp.broadcast_to(member, (rows, slots)), group)

  @property
  def num_rows(self) -> int:
    return self.value.shape[0] * self.group

  @property
  def num_slots(self) -> int:
    return self.value.shape[3]

  def write(self, key: jax.Array, value: jax.Array, positions: jax.Array) -> "SlotKVCache":
    """Writes `key`/`value` `[R, T, H, Dh]` of row r at slots `positions[r]` (`[R, T]`) of its own
    storage row; those slots then point to it. Slots outside `[0, S)` are dropped."""
    rows = jnp.arange(self.num_rows)[:, None]
    group_index, member = rows // self.group, rows % self.group
    # Index arrays around slices put their dims first: both updates are [R, T, H, Dh] as given.
    new_key = self.key.at[group_index, :, :, member, positions].set(
        key.astype(self.key.dtype), mode="drop")
    new_value = self.value.at[group_index, :, member, positions].set(
        value.astype(self.value.dtype), mode="drop")
    source = self.source.at[rows, positions].set(
        jnp.broadcast_to(member, positions.shape).astype(jnp.int32), mode="drop")
    return self.replace(key=new_key, value=new_value, source=source)

  def attend(self, query: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax attention of `query` `[R, Tq, H, Dh]` (unscaled) over each row's slots.

    Args:
      mask: bool broadcastable to `[R, H, Tq, S]`, True = may attend.
    Returns:
      `[R, Tq, H, Dh]` in the query's dtype.
    """
    num_groups, heads, group, slots, head_dim = self.value.shape
    mask = _group_mask(mask, num_groups, group, query.shape[1], slots)[:, :, :, :, None]
    if group > 1:
      # Row g reads slot s from the one row j = source[g, s] of its group: a mask over the
      # G * S keys, so a plain softmax over them is the softmax over the row's own slots.
      chosen = (self.source.reshape(num_groups, group, 1, slots)
                == jnp.arange(group)[:, None])  # [B, G, G, S]: row j holds slot s of row g
      mask = mask & chosen[:, None, :, None]  # [B, Hm, G, Tq, G, S]
    mask = mask.reshape(mask.shape[:2] + (-1, group * slots))
    return _grouped_attention(query, self.key.reshape(num_groups, heads, head_dim, -1),
                              self.value.reshape(num_groups, heads, -1, head_dim), mask, group)

  def rows(self) -> tuple[jax.Array, jax.Array]:
    """Every row's own keys and values `[R, H, S, Dh]`, read through `source` (one copy)."""
    num_groups, heads, group, slots, head_dim = self.value.shape
    index = self.source.reshape(num_groups, 1, group, slots)
    # key[b, h, d, j, s] -> own[b, h, d, g, s] with j = source[b * G + g, s]
    key = jnp.take_along_axis(
        self.key, jnp.broadcast_to(index[:, :, None], (num_groups, heads, head_dim, group, slots)),
        axis=3)
    value = jnp.take_along_axis(
        self.value, jnp.broadcast_to(index[..., None], (num_groups, heads, group, slots, 1)),
        axis=2)
    key = key.transpose(0, 3, 1, 4, 2).reshape(self.num_rows, heads, slots, head_dim)
    value = value.transpose(0, 2, 1, 3, 4).reshape(self.num_rows, heads, slots, head_dim)
    return key, value

  def expand_rows(self, times: int, share: bool = False) -> "SlotKVCache":
    """Each row repeated `times` times (adjacent, as `decoding.expand_rows`). With `share`
    the copies of a row form a group, so beam search can then reorder them without moving
    K/V; without it (sampled sequences, which never reorder) each copy is its own group, so
    its attention reads only its own row."""
    key, value = self.rows()
    return SlotKVCache.from_rows(jnp.repeat(key, times, axis=0), jnp.repeat(value, times, axis=0),
                                 times if share else 1)

  def gather_rows(self, rows: jax.Array, group_size: int | None = None) -> "SlotKVCache":
    """Row r becomes row `rows[r]` (int32 `[R]`).

    `group_size` k promises that every `rows[r]` lies in r's own group of k adjacent rows (as
    beam search's reorders do). When k divides this cache's group, only `source` moves;
    otherwise every row's K/V are copied.
    """
    if group_size is not None and self.group % group_size == 0:
      return self.replace(source=jnp.take(self.source, rows, axis=0))
    key, value = self.rows()
    return SlotKVCache.from_rows(jnp.take(key, rows, axis=0), jnp.take(value, rows, axis=0),
                                 self.group)


@flax.struct.dataclass
class ContextKVCache:
  """Cross-attention keys and values of a context (image tokens, encoder states), one copy per
  group of rows that attend to the same context (an example's beams or sampled sequences).

  Expanding rows only widens the group and a within-group reorder changes nothing, so no
  decoding step copies the context's K/V (a plain row gather copied all of them every beam
  step). Keys are stored `[B, H, Dh, Tk]` and values `[B, H, Tk, Dh]`, the layouts of
  `SlotKVCache`; the G rows of a group attend as one `[G * Tq]`-row query block.

  Attributes:
    key: `[B, H, Dh, Tk]`; value: `[B, H, Tk, Dh]`, for B groups of `group` rows each.
    group: static G.
  """
  key: jax.Array
  value: jax.Array
  group: int = flax.struct.field(pytree_node=False, default=1)

  @classmethod
  def from_rows(cls, key: jax.Array, value: jax.Array) -> "ContextKVCache":
    """The cache of per-row K/V `[R, Tk, H, Dh]` (token-major, as projected), one row a group."""
    return cls(key.transpose(0, 2, 3, 1), value.transpose(0, 2, 1, 3), 1)

  @property
  def num_rows(self) -> int:
    return self.key.shape[0] * self.group

  def rows(self) -> tuple[jax.Array, jax.Array]:
    """Every row's keys and values `[R, Tk, H, Dh]` (a copy per row)."""
    key = jnp.repeat(self.key.transpose(0, 3, 1, 2), self.group, axis=0)
    value = jnp.repeat(self.value.transpose(0, 2, 1, 3), self.group, axis=0)
    return key, value

  def attend(self, query: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Softmax attention of `query` `[R, Tq, H, Dh]` (unscaled) over the row's context.

    Args:
      mask: bool broadcastable to `[R, H, Tq, Tk]` (True = may attend), or None.
    Returns:
      `[R, Tq, H, Dh]` in the query's dtype.
    """
    num_groups, _, _, context = self.key.shape
    if mask is not None:
      mask = _group_mask(mask, num_groups, self.group, query.shape[1], context)
      mask = mask.reshape(mask.shape[:2] + (-1, context))
    return _grouped_attention(query, self.key, self.value, mask, self.group)

  def expand_rows(self, times: int, share: bool = False) -> "ContextKVCache":
    """Each row repeated `times` times: the group widens, nothing is copied (whether or not
    the rows will `share` slots later: a context is read-only)."""
    del share
    return self.replace(group=self.group * times)

  def gather_rows(self, rows: jax.Array, group_size: int | None = None) -> "ContextKVCache":
    """Row r becomes row `rows[r]`. Within groups (`group_size` dividing the group) nothing
    changes; otherwise every row's K/V are copied and each row becomes its own group."""
    if group_size is not None and self.group % group_size == 0:
      return self
    key, value = self.rows()
    return ContextKVCache.from_rows(jnp.take(key, rows, axis=0), jnp.take(value, rows, axis=0))


def _group_mask(mask: jax.Array, num_groups: int, group: int, tq: int,
                keys: int) -> jax.Array:
  """A per-row mask broadcastable to `[R, Hm, Tq, K]` as `[B, Hm, G, Tq, K]` (R = B * G)."""
  mask = jnp.asarray(mask)
  mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
  mask_heads = mask.shape[1]
  mask = jnp.broadcast_to(mask, (num_groups * group, mask_heads, tq, keys))
  return mask.reshape(num_groups, group, mask_heads, tq, keys).transpose(0, 2, 1, 3, 4)


def _grouped_attention(query: jax.Array, keys: jax.Array, values: jax.Array,
                       mask: jax.Array | None, group: int) -> jax.Array:
  """Softmax attention of the G rows of each group as one query block.

  Args:
    query: `[R, Tq, H, Dh]` unscaled, R = B * G rows, each group's rows adjacent.
    keys: `[B, H, Dh, K]`; values: `[B, H, K, Dh]`, the keys every row of a group may read.
    mask: bool `[B, Hm, G * Tq, K]` (Hm = 1 or H), True = may attend, or None.
  Returns:
    `[R, Tq, H, Dh]` in the query's dtype.
  """
  rows, tq, heads, head_dim = query.shape
  num_groups = rows // group
  query = query * jnp.asarray(head_dim ** -0.5, query.dtype)
  # [R, Tq, H, Dh] -> [B, H, G * Tq, Dh]: the query is small, so it moves, not the cache.
  q = query.reshape(num_groups, group, tq, heads, head_dim).transpose(0, 3, 1, 2, 4)
  q = q.reshape(num_groups, heads, group * tq, head_dim)
  logits = jnp.einsum("bhqd,bhdk->bhqk", q, keys, preferred_element_type=jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(query.dtype)
  out = jnp.einsum("bhqk,bhkd->bhqd", weights, values)
  out = out.reshape(num_groups, heads, group, tq, head_dim).transpose(0, 2, 3, 1, 4)
  return out.reshape(rows, tq, heads, head_dim)
