"""Log-mel front end: mmjax.audio.log_mel (jitted) vs librosa 0.11, same machine, same settings.

A batch of 64 one-second 16 kHz clips (tones, chirps and noise bursts, fixed seed), float32,
CPU. Rows: Whisper-like speech features (n_fft=400, hop 160, 80 mels) and librosa's defaults
(n_fft=2048, hop 512, 128 mels), both Slaney mel scale and norm, power 2, ref=1.0, top_db=80.
- mmjax: `jax.jit(functools.partial(log_mel, ...))` on the `[64, 16000]` batch, compiled
  ahead of time (the compile time is its own column); median wall time of a call.
- librosa, batched: `power_to_db(feature.melspectrogram(y=batch, ...))` in one call (note its
  top_db floor is then taken over the whole batch, not per clip).
- librosa, per clip: the same two calls in a loop over the 64 clips, as a data loader would.
The last column is the largest |dB| difference of mmjax's features from librosa per clip.

  python benchmarks/audio_frontend.py              # the table, into benchmarks/README.md
  python benchmarks/audio_frontend.py --no-write   # print only

The README section is written only from an idle machine (`_report.write_section`, which adds
the measured load; `--allow-loaded` writes it marked as measured under load).
"""
import argparse
import functools
import os
import statistics
import sys
import time

import numpy as np

BATCH, SR, SECONDS = 64, 16000, 1.0
SETTINGS = {
    "speech (n_fft 400, hop 160, 80 mels)": dict(sr=SR, n_fft=400, hop_length=160, n_mels=80),
    "librosa defaults (n_fft 2048, hop 512, 128 mels)": dict(sr=SR, n_fft=2048, hop_length=512,
                                                             n_mels=128),
}


def make_clips() -> np.ndarray:
  """float32 `[BATCH, SR * SECONDS]`: per clip a harmonic tone, a chirp and noise bursts."""
  rng = np.random.default_rng(0)
  t = np.arange(int(SR * SECONDS)) / SR
  clips = []
  for _ in range(BATCH):
    f0, f1 = rng.uniform(80, 400), rng.uniform(1000, 7000)
    tone = sum(rng.uniform(0.1, 0.5) / k * np.sin(2 * np.pi * f0 * k * t) for k in range(1, 6))
    chirp = 0.3 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * SECONDS)))
    bursts = np.zeros_like(t)
    for start in rng.uniform(0, SECONDS - 0.05, 3):
      span = (t >= start) & (t < start + 0.05)
      bursts[span] = rng.uniform(0.05, 0.5) * rng.standard_normal(span.sum())
    clips.append(tone + chirp + bursts)
  return np.stack(clips).astype(np.float32)


def time_calls(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def run_mmjax(clips, settings, repeats):
  import jax  # pylint: disable=import-outside-toplevel
  from mmjax.audio import log_mel  # pylint: disable=import-outside-toplevel
  batch = jax.device_put(clips)
  start = time.perf_counter()
  compiled = jax.jit(functools.partial(log_mel, **settings)).lower(batch).compile()
  compile_s = time.perf_counter() - start
  features = jax.block_until_ready(compiled(batch))  # warm-up
  seconds = time_calls(lambda: jax.block_until_ready(compiled(batch)), repeats)
  return {"seconds": seconds, "compile_s": compile_s, "features": np.asarray(features)}


def run_librosa(clips, settings, repeats, per_clip):
  import librosa  # pylint: disable=import-outside-toplevel

  def features_of(y):
    return librosa.power_to_db(librosa.feature.melspectrogram(y=y, **settings))

  if per_clip:
    call = lambda: np.stack([features_of(y) for y in clips])
  else:
    call = lambda: features_of(clips)
  features = call()  # warm-up: librosa's lazy imports and caches
  return {"seconds": time_calls(call, repeats), "features": features}


def table(results) -> str:
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from _report import machine_line  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import librosa  # pylint: disable=import-outside-toplevel
  lines = [
      f"Log-mel features of {BATCH} one-second {SR // 1000} kHz clips, float32; median wall time "
      f"of one batch. jax {jax.__version__} ({jax.devices()[0].platform}), librosa "
      f"{librosa.__version__}, numpy {np.__version__}. Command: "
      "`python benchmarks/audio_frontend.py`.",
      "",
      f"Machine: {machine_line()}.",
      "",
      "| settings | mmjax jit | mmjax compile | librosa batched | librosa per clip | "
      "mmjax speed-up (batched / per clip) | max abs dB diff vs librosa per clip |",
      "|---|---|---|---|---|---|---|",
  ]
  for name, row in results.items():
    ours, batched, per_clip = row["mmjax"], row["librosa_batched"], row["librosa_per_clip"]
    diff = float(np.abs(ours["features"] - per_clip["features"]).max())
    ms = lambda r: f"{1e3 * r['seconds']:.1f} ms"
    speedup = lambda r: f"{r['seconds'] / ours['seconds']:.1f}x"
    lines.append(
        f"| {name} | {ms(ours)} | {ours['compile_s']:.2f} s | {ms(batched)} | {ms(per_clip)} | "
        f"{speedup(batched)} / {speedup(per_clip)} | {diff:.1e} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--no-write", action="store_true", help="print only, keep README.md")
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from _report import LoadWatch, add_load_argument  # pylint: disable=import-outside-toplevel
  add_load_argument(parser)
  args = parser.parse_args()
  load = LoadWatch()
  clips = make_clips()
  results = {}
  for name, settings in SETTINGS.items():
    results[name] = {
        "mmjax": run_mmjax(clips, settings, args.repeats),
        "librosa_batched": run_librosa(clips, settings, args.repeats, per_clip=False),
        "librosa_per_clip": run_librosa(clips, settings, max(1, args.repeats // 3),
                                        per_clip=True),
    }
    print(name, {impl: round(r["seconds"], 4) for impl, r in results[name].items()},
          flush=True)
  load.finish()
  markdown = table(results)
  print(markdown)
  print(load.line())
  if not args.no_write:
    from _report import write_section  # pylint: disable=import-outside-toplevel
    write_section("audio_frontend", markdown, load, args.allow_loaded)


if __name__ == "__main__":
  main()
