"""Device mesh and the one logical-axis rule table that shards every mmjax model.

Mesh axes are `data` (pure data parallel), `fsdp` (data parallel with parameters sharded over
the same devices) and `tensor` (model parallel over heads / MLP / vocab). The batch is split
over `data` x `fsdp`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axis (or None = replicated). One table for every model.
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("embed_out", None),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("length", None),
)


def mesh_shape(axis_sizes: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
  """Resolves `{"data": -1, "fsdp": 2, "tensor": 1}` (-1 = the rest) to a concrete shape."""
  unknown = set(axis_sizes) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)}; valid axes are {MESH_AXES}")
  sizes = [int(axis_sizes.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"{num_devices} devices cannot be split into mesh {dict(zip(MESH_AXES, sizes))}")
    sizes[sizes.index(-1)] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} has {int(np.prod(sizes))} devices but "
                     f"{num_devices} are available")
  return tuple(sizes)


def make_mesh(axis_sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the (data, fsdp, tensor) mesh.

  Devices are laid out in process-major order, so on multi-host runs process p owns a
  contiguous block of the batch: rows [p * B / P, (p + 1) * B / P) of every global batch.
  """
  devices = list(jax.devices() if devices is None else devices)
  devices.sort(key=lambda d: (d.process_index, d.id))
  shape = mesh_shape(axis_sizes, len(devices))
  return Mesh(np.array(devices).reshape(shape), MESH_AXES)


def data_parallel_size(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def _divisible_spec(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
  """Drops mesh axes from dimensions they do not divide (those dimensions are replicated)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    out.append(axes if names and dim % size == 0 else None)
  return P(*out)


def logical_shardings(abstract_tree: Any, mesh: Mesh,
                      rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> Any:
  """NamedShardings for a tree of (possibly `nn.LogicallyPartitioned`) abstract arrays.

  Leaves without logical names are replicated.
  """
  specs = nn.get_partition_spec(abstract_tree)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  unboxed = nn.unbox(abstract_tree)
  return jax.tree.map(lambda spec, leaf: NamedSharding(mesh, _divisible_spec(spec, leaf.shape, mesh)),
                      mesh_specs, unboxed, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of batch arrays: leading axis over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def host_batch_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each host's slice `[B / P, ...]` into global arrays `[B, ...]` sharded on batch."""
  sharding = batch_sharding(mesh)
  procs = jax.process_count()
  return {k: jax.make_array_from_process_local_data(
      sharding, np.asarray(v), (np.shape(v)[0] * procs,) + np.shape(v)[1:]) for k, v in batch.items()}


def replicate_from_host(tree: Any, mesh: Mesh, sharding: NamedSharding | None = None) -> Any:
  """Places host arrays that every process holds in full onto `sharding` (default replicated)."""
  sharding = sharding or replicated(mesh)
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(put, tree)


def map_in_chunks(fn, arrays: tuple[np.ndarray, ...], mesh: Mesh, batch_size: int, *,
                  host: bool = True) -> list[tuple[int, Any]]:
  """Runs `fn(*chunk)` over host `arrays` (all `[N, ...]`, every process holding them in full)
  in fixed-size chunks, zero-padded and sharded over the batch axes: one compilation of `fn`
  whatever N is.

  The chunk is `batch_size` rounded up to the data-parallel size. Returns [(rows, output)] per
  chunk, `output` covering the padded chunk (slice it to `rows`): on the host (numpy, via
  `to_host`) or, with `host=False`, the device arrays.
  """
  dp = data_parallel_size(mesh)
  chunk = -(-int(batch_size) // dp) * dp
  outputs = []
  for start in range(0, len(arrays[0]), chunk):
    parts = [np.asarray(a[start:start + chunk]) for a in arrays]
    count = len(parts[0])
    padded = tuple(np.concatenate([p, np.zeros((chunk - count,) + p.shape[1:], p.dtype)])
                   for p in parts)
    output = fn(*replicate_from_host(padded, mesh, batch_sharding(mesh)))
    outputs.append((count, to_host(output) if host else output))
  return outputs


def to_host(tree: Any) -> Any:
  """Fetches fully replicated (or single-process) arrays to numpy on every process."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.is_fully_replicated:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(get, tree)
