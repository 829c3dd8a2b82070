"""Prints the trained captioner's captions of the first N test images next to their references.

  nice -n 19 python experiments/caption_shapeworld/examples.py --workdir /tmp/cap_run [--n 5]
"""
import argparse
import pathlib

from mmjax.train.config import load_config
from mmjax.train.trainer import restore_params

ROOT = pathlib.Path(__file__).resolve().parents[2]


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--config", default=str(ROOT / "configs" / "caption_shapeworld.py"))
  parser.add_argument("--n", type=int, default=5)
  args = parser.parse_args()
  run = restore_params(load_config(args.config), args.workdir)
  data = run.task._eval_data()
  captions = run.task.generate_captions(run.params, data["image"][:args.n], run.mesh)
  for index, (caption, refs) in enumerate(zip(captions, data["references"])):
    print(f"| {index} | {int(data['num_objects'][index])} | {caption} | "
          + " / ".join(refs) + " |")


if __name__ == "__main__":
  main()
