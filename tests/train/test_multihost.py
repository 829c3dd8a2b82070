"""2 processes x 4 CPU devices (gloo on loopback) == 1 process x 8 devices: same losses, same
final params. Each process feeds only its slice of the global batch, so a process reading the
wrong slice (e.g. process 1 reading process 0's) changes the global batch and both."""
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np

from mmjax.train.logging import read_jsonl

from conftest import ROOT, TINY, assert_params_close

WORKER = ROOT / "tests" / "train" / "multihost_worker.py"
TIMEOUT_S = 300


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _kill_all(procs):
  for p in procs:
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGKILL)  # The worker's process group: nothing is left behind.
  for p in procs:
    p.wait()


def _run(num_processes, local_devices, workdir):
  """Runs the workers; returns (logged losses, {leaf path: final param}). Fails (killing every
  worker) as soon as one worker fails or the run passes TIMEOUT_S."""
  port = _free_port()
  workdir.mkdir(parents=True)
  overrides = TINY + ["total_steps=5", "mesh.data=4", "mesh.fsdp=2"]
  logs = [workdir / f"worker_{i}.log" for i in range(num_processes)]
  procs = []
  try:
    for i, log in enumerate(logs):
      with open(log, "w") as out:  # Files, not pipes: a full pipe would stall a worker.
        procs.append(subprocess.Popen(
            [sys.executable, str(WORKER), str(i), str(num_processes), str(port), str(workdir),
             str(local_devices), *overrides], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True))
    deadline = time.monotonic() + TIMEOUT_S
    while any(p.poll() is None for p in procs):
      failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
      assert not failed, f"worker {failed[0]} failed:\n" + logs[failed[0]].read_text()[-3000:]
      assert time.monotonic() < deadline, f"workers still running after {TIMEOUT_S} s:\n" + \
          "\n".join(log.read_text()[-1500:] for log in logs)
      time.sleep(0.2)
    for p, log in zip(procs, logs):
      assert p.returncode == 0, log.read_text()[-3000:]
  finally:
    _kill_all(procs)
  losses = np.array([r["loss"] for r in read_jsonl(workdir / "train.jsonl")])
  with np.load(workdir / "params.npz") as params:
    return losses, dict(params)


def test_two_processes_match_one_process(tmp_path):
  single_losses, single_params = _run(1, 8, tmp_path / "single")
  multi_losses, multi_params = _run(2, 4, tmp_path / "multi")
  assert len(single_losses) == 5
  np.testing.assert_allclose(multi_losses, single_losses, rtol=1e-5)
  assert len(single_params) > 10, sorted(single_params)
  assert_params_close(multi_params, single_params, "2 processes vs 1")
