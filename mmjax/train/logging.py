"""Metric writers: metrics.jsonl / train.jsonl, TensorBoard event files when available."""
from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Mapping

from mmjax.errors import MetricsWriteError


def _jsonable(value):
  value = float(value) if hasattr(value, "__float__") else value
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


class MetricWriter:
  """Appends one JSON object per call to `<workdir>/<name>.jsonl` (and TensorBoard scalars).

  A failed append raises MetricsWriteError naming the file and the OS error.
  """

  def __init__(self, workdir: str | pathlib.Path, enabled: bool = True):
    self.workdir = pathlib.Path(workdir)
    self.enabled = enabled
    self._tb = None
    if enabled:
      self.workdir.mkdir(parents=True, exist_ok=True)
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
      except ImportError:  # TensorBoard logging is optional.
        self._tb = None

  def write(self, name: str, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
    path = self.workdir / f"{name}.jsonl"
    try:
      with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    except OSError as e:
      raise MetricsWriteError(f"cannot append step {int(step)} to {path} ({e.strerror or e})"
                              ) from e
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, float):
          self._tb.add_scalar(f"{name}/{k}", v, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str | pathlib.Path) -> list[dict]:
  """Records of a jsonl file, keeping the last record per step (a resumed run rewrites steps)."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  by_step = {}
  for line in path.read_text().splitlines():
    if line.strip():
      record = json.loads(line)
      by_step[record["step"]] = record
  return [by_step[s] for s in sorted(by_step)]
