"""`mmjax train|eval|sample ...`: the command-line entry point."""
from __future__ import annotations

import argparse
import json
import pathlib
import sys


def _parse(argv):
  parser = argparse.ArgumentParser(prog="mmjax", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
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


def main(argv=None) -> int:
  args, overrides = _parse(sys.argv[1:] if argv is None else argv)
  from mmjax.train.config import apply_overrides, load_config
  try:
    config = apply_overrides(load_config(args.config), overrides)
  except (ValueError, FileNotFoundError) as e:
    print(f"mmjax: error: {e}", file=sys.stderr)
    return 2
  import jax
  if getattr(args, "distributed", False):
    jax.distributed.initialize()
  workdir = pathlib.Path(args.workdir)
  if args.command == "sample":
    try:
      path = sample_checkpoint(config, workdir, args)
    except (ValueError, FileNotFoundError) as e:
      print(f"mmjax: error: {e}", file=sys.stderr)
      return 2
    if jax.process_index() == 0:
      print(f"wrote {path} (rows: {'; '.join(args.prompt)})")
    return 0
  if args.command == "train":
    from mmjax.train.trainer import train
    if jax.process_index() == 0:
      _save_config(config, workdir)
    result = train(config, workdir, progress=not args.no_progress)
    if jax.process_index() == 0:
      print_table(result.eval_metrics)
    return 143 if result.preempted else 0
  from mmjax.train.eval_results import eval_record, write_eval_record
  from mmjax.train.trainer import evaluate_checkpoint
  try:
    metrics = evaluate_checkpoint(config, workdir)
  except FileNotFoundError as e:
    print(f"mmjax: error: {e}", file=sys.stderr)
    return 2
  if jax.process_index() == 0:
    print_table(metrics)
    record = eval_record(metrics, int(metrics["step"]), config, args.config, overrides)
    print(f"wrote {write_eval_record(workdir, record)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
