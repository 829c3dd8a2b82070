"""One process of a simulated multi-host run (launched by test_multihost.py).

usage: multihost_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR DEVICES_PER_PROCESS [overrides]

Process 0 writes the final params, gathered from all processes, to WORKDIR/params.npz (one
array per leaf, named by its key path).
"""
import os
import sys

process_id, num_processes, port, workdir, local_devices = sys.argv[1:6]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
if int(num_processes) > 1:
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=int(num_processes),
                             process_id=int(process_id))

from mmjax.train import sharding  # noqa: E402
from mmjax.train.config import apply_overrides, load_config  # noqa: E402
from mmjax.train.trainer import train  # noqa: E402

config = apply_overrides(load_config(os.path.join(os.path.dirname(__file__), "..", "..", "configs",
                                                  "clip_shapeworld.py")), sys.argv[6:])
result = train(config, workdir, progress=False)
params = sharding.to_host(result.state.params)  # Collective: every process takes part.
if jax.process_index() == 0:
  np.savez(os.path.join(workdir, "params.npz"),
           **{jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)})
print(f"process {process_id}: done", flush=True)
