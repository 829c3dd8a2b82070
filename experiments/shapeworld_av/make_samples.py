"""Writes ShapeWorld-AV sample strips (PNG, one row of frames per clip) and their audio (WAV).

  python experiments/shapeworld_av/make_samples.py [--out DIR] [--count 2] [--scale 4]

Writes DIR/clip_<i>.png + clip_<i>.wav (moving shapes) and DIR/speech_<i>.png + .wav (speech
subset, three-phoneme words), and prints each clip's captions and labels.
"""
import argparse
import pathlib
import wave

import numpy as np
from PIL import Image

from mmjax.data.shapeworld_av import ShapeWorldAV
from mmjax.data.shapeworld_av_speech import ShapeWorldAVSpeech, WORDS


def write_strip(path, frames, scale):
  strip = np.concatenate(list(frames), axis=1)  # [S, T * S, 3]
  image = Image.fromarray(strip).resize((strip.shape[1] * scale, strip.shape[0] * scale),
                                        Image.NEAREST)
  image.save(path)


def write_wav(path, audio, sample_rate):
  with wave.open(str(path), "wb") as f:
    f.setnchannels(1)
    f.setsampwidth(2)
    f.setframerate(sample_rate)
    f.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="experiments/shapeworld_av/samples")
  parser.add_argument("--count", type=int, default=2)
  parser.add_argument("--scale", type=int, default=4)
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  clips = ShapeWorldAV("val", args.count, seed=0)
  speech = ShapeWorldAVSpeech("val", 1000, seed=0)
  # Three-phoneme words show the most mouth shapes.
  talking = [i for i in range(len(speech)) if len(WORDS[speech.scene(i).word]) == 3]
  for i in range(args.count):
    ex = clips[i]
    write_strip(out / f"clip_{i}.png", ex["frames"], args.scale)
    write_wav(out / f"clip_{i}.wav", ex["audio"], clips.clip.sample_rate)
    print(f"clip_{i}: {ex['captions'][0]}  bounce frames per object: "
          f"{[np.flatnonzero(b).tolist() for b in ex['bounces'].T[:int(ex['num_objects'])]]}")
    ex = speech[talking[i]]
    write_strip(out / f"speech_{i}.png", ex["frames"], args.scale)
    write_wav(out / f"speech_{i}.wav", ex["audio"], speech.clip.sample_rate)
    print(f"speech_{i}: {WORDS[ex['word']]!r} phoneme per frame {ex['phoneme_frames'].tolist()}")


if __name__ == "__main__":
  main()
