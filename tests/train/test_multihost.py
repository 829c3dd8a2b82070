"""2 processes x 4 CPU devices (gloo on loopback) == 1 process x 8 devices."""
import socket
import subprocess
import sys

import numpy as np

from mmjax.train.logging import read_jsonl

from conftest import ROOT, TINY

WORKER = ROOT / "tests" / "train" / "multihost_worker.py"


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run(num_processes, local_devices, workdir):
  port = _free_port()
  overrides = TINY + ["total_steps=5", "mesh.data=4", "mesh.fsdp=2"]
  procs = [subprocess.Popen([sys.executable, str(WORKER), str(i), str(num_processes), str(port),
                             str(workdir), str(local_devices), *overrides], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(num_processes)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return np.array([r["loss"] for r in read_jsonl(workdir / "train.jsonl")])


def test_two_processes_match_one_process(tmp_path):
  single = _run(1, 8, tmp_path / "single")
  multi = _run(2, 4, tmp_path / "multi")
  assert len(single) == 5
  np.testing.assert_allclose(multi, single, rtol=1e-5)
