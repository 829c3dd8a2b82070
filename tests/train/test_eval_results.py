"""`mmjax eval` writes what it printed to WORKDIR/eval/step_N.json and never overwrites one."""
import json

import jax
import numpy as np

from mmjax import cli
from mmjax.train.eval_results import read_eval_records
from mmjax.train.trainer import train

from conftest import CONFIG, TINY, tiny_config


def test_eval_writes_metrics_with_its_command_and_keeps_earlier_files(tmp_path, capsys):
  result = train(tiny_config(), tmp_path, progress=False)
  overrides = TINY + ["eval.batch_size=16"]
  argv = ["eval", "--config", str(CONFIG), "--workdir", str(tmp_path)]
  assert cli.main(argv + [f"--config.{o}" for o in overrides]) == 0
  printed = capsys.readouterr().out
  path = tmp_path / "eval" / f"step_{result.step}.json"
  assert f"wrote {path}" in printed
  record = json.loads(path.read_text())
  assert record["step"] == result.step == 6
  assert record["config"] == str(CONFIG) and record["task"] == "contrastive"
  assert record["overrides"] == [f"--config.{o}" for o in overrides]
  assert record["eval"]["retrieval_images"] == 8 and record["eval"]["zero_shot_images"] == 16
  # The file holds the metrics of the trained state (the end-of-run evaluation), not others.
  assert set(record["metrics"]) == set(result.eval_metrics)
  for key, value in result.eval_metrics.items():
    np.testing.assert_allclose(record["metrics"][key], value, rtol=1e-5, err_msg=key)
  for key, value in record["metrics"].items():
    assert any(line.split()[:1] == [key] and abs(float(line.split()[1]) - value) < 1e-4
               for line in printed.splitlines()), (key, printed)

  # The same evaluation again leaves one file; other settings go beside it, not over it.
  assert cli.main(argv + [f"--config.{o}" for o in overrides]) == 0
  assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["step_6.json"]
  more = overrides + ["eval.retrieval_images=16"]
  assert cli.main(argv + [f"--config.{o}" for o in more]) == 0
  assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["step_6.1.json", "step_6.json"]
  records = read_eval_records(tmp_path)
  assert [r["eval"]["retrieval_images"] for r in records] == [8, 16]
  assert json.loads(path.read_text()) == record
