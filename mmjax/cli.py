"""`mmjax train|eval ...`: the command-line entry point."""
from __future__ import annotations

import argparse
import json
import pathlib
import sys


def _parse(argv):
  parser = argparse.ArgumentParser(prog="mmjax", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  for name, help_text in (("train", "train (or resume) a config in a workdir"),
                          ("eval", "evaluate the latest checkpoint of a workdir")):
    p = sub.add_parser(name, help=help_text,
                       epilog="Override any config value with --config.KEY=VALUE, "
                              "e.g. --config.batch_size=256 --config.model.image.width=256")
    p.add_argument("--config", required=True, help="path to a configs/*.py file")
    p.add_argument("--workdir", required=True, help="directory for checkpoints and results")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (multi-host runs)")
  args, rest = parser.parse_known_args(argv)
  overrides = []
  for item in rest:
    if not item.startswith("--config."):
      parser.error(f"unrecognised argument {item!r} (config overrides look like --config.KEY=VALUE)")
    overrides.append(item[len("--config."):])
  return args, overrides


def _save_config(config, workdir: pathlib.Path) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str))


def print_table(metrics: dict[str, float]) -> None:
  width = max(map(len, metrics), default=0)
  print("\n" + "-" * (width + 12))
  for key, value in metrics.items():
    print(f"{key:<{width}}  {value:>9.4f}")
  print("-" * (width + 12))


def main(argv=None) -> int:
  args, overrides = _parse(sys.argv[1:] if argv is None else argv)
  from mmjax.train.config import apply_overrides, load_config
  try:
    config = apply_overrides(load_config(args.config), overrides)
  except (ValueError, FileNotFoundError) as e:
    print(f"mmjax: error: {e}", file=sys.stderr)
    return 2
  import jax
  if args.distributed:
    jax.distributed.initialize()
  workdir = pathlib.Path(args.workdir)
  if args.command == "train":
    from mmjax.train.trainer import train
    if jax.process_index() == 0:
      _save_config(config, workdir)
    result = train(config, workdir, progress=not args.no_progress)
    if jax.process_index() == 0:
      print_table(result.eval_metrics)
    return 143 if result.preempted else 0
  from mmjax.train.trainer import evaluate_checkpoint
  metrics = evaluate_checkpoint(config, workdir)
  if jax.process_index() == 0:
    print_table(metrics)
  return 0


if __name__ == "__main__":
  sys.exit(main())
