"""The README's tables: the training runs' evaluations (this folder's metrics*.jsonl) and
synchronisation against the SNR of background noise (`eval_snr*.json`, `mmjax eval` records
copied from the default run's eval/ folder), plotted to `snr_curve.png`.

  mmjax train --config configs/av_sync_shapeworld.py --workdir runs/av_sync
  mmjax train --config configs/av_sync_shapeworld.py --workdir runs/av_sync_2400_steps \
      --config.total_steps=2400 --config.eval_every=600 --config.checkpoint_every=600 \
      --config.eval.num_sync_clips=300
  # The earlier default, without the offset classification, and its two ablations:
  OLD="--config.loss.offset_classification=0 --config.total_steps=2400 --config.eval_every=600
       --config.checkpoint_every=600 --config.eval.num_sync_clips=300"
  mmjax train --config configs/av_sync_shapeworld.py --workdir runs/av_sync_without_matching $OLD
  mmjax train --config configs/av_sync_shapeworld.py --workdir runs/av_sync_deeper_video $OLD \
      --config.model.video_encoder.num_layers=3 --config.model.video_encoder.temporal_layers=2
  mmjax train --config configs/av_sync_shapeworld.py --workdir runs/av_sync_wide_offsets $OLD \
      --config.data.offset_frames='(-5, 5)'
  for snr in 20 10 5 0 -5 -10; do
    mmjax eval --config configs/av_sync_shapeworld.py --workdir runs/av_sync \
        --config.data.snr_db=$snr
  done
  python experiments/av_sync_shapeworld/table.py

Each record's SNR is read from its own `--config.data.snr_db=` override (none: clean audio).
Standard errors are binomial, sqrt(p (1 - p) / n) over the n = eval.num_sync_clips clips.
"""
import json
import math
import pathlib

HERE = pathlib.Path(__file__).parent
CHANCE = {"sync_acc": 1 / 7, "sync_acc_1": 19 / 49}  # Offsets uniform in [-3, 3].


def snr_of(record: dict) -> float:
  """The record's SNR in dB (inf: no noise), from its overrides."""
  for override in record["overrides"]:
    key, _, value = override.partition("=")
    if key == "--config.data.snr_db" and value not in ("None", ""):
      return float(value)
  return math.inf


def training_table(suffix: str):
  """The evaluations of the run whose files end in `suffix` (metrics{suffix}.jsonl, with the
  clip counts of its config{suffix}.json)."""
  rows = [json.loads(line) for line in open(HERE / f"metrics{suffix}.jsonl")]
  n = json.loads((HERE / f"config{suffix}.json").read_text())["eval"]["num_sync_clips"]
  print(f"metrics{suffix}.jsonl ({n} sync clips):\n")
  offsets = sorted((k for k in rows[-1] if k.startswith("sync_acc_1_offset")),
                   key=lambda k: int(k[len("sync_acc_1_offset"):]))
  columns = ["correspondence_accuracy", "a2v_r@1", "sync_acc", "sync_acc_1"]
  print("| step | " + " | ".join(columns + [k.replace("sync_acc_1_", "")
                                          for k in offsets]) + " |")
  print("|---" * (len(columns) + len(offsets) + 1) + "|")
  for row in rows:
    cells = [f"{row[c]:.3f}" for c in columns[:2]]
    cells += [f"{row[c]:.3f} ± {math.sqrt(row[c] * (1 - row[c]) / n):.3f}" for c in columns[2:]]
    cells += [f"{row[k]:.2f}" for k in offsets if k in row]
    print(f"| {row['step']} | " + " | ".join(cells) + " |")
  print()


def main():
  for suffix in ("", "_2400_steps", "_without_matching", "_deeper_video", "_wide_offsets"):
    training_table(suffix)
  records = [json.loads(p.read_text()) for p in sorted(HERE.glob("eval_snr*.json"))]
  if not records:
    raise SystemExit(f"no eval_snr*.json in {HERE}: run the mmjax eval commands above first")
  records.sort(key=snr_of, reverse=True)
  print("| SNR (dB) | sync_acc | sync_acc_1 (within 1 frame) | correspondence_accuracy |")
  print("|---|---|---|---|")
  points = []
  for record in records:
    m, n = record["metrics"], record["eval"]["num_sync_clips"]
    se = lambda p: math.sqrt(p * (1 - p) / n)
    snr = snr_of(record)
    points.append((snr, m["sync_acc"], se(m["sync_acc"]), m["sync_acc_1"], se(m["sync_acc_1"])))
    label = "clean" if math.isinf(snr) else f"{snr:g}"
    print(f"| {label} | {m['sync_acc']:.3f} ± {se(m['sync_acc']):.3f} | "
          f"{m['sync_acc_1']:.3f} ± {se(m['sync_acc_1']):.3f} | "
          f"{m['correspondence_accuracy']:.3f} |")
  clean = [r for r in records if math.isinf(snr_of(r))]
  if clean:
    m = clean[0]["metrics"]
    offsets = sorted((k for k in m if k.startswith("sync_acc_1_offset")),
                     key=lambda k: int(k[len("sync_acc_1_offset"):]))
    print("\nsync_acc_1 by true offset (clean audio):\n")
    print("| " + " | ".join(k[len("sync_acc_1_offset"):] for k in offsets) + " |")
    print("|---" * len(offsets) + "|")
    print("| " + " | ".join(f"{m[k]:.2f}" for k in offsets) + " |")
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  finite = [p for p in points if not math.isinf(p[0])]
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for column, name in ((1, "sync_acc"), (3, "sync_acc_1")):
    xs = [p[0] for p in finite]
    ax.errorbar(xs, [p[column] for p in finite], yerr=[p[column + 1] for p in finite],
                marker="o", capsize=3, label=f"{name} (noisy)")
    clean = [p for p in points if math.isinf(p[0])]
    if clean:
      ax.axhline(clean[0][column], linestyle=":", color=ax.lines[-1].get_color(),
                 label=f"{name} (clean)")
    ax.axhline(CHANCE[name], linestyle="--", color="grey", linewidth=0.8)
  ax.set_xlabel("SNR of white background noise (dB)")
  ax.set_ylabel("accuracy over sync clips")
  ax.set_title("ShapeWorld-AV sync, offsets in [-3, 3] (grey: chance)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(HERE / "snr_curve.png", dpi=120)
  print(f"wrote {HERE / 'snr_curve.png'}")


if __name__ == "__main__":
  main()
