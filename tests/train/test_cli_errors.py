"""`mmjax train|eval|sample`: every user error is one `mmjax: error:` line and exit status 2;
`--debug` / MMJAX_DEBUG=1 add the traceback; mmjax's own bugs keep theirs."""
import subprocess
import sys

import pytest

from mmjax import cli

from conftest import CONFIG, ROOT, TINY

T2I = ROOT / "configs" / "t2i_shapeworld.py"


def _train(workdir, *extra):
  return ["train", "--config", str(CONFIG), "--workdir", str(workdir),
          *[f"--config.{o}" for o in TINY], *extra]


# (arguments with W for the workdir, text the error line must hold)
CASES = {
    "no command": ([], "the following arguments are required: command"),
    "unknown command": (["frobnicate"], "invalid choice: 'frobnicate'"),
    "missing --config": (["train", "--workdir", "W"],
                         "the following arguments are required: --config"),
    "unknown argument": (_train("W", "--bogus"), "unrecognised argument '--bogus'"),
    "bad int argument": (["sample", "--config", str(T2I), "--workdir", "W", "--prompt", "x",
                          "--steps", "many"], "argument --steps: invalid int value: 'many'"),
    "missing config file": (["train", "--config", "configs/nope.py", "--workdir", "W"],
                            "config file 'configs/nope.py' does not exist"),
    "variant of a config without variants": (
        ["train", "--config", f"{CONFIG}:large", "--workdir", "W"], "takes no argument"),
    "unknown variant": (["train", "--config", f"{T2I}:gan", "--workdir", "W"],
                        "takes DENOISER in ['dit', 'unet'], got 'gan'"),
    "unknown config key": (_train("W", "--config.batch_sise=3"),
                           "unknown config key 'batch_sise'; valid keys are"),
    "override without a value": (_train("W", "--config.batch_size"),
                                 "config override 'batch_size' must look like key=value"),
    "wrong value type": (_train("W", "--config.batch_size=abc"),
                         "bad value for config key 'batch_size'"),
    "batch not divisible": (_train("W", "--config.batch_size=12"),
                            "batch_size=12 is not divisible by the data-parallel size 8"),
    "unknown task": (_train("W", "--config.task=nope"), "unknown task 'nope'"),
    "unknown model": (_train("W", "--config.model.name=nope"), "nope"),
    "jsonl data without a path": (_train("W", "--config.data.name=jsonl"),
                                  "data.name='jsonl' needs data.path"),
    "unknown data source": (_train("W", "--config.data.name=coco"),
                            "data.name must be one of ('shapeworld', 'jsonl', 'tfds'), got 'coco'"),
    "eval without checkpoints": (["eval", "--config", str(CONFIG), "--workdir", "W"],
                                 "no checkpoint in W/checkpoints (no such directory)"),
    "sample from a task that cannot": (
        ["sample", "--config", str(CONFIG), "--workdir", "W", "--prompt", "a red square"],
        "task 'contrastive' cannot sample"),
    "sample without checkpoints": (
        ["sample", "--config", str(T2I), "--workdir", "W", "--prompt", "a red square"],
        "no checkpoint in W/checkpoints"),
    "sample zero images": (
        ["sample", "--config", str(T2I), "--workdir", "W", "--prompt", "a red square",
         "--num-samples", "0"], "--num-samples must be >= 1, got 0"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_error_is_one_line_and_status_2(case, tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(ROOT)
  monkeypatch.delenv("MMJAX_DEBUG", raising=False)
  workdir = tmp_path / "run"
  args, expected = CASES[case]
  args = [str(workdir) if a == "W" else a for a in args]
  try:
    code = cli.main(args)
  except SystemExit as e:  # argparse's usage errors exit from inside the parser
    code = e.code
  err = capsys.readouterr().err
  expected = expected.replace("W/", f"{workdir}/")
  assert code == 2, err
  lines = err.splitlines()
  assert len(lines) == 1 and lines[0].startswith("mmjax: error: "), err
  assert expected in lines[0], lines[0]
  assert not workdir.exists()  # a command that fails on its input writes nothing


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
  monkeypatch.delenv("MMJAX_DEBUG", raising=False)
  for args, env in (((["--debug"], {}), ([], {"MMJAX_DEBUG": "1"}))):
    for key, value in env.items():
      monkeypatch.setenv(key, value)
    assert cli.main([*args, *_train(tmp_path / "run", "--config.batch_sise=3")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):"), err
    assert err.splitlines()[-1].startswith("mmjax: error: unknown config key 'batch_sise'")


def test_internal_errors_keep_their_traceback(tmp_path, monkeypatch):
  import mmjax.train.trainer

  def broken_train(*args, **kwargs):
    raise TypeError("an mmjax bug")

  monkeypatch.setattr(mmjax.train.trainer, "train", broken_train)
  with pytest.raises(TypeError, match="an mmjax bug"):
    cli.main(_train(tmp_path / "run"))


def test_the_process_exits_2_without_a_traceback(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "mmjax.cli", *_train(tmp_path / "run",
                                                                   "--config.task=nope")],
                        capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 2
  assert proc.stderr.splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
  assert proc.stderr.startswith("mmjax: error: unknown task 'nope'")
