"""What `mmjax eval` leaves in a workdir: `eval/step_<N>.json`, one file per evaluation.

A figure quoted from an evaluation is backed by this file: it holds the metrics, the step of
the checkpoint, the config file and overrides of the command, and the config's `eval` section
(how many examples each metric was computed on). An existing file is never overwritten: a
second evaluation of the same step with other settings goes to `step_<N>.1.json`, and so on.
"""
from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence

import ml_collections


def eval_record(metrics: Mapping[str, float], step: int, config: ml_collections.ConfigDict,
                config_path: str, overrides: Sequence[str]) -> dict:
  """The JSON object of one evaluation (metrics as floats, `step` kept out of them)."""
  eval_section = config.get("eval")
  return {
      "step": int(step),
      "metrics": {k: float(v) for k, v in metrics.items() if k != "step"},
      "config": str(config_path),
      "overrides": [f"--config.{o}" for o in overrides],
      "task": config.get("task"),
      "eval": eval_section.to_dict() if eval_section is not None else {},
  }


def write_eval_record(workdir: str | pathlib.Path, record: dict) -> pathlib.Path:
  """Writes `record` to `<workdir>/eval/step_<N>[.k].json` (first free name); returns it."""
  directory = pathlib.Path(workdir) / "eval"
  directory.mkdir(parents=True, exist_ok=True)
  text = json.dumps(record, indent=2, default=str) + "\n"
  base = f"step_{record['step']}"
  path, copy = directory / f"{base}.json", 0
  while path.exists():
    if path.read_text() == text:  # The same evaluation again: nothing new to keep.
      return path
    copy += 1
    path = directory / f"{base}.{copy}.json"
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(text)
  tmp.replace(path)
  return path


def read_eval_records(workdir: str | pathlib.Path) -> list[dict]:
  """Every `eval/step_*.json` record of `workdir`, ordered by step then file name."""
  directory = pathlib.Path(workdir) / "eval"
  paths = list(directory.glob("step_*.json")) if directory.is_dir() else []

  def order(path: pathlib.Path) -> tuple[int, int]:
    step, _, copy = path.name[len("step_"):-len(".json")].partition(".")
    return int(step), int(copy or 0)

  return [json.loads(p.read_text()) for p in sorted(paths, key=order)]
