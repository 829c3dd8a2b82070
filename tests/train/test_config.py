"""Config loading and CLI overrides."""
import subprocess
import sys

import pytest

from mmjax.train.config import apply_overrides, flat_keys, load_config

from conftest import CONFIG, ROOT


def test_overrides_are_typed():
  config = apply_overrides(load_config(CONFIG), [
      "batch_size=64", "optim.learning_rate=1", "model.remat=true", "data.num_objects=[1,2]",
      "loss.block_size=32", "model.dtype=bfloat16"])
  assert config.batch_size == 64
  assert isinstance(config.optim.learning_rate, float) and config.optim.learning_rate == 1.0
  assert config.model.remat is True
  assert config.data.num_objects == (1, 2)
  assert config.loss.block_size == 32
  assert config.model.dtype == "bfloat16"


def test_unknown_key_lists_valid_keys():
  config = load_config(CONFIG)
  with pytest.raises(ValueError, match="unknown config key 'batch_sise'") as info:
    apply_overrides(config, ["batch_sise=3"])
  for key in flat_keys(config):
    assert key in str(info.value)


def test_wrong_type_is_an_error():
  with pytest.raises(ValueError, match="bad value for config key 'batch_size'"):
    apply_overrides(load_config(CONFIG), ["batch_size=abc"])


def test_missing_config_file():
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_config(ROOT / "configs" / "nope.py")


def test_cli_rejects_unknown_key(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "mmjax.cli", "train", "--config", str(CONFIG), "--workdir",
       str(tmp_path / "w"), "--config.modle.width=3"], capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 2
  assert "unknown config key 'modle.width'" in proc.stderr
  assert "model.image.width" in proc.stderr
  assert not (tmp_path / "w").exists()  # nothing was created for a bad command
