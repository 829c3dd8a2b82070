"""Where a coordinate-token grounder fails: each corner's bin, teacher-forced, on the test
expressions, for an OFA run and for the dedicated tokens head.

  python experiments/ofa_shapeworld/diagnose_grounding.py \
      --ofa runs/ofa_clip_init --ofa-override init_from.workdir=runs/clip \
      --tokens runs/grounding_tokens --out experiments/ofa_shapeworld/grounding_diagnosis.json
  python experiments/ofa_shapeworld/diagnose_grounding.py --table \
      experiments/ofa_shapeworld/grounding_diagnosis.json      # the README's table of it

For the first `--num` test expressions of each run's own eval set, the model reads the true
target row (BOS, then the true bins x0 y0 x1 y1) and predicts each bin from the true ones before
it. Reported per corner: the share of exact bins and of bins within one of the truth, and
acc@0.5 of the box of the four teacher-forced argmaxes (x1, y1 then come from the true x0, y0)
beside the greedy decoding's (the run's own eval). A model that knows the object's size but
not where it is gets x1, y1 right given x0, y0 and x0, y0 wrong.
"""
import argparse
import json
import pathlib
import sys

import jax.numpy as jnp
import numpy as np

from mmjax.metrics.boxes import matched_box_iou
from mmjax.models.grounding import NUM_BOX_TOKENS, dequantize_coordinates, quantize_coordinates
from mmjax.train.config import apply_overrides, load_run_config
from mmjax.train.restore import restore_params

CORNERS = ("x0", "y0", "x1", "y1")


def teacher_forced_bins(kind, task, params, num):
  """(true bins int `[N, 4]`, teacher-forced argmax bins `[N, 4]`, greedy boxes `[N, 4]`,
  true boxes `[N, 4]`) on the first `num` test expressions."""
  if kind == "ofa":
    data = task._eval_data()
    image, instruction = data["image"][:num], data["grounding_instruction"][:num]
    box = data["box"][:num]
    first, bins_n = task.word_vocab_size, task.num_bins
    true_bins = quantize_coordinates(box, bins_n)
    # The decoder's prompt: BOS, or BOS + the instruction's words (prompt_type "prev_output").
    prompt, lengths = (np.asarray(x) for x in task._prompts(instruction))
    tokens = np.zeros((num, task.config.data.context_length), np.int32)
    for r in range(num):
      row = [*prompt[r, :lengths[r]], *(first + true_bins[r]), task.tokenizer.eos_id]
      tokens[r, :len(row)] = row
    logits = task.model.apply({"params": params}, image, instruction, tokens)
    steps = lengths[:, None] - 1 + np.arange(NUM_BOX_TOKENS)
    greedy = task._predict_boxes(params, {"image": jnp.asarray(image),
                                          "instruction": jnp.asarray(instruction)})
  else:
    data = task._eval_data()
    image, tokens, box = data["image"][:num], data["tokens"][:num], data["box"][:num]
    first, bins_n = task.tokenizer.vocab_size, task.num_bins
    true_bins = quantize_coordinates(box, bins_n)
    logits = task.model.apply({"params": params}, image, tokens)
    steps = data["prompt_length"][:num, None] - 1 + np.arange(NUM_BOX_TOKENS)
    greedy = task._predict_boxes(params, {
        "image": jnp.asarray(image),   # the box tokens take the decoder's last positions
        "prompt": jnp.asarray(data["prompt"][:num, :task.config.data.context_length
                                               - NUM_BOX_TOKENS]),
        "prompt_length": jnp.asarray(data["prompt_length"][:num])})
  at_steps = np.take_along_axis(np.asarray(logits), steps[..., None], axis=1)  # [N, 4, V]
  predicted = np.argmax(at_steps[..., first:first + bins_n], -1)
  return true_bins, predicted, np.asarray(greedy), box, bins_n


def summary(kind, workdir, overrides, num):
  config = apply_overrides(load_run_config(workdir), overrides)
  run = restore_params(config, workdir, read_only=True)
  true_bins, predicted, greedy, box, bins_n = teacher_forced_bins(kind, run.task, run.params,
                                                                  num)
  iou = lambda b: np.asarray(matched_box_iou(jnp.asarray(b, jnp.float32), jnp.asarray(box)))
  out = {"workdir": workdir.name, "step": run.step, "num_expressions": num, "num_bins": bins_n}
  for j, corner in enumerate(CORNERS):
    err = np.abs(predicted[:, j] - true_bins[:, j])
    out[f"{corner}_exact"] = float((err == 0).mean())
    out[f"{corner}_within_1"] = float((err <= 1).mean())
  out["teacher_forced_acc@0.5"] = float((iou(dequantize_coordinates(predicted, bins_n))
                                         >= 0.5).mean())
  out["greedy_acc@0.5"] = float((iou(greedy) >= 0.5).mean())
  return out


def print_table(result):
  """The README's table of a diagnosis json."""
  ofa, head = result["ofa"], result["tokens_head"]
  print("| corner | OFA: exact / within 1 bin | tokens head: exact / within 1 bin |")
  print("|---|---|---|")
  given = {"x1": " (given x0)", "y1": " (given y0)"}
  for corner in CORNERS:
    cells = [f"{r[corner + '_exact']:.3f} / {r[corner + '_within_1']:.3f}" for r in (ofa, head)]
    print(f"| {corner}{given.get(corner, '')} | {cells[0]} | {cells[1]} |")
  print(f"| box acc@0.5, teacher-forced | {ofa['teacher_forced_acc@0.5']:.3f} | "
        f"{head['teacher_forced_acc@0.5']:.3f} |")
  print(f"| box acc@0.5, greedy | {ofa['greedy_acc@0.5']:.3f} | {head['greedy_acc@0.5']:.3f} |")


def main():
  if len(sys.argv) == 3 and sys.argv[1] == "--table":  # print a committed diagnosis
    print_table(json.loads(pathlib.Path(sys.argv[2]).read_text()))
    return
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--ofa", type=pathlib.Path, required=True, help="an OFA run's workdir")
  parser.add_argument("--ofa-override", action="append", default=[],
                      help="KEY=VALUE config override of the OFA run (e.g. its init_from)")
  parser.add_argument("--tokens", type=pathlib.Path, required=True,
                      help="a configs/grounding_shapeworld.py:tokens run's workdir")
  parser.add_argument("--num", type=int, default=500)
  parser.add_argument("--out", type=pathlib.Path, required=True)
  args = parser.parse_args()
  result = {"ofa": summary("ofa", args.ofa, args.ofa_override, args.num),
            "tokens_head": summary("tokens", args.tokens, [], args.num)}
  args.out.write_text(json.dumps(result, indent=1) + "\n")
  print_table(result)


if __name__ == "__main__":
  main()
