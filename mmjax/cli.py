"""`mmjax train|eval|sample|zero-shot|embed|retrieve ...`: the command-line entry point.

Every user error (a bad argument, config, data file, checkpoint or workdir) ends as one
`mmjax: error: ...` line on stderr and exit status 2; a run that stops on a fault of its
machine or numbers (a full disk, a NaN loss) prints one line and exits 1; a run stopped by
SIGTERM exits 143 after saving. `--debug` (or MMJAX_DEBUG=1) prints the traceback too.
mmjax's own bugs keep their traceback.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import traceback

from mmjax import image_commands
from mmjax.errors import MmjaxError, RunFault

# Builtin errors that mmjax raises for bad input (and library code raises for bad arguments);
# anything else escaping a command is a bug and keeps its traceback.
USER_ERROR_TYPES = (MmjaxError, ValueError, KeyError, FileNotFoundError, NotADirectoryError,
                    IsADirectoryError, PermissionError)


class _Parser(argparse.ArgumentParser):
  """argparse with its usage errors as one `mmjax: error:` line (exit 2)."""

  def error(self, message):
    self.exit(2, f"mmjax: error: {message} (see `{self.prog} --help`)\n")


def _parse(argv):
  parser = _Parser(prog="mmjax", description=__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--debug", action="store_true",
                      help="print the traceback of an error (also: MMJAX_DEBUG=1)")
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
  for name, help_text in (("train", "train (or resume) a config in a workdir"),
                          ("eval", "evaluate the latest checkpoint of a workdir and write the "
                                   "metrics to WORKDIR/eval/step_N.json")):
    p = sub.add_parser(name, help=help_text,
                       epilog="Override any config value with --config.KEY=VALUE, "
                              "e.g. --config.batch_size=256 --config.model.embed_dim=256")
    p.add_argument("--config", required=True, help="a configs/*.py file (FILE:ARG: a variant)")
    p.add_argument("--workdir", required=True, help="directory for checkpoints and results")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (multi-host runs)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
  p = sub.add_parser("sample", help="write a PNG grid of samples from the latest checkpoint",
                     epilog="Defaults for --steps/--guidance/--sampler/--seed come from the "
                            "config's `sample` section; --config.KEY=VALUE overrides apply.")
  p.add_argument("--config", required=True, help="a configs/*.py file (FILE:ARG: a variant)")
  p.add_argument("--workdir", required=True, help="directory holding checkpoints/")
  p.add_argument("--prompt", action="append", required=True,
                 help="a caption; repeat for several (one grid row each)")
  p.add_argument("--num-samples", type=int, default=4, help="samples per prompt (grid columns)")
  p.add_argument("--steps", type=int, default=None, help="sampler steps (default: config)")
  p.add_argument("--guidance", type=float, default=None,
                 help="classifier-free guidance scale (default: config)")
  p.add_argument("--sampler", default=None, help="ddim or dpmpp_2m (default: config)")
  p.add_argument("--seed", type=int, default=None, help="noise seed (default: config)")
  p.add_argument("--out", default=None, help="PNG path (default: WORKDIR/samples_cli.png)")
  p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
  image_commands.add_parsers(sub)
  args, rest = parser.parse_known_args(argv)
  overrides = []
  for item in rest:
    if args.command in image_commands.COMMANDS:
      parser.error(f"unrecognised argument {item!r} for `mmjax {args.command}`")
    if not item.startswith("--config."):
      parser.error(f"unrecognised argument {item!r} (config overrides look like --config.KEY=VALUE)")
    overrides.append(item[len("--config."):])
  return args, overrides


def print_table(metrics: dict[str, float]) -> None:
  width = max(map(len, metrics), default=0)
  print("\n" + "-" * (width + 12))
  for key, value in metrics.items():
    print(f"{key:<{width}}  {value:>9.4f}")
  print("-" * (width + 12))


def sample_checkpoint(config, workdir: pathlib.Path, args) -> pathlib.Path:
  """Restores the latest checkpoint of `workdir` and writes the task's sample grid PNG."""
  import jax
  from mmjax.train.tasks import get_task_class
  from mmjax.train.trainer import restore_params
  task_class = get_task_class(config.task)
  if not hasattr(task_class, "sample"):
    raise ValueError(f"task {config.task!r} cannot sample (it has no `sample` method); "
                     "`mmjax sample` needs a generative task such as 'diffusion'")
  defaults = config.get("sample") or {}
  options = dict(steps=args.steps, guidance=args.guidance, sampler=args.sampler, seed=args.seed)
  options = {k: defaults.get(k) if v is None else v for k, v in options.items()}
  missing = sorted(k for k, v in options.items() if v is None)
  if missing:
    raise ValueError(f"give --{' --'.join(missing)} (the config has no sample defaults for them)")
  if args.num_samples < 1:
    raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
  run = restore_params(config, workdir)
  images = run.task.sample(run.params, args.prompt, num_samples=args.num_samples, **options)
  out = pathlib.Path(args.out) if args.out else workdir / "samples_cli.png"
  if jax.process_index() == 0:
    from mmjax.train.plots import save_image_grid
    save_image_grid(out, images, columns=args.num_samples, zoom=int(defaults.get("zoom", 1)))
  return out


def _run(args, overrides) -> int:
  if args.command in image_commands.COMMANDS:
    return image_commands.run(args)
  from mmjax.train.config import apply_overrides, load_config
  config = apply_overrides(load_config(args.config), overrides)
  import jax
  if getattr(args, "distributed", False):
    jax.distributed.initialize()
  workdir = pathlib.Path(args.workdir)
  is_main = jax.process_index() == 0
  if args.command == "sample":
    path = sample_checkpoint(config, workdir, args)
    if is_main:
      print(f"wrote {path} (rows: {'; '.join(args.prompt)})")
    return 0
  if args.command == "train":
    from mmjax.train.trainer import train
    result = train(config, workdir, progress=not args.no_progress)
    if is_main:
      print_table(result.eval_metrics)
    return 143 if result.preempted else 0
  from mmjax.train.eval_results import eval_record, write_eval_record
  from mmjax.train.trainer import evaluate_checkpoint
  metrics = evaluate_checkpoint(config, workdir)
  if is_main:
    print_table(metrics)
    record = eval_record(metrics, int(metrics["step"]), config, args.config, overrides)
    print(f"wrote {write_eval_record(workdir, record)}")
  return 0


def error_line(error: BaseException) -> str:
  """`mmjax: error: <message>` on one line (a KeyError's message without its quotes)."""
  message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
  message = " ".join(str(message).split()) or type(error).__name__
  return f"mmjax: error: {message}"


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  args, overrides = _parse(argv)
  debug = args.debug or os.environ.get("MMJAX_DEBUG", "") not in ("", "0")
  try:
    return _run(args, overrides)
  except RunFault as e:
    code = 1
    error = e
  except USER_ERROR_TYPES as e:
    code = 2
    error = e
  if debug:
    traceback.print_exception(error)
  print(error_line(error), file=sys.stderr, flush=True)
  return code


if __name__ == "__main__":
  sys.exit(main())
