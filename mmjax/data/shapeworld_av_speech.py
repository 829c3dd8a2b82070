"""ShapeWorld-AV speech subset: a face saying one word, the lip-reading analogue for AVSR.

A word is a sequence of 2-3 phonemes (WORDS, one letter per phoneme). Each phoneme lasts
PD = max(1, num_frames // 4) frames; the word starts at a random frame and the rest of the clip
is silent with the mouth closed. A phoneme is HEARD as two formant tones (FORMANTS_HZ times the
speaker's `formant_scale`, see shapeworld_av_audio.formant_tones) and SEEN as a mouth shape:
its viseme's ellipse (MOUTH_SHAPES) on a face. As in real lip-reading, some phonemes look
alike ("m"/"b" closed lips, "i"/"s" spread lips), so video alone cannot tell "ma" from "ba";
audio tells them apart until the noise is too loud.

Clip timing, the offset convention and the SNR are ShapeWorldAV's (see shapeworld_av.py); the
world is silent outside the word, so shifted-in audio is silence plus noise.

A separate class rather than a `speech=True` mode: its items carry other labels (word,
phonemes) and none of the object ones (shape, colour, bounces), and its scene is a face, not
moving shapes; the shared clip format and keys (frames, audio, boxes, sounding, offset, onsets,
captions) keep the two interchangeable for correspondence / sync / localisation code.

Held-out words: HELDOUT_WORDS never occur in "train" (each of their phonemes and visemes does,
in other words), so a phoneme-level model can be tested on unseen words.
"""
from __future__ import annotations

import dataclasses
import operator

import numpy as np

from mmjax.data import shapeworld_av_audio as audio_lib
from mmjax.data import shapeworld_render as render_lib
from mmjax.data.shapeworld_av import SPLITS, ClipFormat, check_index
from mmjax.data.tokenizer import WordTokenizer, split_words

PHONEMES = ("a", "e", "i", "o", "u", "m", "b", "s")
FORMANTS_HZ = np.array([(730, 1090), (530, 1840), (270, 2290), (570, 840), (300, 870),
                        (250, 1200), (200, 600), (2500, 3500)], np.float64)  # (F1, F2).
FORMANT_SCALE_RANGE = (0.9, 1.1)  # Per-speaker factor on every formant.
VISEMES = ("closed", "open", "mid", "spread", "round", "pucker")
VISEME_OF_PHONEME = (1, 2, 3, 4, 5, 0, 0, 3)  # Index-aligned with PHONEMES.
# (half width, half height) of the mouth ellipse per viseme, as fractions of the image side;
# the closed mouth is a line MIN_MOUTH_HALF_HEIGHT px high.
MOUTH_SHAPES = ((0.14, 0.0), (0.15, 0.09), (0.17, 0.05), (0.20, 0.035), (0.10, 0.06),
                (0.065, 0.035))
MIN_MOUTH_HALF_HEIGHT = 1.0
WORDS = ("ma", "ba", "mi", "bi", "mo", "bo", "mu", "bu", "sa", "si", "so", "su", "ami", "abi",
         "emo", "ebo")
HELDOUT_WORDS = ("bo", "su", "abi")
MAX_WORD_PHONEMES = 3
SPEECH_GAIN = 0.4
FACE_HALF = 0.4  # Face radius / image side; the mouth sits MOUTH_DROP below its centre.
MOUTH_DROP = 0.17
SKIN_RGB = np.array((225, 180, 150), np.float32)
LIPS_RGB = np.array((150, 25, 45), np.float32)
_MOUTH_VERTICES = 24


def phoneme_ids(word: str) -> list[int]:
  return [PHONEMES.index(p) for p in word]


def phoneme_frames(num_frames: int) -> int:
  """Frames per phoneme (PD)."""
  return max(1, num_frames // 4)


def mouth_polygon(cx: float, cy: float, viseme: int, image_size: int) -> np.ndarray:
  """float64 `[V, 2]` ellipse vertices (px) of a viseme's mouth centred at (cx, cy)."""
  half_w, half_h = MOUTH_SHAPES[viseme]
  half_h = max(half_h * image_size, MIN_MOUTH_HALF_HEIGHT)
  angle = 2 * np.pi * np.arange(_MOUTH_VERTICES) / _MOUTH_VERTICES
  return np.stack([cx + half_w * image_size * np.cos(angle), cy + half_h * np.sin(angle)], -1)


def _paint(canvas: np.ndarray, rows: slice, cols: slice, alpha: np.ndarray, rgb) -> None:
  region = canvas[rows, cols]
  region += alpha[..., None] * (rgb - region)


@dataclasses.dataclass(frozen=True)
class SpeechScene:
  """Everything a speech example is rendered from (edit with dataclasses.replace)."""
  word: int
  start_frame: int
  formant_scale: float
  face_centre: tuple[float, float]  # px.
  skin_rgb: np.ndarray  # float32 [3].
  background: float
  frame_seed: int
  offset: int
  snr_db: float | None
  noise_seed: int


VOCAB: tuple[str, ...] = tuple(sorted(set(WORDS) | set(split_words("a face saying the word ."))))


def shapeworld_av_speech_tokenizer() -> WordTokenizer:
  """Word tokenizer over VOCAB (every word the speech captions use)."""
  return WordTokenizer(VOCAB)


class ShapeWorldAVSpeech:
  """Grain-compatible random-access source of talking-face clips: `ds[i]` -> dict of numpy.

  Item keys (T = num_frames, S = image_size, N = samples, P = MAX_WORD_PHONEMES):
    frames: uint8 `[T, S, S, 3]`; audio: float32 `[N]` in [-1, 1].
    boxes: float32 `[T, 1, 4]`, the mouth ellipse's box (x0, y0, x1, y1) in [0, 1].
    object_valid, sounding: bool `[1]`, both True (the mouth is the one sound source).
    word: int32 `[]` index into WORDS; phonemes: int32 `[P]` into PHONEMES, -1 padded.
    phoneme_frames: int32 `[T]`, the phoneme mouthed in frame t (-1: none, mouth closed).
    onsets: int32 `[1, T]`, sorted sample indices into `audio` where a phoneme starts (its
      first frame shifted by the offset, if inside the clip), -1 padded.
    formant_scale: float32 `[]`; offset: int32 `[]`; snr_db: float32 `[]` (inf: no noise).
    captions: ("a face saying ma.", "the word ma.").
  """

  def __init__(self, split: str = "train", length: int = 100_000, seed: int = 0,
               image_size: int = 32, num_frames: int = 8, sample_rate: int = 16000,
               clip_seconds: float = 1.0, offset_frames: int | tuple[int, int] = 0,
               snr_db: float | tuple[float, float] | None = None):
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if operator.index(length) < 0:
      raise ValueError(f"length must be >= 0, got {length}")
    self.clip = ClipFormat.checked(image_size, num_frames, sample_rate, clip_seconds,
                                   offset_frames, snr_db, min_frames=MAX_WORD_PHONEMES)
    self.split, self.length, self.seed = split, int(length), operator.index(seed)
    self._split_id = SPLITS.index(split)
    self.words = [w for w, name in enumerate(WORDS)
                  if split != "train" or name not in HELDOUT_WORDS]

  def __repr__(self) -> str:
    c = self.clip
    return (f"ShapeWorldAVSpeech(split={self.split!r}, length={self.length}, seed={self.seed}, "
            f"image_size={c.image_size}, num_frames={c.num_frames}, sample_rate={c.sample_rate}, "
            f"samples={c.samples}, offset_frames={c.offset_frames}, snr_db={c.snr_db})")

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index) -> dict:
    return self.render(self.scene(index))

  def scene(self, index) -> SpeechScene:
    index = check_index(index, self.length, "ShapeWorldAVSpeech")
    rng = np.random.default_rng([self.seed, self._split_id, index])
    clip, side = self.clip, self.clip.image_size
    word = self.words[int(rng.integers(len(self.words)))]
    spoken = len(WORDS[word]) * phoneme_frames(clip.num_frames)
    start = int(rng.integers(clip.num_frames - spoken + 1))
    scale = float(rng.uniform(*FORMANT_SCALE_RANGE))
    centre = tuple(float(v) for v in side / 2 + rng.uniform(-0.06, 0.06, 2) * side)
    skin = np.clip(SKIN_RGB + rng.uniform(-12, 12, 3), 0, 255).astype(np.float32)
    background, frame_seed = float(rng.uniform(20.0, 70.0)), int(rng.integers(2 ** 63))
    offset, snr, noise_seed = clip.draw_av(np.random.default_rng([self.seed, self._split_id,
                                                                  index, 1]))
    return SpeechScene(word, start, scale, centre, skin, background, frame_seed, offset, snr,
                       noise_seed)

  def phoneme_per_frame(self, scene: SpeechScene) -> np.ndarray:
    """int32 `[T]`: the phoneme mouthed in each frame, -1 outside the word."""
    per_frame = np.full(self.clip.num_frames, -1, np.int32)
    pd = phoneme_frames(self.clip.num_frames)
    for j, p in enumerate(phoneme_ids(WORDS[scene.word])):
      per_frame[scene.start_frame + j * pd:scene.start_frame + (j + 1) * pd] = p
    return per_frame

  def render_frames(self, scene: SpeechScene, per_frame: np.ndarray):
    """(uint8 frames `[T, S, S, 3]`, float32 mouth boxes `[T, 4]` in [0, 1])."""
    clip, side = self.clip, self.clip.image_size
    cx, cy = scene.face_centre
    noise = clip.frame_noise(scene.frame_seed)
    face = render_lib.coverage(render_lib.SHAPES.index("circle"), cx, cy, FACE_HALF * side, side)
    mouth_y = cy + MOUTH_DROP * side
    base = np.full((side, side, 3), scene.background, np.float32)
    _paint(base, *face, scene.skin_rgb)
    frames = np.empty((clip.num_frames, side, side, 3), np.uint8)
    boxes = np.empty((clip.num_frames, 4), np.float32)
    painted = {}  # Viseme -> (face with that mouth, box): each is drawn once per clip.
    for t, p in enumerate(per_frame):
      viseme = VISEME_OF_PHONEME[p] if p >= 0 else 0
      if viseme not in painted:
        polygon = mouth_polygon(cx, mouth_y, viseme, side)
        (x0, y0), (x1, y1) = polygon.min(0), polygon.max(0)
        rows, cols = slice(int(y0), int(np.ceil(y1)) + 1), slice(int(x0), int(np.ceil(x1)) + 1)
        px = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :] + 0.5
        py = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None] + 0.5
        alpha = np.clip(0.5 - render_lib.polygon_distance(px, py, polygon), 0.0, 1.0)
        canvas = base.copy()
        _paint(canvas, rows, cols, alpha, LIPS_RGB)
        painted[viseme] = canvas, np.array([x0, y0, x1, y1]) / side
      canvas, boxes[t] = painted[viseme]
      frames[t] = np.clip(canvas + noise[t] + 0.5, 0, 255).astype(np.uint8)
    return frames, boxes

  def render_audio(self, scene: SpeechScene) -> np.ndarray:
    """float32 `[N]` in [-1, 1]: the word's formant tones at `scene.offset`, plus noise."""
    clip = self.clip
    spf, pd = clip.samples_per_frame, phoneme_frames(clip.num_frames)
    segments = []
    for j, p in enumerate(phoneme_ids(WORDS[scene.word])):
      start = (scene.start_frame + j * pd) * spf
      f1, f2 = FORMANTS_HZ[p] * scene.formant_scale
      segments.append((start, start + pd * spf, f1, f2))
    clean = audio_lib.formant_tones(clip.world_samples(scene.offset), segments,
                                    clip.sample_rate, SPEECH_GAIN)
    return audio_lib.add_noise(clean, scene.snr_db, np.random.default_rng(scene.noise_seed))

  def render(self, scene: SpeechScene) -> dict:
    clip, name = self.clip, WORDS[scene.word]
    per_frame = self.phoneme_per_frame(scene)
    frames, boxes = self.render_frames(scene, per_frame)
    phonemes = np.full(MAX_WORD_PHONEMES, -1, np.int32)
    phonemes[:len(name)] = phoneme_ids(name)
    pd = phoneme_frames(clip.num_frames)
    heard = scene.start_frame + pd * np.arange(len(name)) + scene.offset
    onsets = np.full((1, clip.num_frames), -1, np.int32)
    heard = heard[(heard >= 0) & (heard < clip.num_frames)] * clip.samples_per_frame
    onsets[0, :len(heard)] = heard
    return {
        "frames": frames,
        "audio": self.render_audio(scene),
        "boxes": boxes[:, None],
        "object_valid": np.ones(1, bool),
        "sounding": np.ones(1, bool),
        "word": np.int32(scene.word),
        "phonemes": phonemes,
        "phoneme_frames": per_frame,
        "onsets": onsets,
        "formant_scale": np.float32(scene.formant_scale),
        "offset": np.int32(scene.offset),
        "snr_db": np.float32(np.inf if scene.snr_db is None else scene.snr_db),
        "captions": (f"a face saying {name}.", f"the word {name}."),
    }
