"""One process of a simulated multi-host run (launched by test_multihost.py).

usage: multihost_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR DEVICES_PER_PROCESS [overrides]
"""
import os
import sys

process_id, num_processes, port, workdir, local_devices = sys.argv[1:6]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
if int(num_processes) > 1:
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=int(num_processes),
                             process_id=int(process_id))

from mmjax.train.config import apply_overrides, load_config  # noqa: E402
from mmjax.train.trainer import train  # noqa: E402

config = apply_overrides(load_config(os.path.join(os.path.dirname(__file__), "..", "..", "configs",
                                                  "clip_shapeworld.py")), sys.argv[6:])
train(config, workdir, progress=False)
print(f"process {process_id}: done", flush=True)
