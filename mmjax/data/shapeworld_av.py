"""ShapeWorld-AV: deterministic procedural audio-visual clips (a Grain random-access source).

A clip is T frames (`num_frames`, evenly covering `clip_seconds`; frame t shows time
t * clip_seconds / T and owns audio samples [t * F, (t + 1) * F), F = samples per frame) of 1-3
ShapeWorld objects that move in straight lines and bounce off the walls, with a mono waveform.
Example i of split s is a pure function of (seed, s, i), as in ShapeWorld; per-host slicing is
the pipeline's job (mmjax.data.pipeline).

Motion: each object moves at a constant velocity; when a step would take its tight box past a
wall the box is stopped touching that wall (edge exactly at 0 or 1) and the velocity component
reverses: that frame is a BOUNCE frame. Objects pass through each other (later ones drawn on
top).

Sound (see shapeworld_av_audio.py): timbre from the shape (TIMBRES), pitch from the colour
(PITCHES_HZ), loudness from the size (peak amplitude LOUDNESS_PER_EXTENT * extent, extent = the
larger side of the tight box as a fraction of the image), a percussive onset at the first sample
of each bounce frame, and a sustain that swells as the object nears a wall, so the sound follows
the motion frame by frame (what makes a temporal offset observable even between bounces).
Objects can be silent (distractors); at least one object per clip sounds.

Audio-visual offset k (frames; positive = audio LAGS video): the sound of frame t starts at
sample (t + k) * F, i.e. audio_k[n] = audio_0[n - k * F]. The scene is simulated num_frames - 1
frames beyond the clip on each side, so the samples shifted in are the sound of the same objects
just before / after the clip (never silence or zeros that would give the offset away).

Compositional split: the (colour, shape) pairs of shapeworld.HELDOUT_COMBOS, hence those
(pitch, timbre) sounds, never occur in "train"; "val"/"test" draw all pairs uniformly.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import operator

import numpy as np

from mmjax.data import shapeworld as sw
from mmjax.data import shapeworld_av_audio as audio_lib
from mmjax.data import shapeworld_render as render_lib
from mmjax.data.shapeworld import COLOURS, HELDOUT_COMBOS, SHAPES, SIZES, SPLITS  # noqa: F401
from mmjax.data.shapeworld_av_audio import PITCHES_HZ, TIMBRES  # noqa: F401  (re-exported)
from mmjax.data.tokenizer import WordTokenizer, split_words

MAX_OBJECTS = sw.MAX_OBJECTS
NUM_CAPTIONS = 4
LOUDNESS_PER_EXTENT = 0.6  # Three large objects at a burst peak sum to <= 0.87.
SPEED_RANGE = (0.6, 1.2)  # Image sides per clip.
MIN_SAMPLE_RATE = 8000
SOUND_VERBS = ("beeping", "buzzing", "whistling", "rasping", "hissing", "honking")  # By timbre.
_HELDOUT_IDS = frozenset((COLOURS.index(c), SHAPES.index(s)) for c, s in HELDOUT_COMBOS)


@dataclasses.dataclass(frozen=True)
class ClipFormat:
  """Checked clip geometry and per-example AV draws, shared by ShapeWorldAV and its speech
  subset. `offset_frames` and `snr_db` are (lo, hi) ranges (lo == hi: fixed); snr None = clean."""
  image_size: int
  num_frames: int
  sample_rate: int
  samples: int
  offset_frames: tuple[int, int]
  snr_db: tuple[float, float] | None

  @classmethod
  def checked(cls, image_size, num_frames, sample_rate, clip_seconds, offset_frames, snr_db,
              min_frames: int = 2) -> "ClipFormat":
    if operator.index(image_size) < 16:
      raise ValueError(f"image_size must be an int >= 16, got {image_size}")
    if operator.index(num_frames) < min_frames:
      raise ValueError(f"num_frames must be an int >= {min_frames}, got {num_frames}")
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate < MIN_SAMPLE_RATE:
      raise ValueError(f"sample_rate must be an int >= {MIN_SAMPLE_RATE} Hz, got {sample_rate!r}")
    if not (isinstance(clip_seconds, numbers.Real) and math.isfinite(clip_seconds)
            and clip_seconds > 0):
      raise ValueError(f"clip_seconds must be a finite number > 0, got {clip_seconds!r}")
    samples = round(sample_rate * clip_seconds)
    if samples < num_frames or samples % num_frames:
      raise ValueError(f"round(sample_rate * clip_seconds) = {samples} samples must be a positive "
                       f"multiple of num_frames={num_frames} (whole samples per frame)")
    offsets = (offset_frames,) * 2 if np.ndim(offset_frames) == 0 else tuple(offset_frames)
    lo, hi = (operator.index(k) for k in offsets) if len(offsets) == 2 else (1, 0)
    if not -num_frames < lo <= hi < num_frames:
      raise ValueError(f"offset_frames must be an int or (lo, hi) with -{num_frames} < lo <= hi < "
                       f"{num_frames} (num_frames), got {offset_frames!r}")
    snr = None
    if snr_db is not None:
      snr = (snr_db, snr_db) if np.ndim(snr_db) == 0 else tuple(snr_db)
      if len(snr) != 2 or not all(math.isfinite(float(v)) for v in snr) or snr[0] > snr[1]:
        raise ValueError(f"snr_db must be None (no noise), a finite float or (lo, hi) with "
                         f"lo <= hi, got {snr_db!r}")
      snr = (float(snr[0]), float(snr[1]))
    return cls(int(image_size), int(num_frames), int(sample_rate), samples, (lo, hi), snr)

  @property
  def samples_per_frame(self) -> int:
    return self.samples // self.num_frames

  @property
  def margin(self) -> int:
    """Frames simulated beyond each end of the clip: enough for any legal offset."""
    return self.num_frames - 1

  def draw_av(self, rng: np.random.Generator) -> tuple[int, float | None, int]:
    """(offset, snr_db or None, noise seed); always three draws, whatever the ranges."""
    u_offset, u_snr, noise_seed = rng.random(), rng.random(), int(rng.integers(2 ** 63))
    lo, hi = self.offset_frames
    offset = min(lo + int(u_offset * (hi - lo + 1)), hi)
    snr = None
    if self.snr_db is not None:
      snr = self.snr_db[0] + u_snr * (self.snr_db[1] - self.snr_db[0])
    return offset, snr, noise_seed

  def frame_noise(self, seed: int) -> np.ndarray:
    """float32 `[T, S, S, 3]` per-frame pixel noise, uniform in +-sw.NOISE_AMPLITUDE."""
    shape = (self.num_frames, self.image_size, self.image_size, 3)
    noise = np.random.default_rng(seed).integers(0, 256, shape, np.uint8).astype(np.float32)
    return (noise - 127.5) * (sw.NOISE_AMPLITUDE / 127.5)

  def world_samples(self, offset: int) -> np.ndarray:
    """int64 `[samples]`: the world sample each output sample plays (n - offset * F)."""
    return np.arange(self.samples, dtype=np.int64) - offset * self.samples_per_frame


def check_index(index, length: int, name: str) -> int:
  index = operator.index(index)
  if not 0 <= index < length:
    raise IndexError(f"{name} index {index} out of range [0, {length})")
  return index


@dataclasses.dataclass(frozen=True)
class MovingObject:
  """One object of a scene. World frame w is clip frame w - margin (W = T + 2 * margin)."""
  shape: int
  colour: int
  size: int
  half: float  # Half the larger side of the tight box, px.
  rgb: np.ndarray  # float32 [3].
  sounding: bool
  centres: np.ndarray  # float64 [W, 2], (x, y) px.
  bounces: np.ndarray  # bool [W].
  phase: float  # Waveform phase at world sample 0, cycles.
  noise_start: int  # Where the "noisy" timbre reads its noise.

  def boxes_px(self) -> np.ndarray:
    """float64 `[W, 4]` tight (x0, y0, x1, y1) in pixels."""
    return render_lib.UNIT_BOXES[self.shape] * self.half + np.tile(self.centres, 2)


@dataclasses.dataclass(frozen=True)
class AVScene:
  """Everything an example is rendered from; edit with dataclasses.replace (e.g. another
  `offset` for a hard negative: the same clip with shifted audio)."""
  objects: tuple[MovingObject, ...]
  background: float
  frame_seed: int
  offset: int
  snr_db: float | None
  noise_seed: int


def _article(phrase: str) -> str:
  return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(parts) -> str:
  parts = list(parts)
  return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def captions(objects) -> tuple[str, ...]:
  """NUM_CAPTIONS captions: objects and sounds; sounds only; objects only; audio only."""
  listing = _join(_article(f"{SIZES[o.size]} {COLOURS[o.colour]} {SHAPES[o.shape]}")
                  for o in objects)
  name = lambda o: f"the {COLOURS[o.colour]} {SHAPES[o.shape]}"
  sounds = [f"{name(o)} is {SOUND_VERBS[o.shape]}" for o in objects if o.sounding]
  silent = [f"{name(o)} is silent" for o in objects if not o.sounding]
  heard = _join(f"a {SOUND_VERBS[o.shape]} sound" for o in objects if o.sounding)
  return (f"{listing}; {_join(sounds + silent)}.", f"{_join(sounds)}.",
          f"{listing} bouncing around.", f"{heard}.")


VOCAB: tuple[str, ...] = tuple(sorted(
    set(COLOURS) | set(SIZES) | set(SHAPES) | set(SOUND_VERBS)
    | set(split_words("a an the is and silent sound bouncing around , ; ."))))


def shapeworld_av_tokenizer() -> WordTokenizer:
  """Word tokenizer over VOCAB (every word ShapeWorldAV captions use)."""
  return WordTokenizer(VOCAB)


def _trajectory(start, velocity, lo, hi, frames: int):
  """(centres float64 `[frames, 2]`, bounces bool `[frames]`) of wall-bounded straight motion."""
  centres, bounces = np.empty((frames, 2)), np.zeros(frames, bool)
  c, v = [float(x) for x in start], [float(x) for x in velocity]
  centres[0] = c
  for f in range(1, frames):
    for axis in (0, 1):
      c[axis] += v[axis]
      wall = lo[axis] if c[axis] <= lo[axis] else hi[axis] if c[axis] >= hi[axis] else None
      if wall is not None:
        c[axis], v[axis], bounces[f] = wall, -v[axis], True
    centres[f] = c
  return centres, bounces


class ShapeWorldAV:
  """Grain-compatible random-access source: `len(ds)`, `ds[i]` -> dict of numpy values.

  Item keys (T = num_frames, S = image_size, N = samples, M = num_objects[1]; per-object arrays
  follow the same object order and are padded with zeros / False / -1 after num_objects):
    frames: uint8 `[T, S, S, 3]`.
    audio: float32 `[N]` in [-1, 1] (background noise included when snr_db is set).
    boxes: float32 `[T, M, 4]` tight (x0, y0, x1, y1) in [0, 1].
    object_valid: bool `[M]`; num_objects: int32 `[]`.
    sounding: bool `[M]`, objects heard in the audio (>= 1 per clip).
    shape, colour, size: int32 `[M]` indices into SHAPES / COLOURS / SIZES (timbre = shape,
      pitch class = colour).
    pitch_hz: float32 `[M]` PITCHES_HZ[colour]; loudness: float32 `[M]` peak amplitude.
    bounces: bool `[T, M]`, frames where the object touches a wall (it turns there).
    onsets: int32 `[M, T]`, sorted sample indices into `audio` of the object's onsets (the
      bounces shifted by the offset, also those of frames just outside the clip), -1 padded;
      none for silent objects.
    offset: int32 `[]` audio lag in frames (see module docstring).
    snr_db: float32 `[]`, the background noise's SNR (inf: no noise).
    label: int32 `[]`, sw.class_index(colour, shape) of the first sounding object.
    captions: tuple of NUM_CAPTIONS str, e.g. "a small red circle and a large blue square; the
      red circle is beeping and the blue square is silent."

  Args: split ("train" holds out HELDOUT_COMBOS), length, seed; image_size S >= 16; num_frames
  T >= 2; sample_rate (int Hz >= MIN_SAMPLE_RATE) and clip_seconds, N = round(sample_rate *
  clip_seconds) a multiple of T; num_objects (lo, hi) per clip; offset_frames: an int or a
  (lo, hi) range drawn per example, |offset| < T; snr_db: None (clean), a float or a (lo, hi)
  range; silent_probability: chance that an object is silent (one object always sounds);
  size_ranges: per size class (small, large) the (lo, hi) range of an object's extent as a
  fraction of the image side (default ShapeWorld's; larger objects for localisation, whose
  median-thresholded cIoU can reach 0.5 only for boxes covering a quarter of the frame).

  `ds[i] == ds.render(ds.scene(i))`; `render_audio(dataclasses.replace(ds.scene(i), offset=k))`
  is the audio of the same clip at offset k (a hard negative for correspondence).
  """

  def __init__(self, split: str = "train", length: int = 100_000, seed: int = 0,
               image_size: int = 32, num_frames: int = 8, sample_rate: int = 16000,
               clip_seconds: float = 1.0, num_objects: tuple[int, int] = (1, 3),
               offset_frames: int | tuple[int, int] = 0,
               snr_db: float | tuple[float, float] | None = None,
               silent_probability: float = 0.25,
               size_ranges: tuple[tuple[float, float], ...] = sw.SIZE_RANGES):
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if operator.index(length) < 0:
      raise ValueError(f"length must be >= 0, got {length}")
    lo, hi = (operator.index(n) for n in num_objects)
    if not 1 <= lo <= hi <= MAX_OBJECTS:
      raise ValueError(f"num_objects must be (lo, hi) with 1 <= lo <= hi <= {MAX_OBJECTS}, "
                       f"got {tuple(num_objects)}")
    if not 0.0 <= silent_probability <= 1.0:  # Also False for nan.
      raise ValueError(f"silent_probability must be in [0, 1], got {silent_probability}")
    self.clip = ClipFormat.checked(image_size, num_frames, sample_rate, clip_seconds,
                                   offset_frames, snr_db)
    self.split, self.length, self.seed = split, int(length), operator.index(seed)
    self.num_objects, self.max_objects = (lo, hi), hi
    self.silent_probability = float(silent_probability)
    ranges = np.asarray(size_ranges, np.float64)
    if ranges.shape != (len(sw.SIZES), 2) or not (
        (0 < ranges[:, 0]).all() and (ranges[:, 0] <= ranges[:, 1]).all()
        and (ranges[:, 1] < 0.9).all()):
      raise ValueError(f"size_ranges must be {len(sw.SIZES)} (lo, hi) pairs with "
                       f"0 < lo <= hi < 0.9 (object extent / image side), got {size_ranges!r}")
    self.size_ranges = tuple(map(tuple, ranges.tolist()))
    self._split_id = SPLITS.index(split)
    all_combos = [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))]
    self.combos = [c for c in all_combos if split != "train" or c not in _HELDOUT_IDS]

  def __repr__(self) -> str:
    c = self.clip
    return (f"ShapeWorldAV(split={self.split!r}, length={self.length}, seed={self.seed}, "
            f"image_size={c.image_size}, num_frames={c.num_frames}, sample_rate={c.sample_rate}, "
            f"samples={c.samples}, num_objects={self.num_objects}, "
            f"offset_frames={c.offset_frames}, snr_db={c.snr_db}, "
            f"silent_probability={self.silent_probability})")

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index) -> dict:
    return self.render(self.scene(index))

  def scene(self, index) -> AVScene:
    """The scene of example `index`: objects from (seed, split, index); offset, SNR and noise
    from a second stream, so they never change the objects."""
    index = check_index(index, self.length, "ShapeWorldAV")
    rng = np.random.default_rng([self.seed, self._split_id, index])
    clip, side = self.clip, self.clip.image_size
    count = int(rng.integers(self.num_objects[0], self.num_objects[1] + 1))
    # Distinct (colour, shape) per clip: "the red circle" always names one object.
    combos = rng.choice(len(self.combos), size=count, replace=False)
    sizes = rng.integers(2, size=count)
    lo, hi = np.array(self.size_ranges)[sizes].T
    halves = (lo + (hi - lo) * rng.random(count)) * side / 2
    silent_draws = rng.random(count)
    sounding = silent_draws >= self.silent_probability
    sounding[np.argmax(silent_draws)] = True
    rgbs = np.clip(sw.RGB[[self.combos[k][0] for k in combos]] + rng.uniform(-12, 12, (count, 3)),
                   0, 255).astype(np.float32)
    speeds = rng.uniform(*SPEED_RANGE, count) * side / clip.num_frames
    angles = (rng.integers(4, size=count) + rng.uniform(1 / 6, 5 / 6, count)) * (np.pi / 2)
    starts, phases = rng.random((count, 2)), rng.random(count)
    noise_starts = rng.integers(audio_lib.NOISE_TABLE_SIZE, size=count)
    background, frame_seed = float(rng.uniform(20.0, 70.0)), int(rng.integers(2 ** 63))
    world_frames = clip.num_frames + 2 * clip.margin
    objects = []
    for k in range(count):
      colour, shape = self.combos[combos[k]]
      extent = render_lib.UNIT_BOXES[shape][2:] * halves[k]  # Half width, half height.
      lo_c, hi_c = extent, side - extent
      start = lo_c + (hi_c - lo_c) * (0.05 + 0.9 * starts[k])
      velocity = speeds[k] * np.array([np.cos(angles[k]), np.sin(angles[k])])
      centres, bounces = _trajectory(start, velocity, lo_c, hi_c, world_frames)
      objects.append(MovingObject(shape, colour, int(sizes[k]), float(halves[k]), rgbs[k],
                                  bool(sounding[k]), centres, bounces, float(phases[k]),
                                  int(noise_starts[k])))
    offset, snr, noise_seed = clip.draw_av(np.random.default_rng([self.seed, self._split_id,
                                                                  index, 1]))
    return AVScene(tuple(objects), background, frame_seed, offset, snr, noise_seed)

  def render_frames(self, scene: AVScene) -> np.ndarray:
    """uint8 `[T, S, S, 3]`."""
    clip = self.clip
    noise = clip.frame_noise(scene.frame_seed)
    frames = np.empty((clip.num_frames, clip.image_size, clip.image_size, 3), np.uint8)
    for t in range(clip.num_frames):
      w = t + clip.margin
      draw = [(o.shape, o.centres[w, 0], o.centres[w, 1], o.half, o.rgb) for o in scene.objects]
      frames[t] = render_lib.render(clip.image_size, scene.background, noise[t], draw)
    return frames

  def render_audio(self, scene: AVScene) -> np.ndarray:
    """float32 `[N]` in [-1, 1]: the sounding objects' mix at `scene.offset`, plus noise."""
    clip = self.clip
    samples = clip.world_samples(scene.offset)
    frame_starts = (np.arange(clip.num_frames + 2 * clip.margin) - clip.margin) * \
        clip.samples_per_frame
    clean = np.zeros(clip.samples, np.float32)
    for o in scene.objects:
      if not o.sounding:
        continue
      box = o.boxes_px()
      gap = np.minimum(box[:, :2], clip.image_size - box[:, 2:]).min(-1)
      nearness = np.clip(1.0 - gap / (clip.image_size / 2), 0.0, 1.0)
      sustain = audio_lib.SUSTAIN_MIN + (audio_lib.SUSTAIN_MAX - audio_lib.SUSTAIN_MIN) * nearness
      level = audio_lib.envelope(samples, frame_starts, sustain, frame_starts[o.bounces],
                                 clip.sample_rate)
      wave = audio_lib.tone(o.shape, o.colour, samples, clip.sample_rate, o.phase, o.noise_start)
      clean += self.loudness(o) * level * wave
    return audio_lib.add_noise(clean, scene.snr_db, np.random.default_rng(scene.noise_seed))

  def loudness(self, obj: MovingObject) -> float:
    """Peak amplitude of `obj`'s sound: LOUDNESS_PER_EXTENT * (2 * half / image_size)."""
    return LOUDNESS_PER_EXTENT * 2 * obj.half / self.clip.image_size

  def render(self, scene: AVScene) -> dict:
    """The item of `scene` (see the class docstring)."""
    clip, m, objs = self.clip, self.max_objects, scene.objects
    n, t_frames = len(objs), clip.num_frames
    span = slice(clip.margin, clip.margin + t_frames)
    boxes = np.zeros((t_frames, m, 4), np.float32)
    bounces = np.zeros((t_frames, m), bool)
    onsets = np.full((m, t_frames), -1, np.int32)
    for k, o in enumerate(objs):
      boxes[:, k] = np.clip(o.boxes_px()[span] / clip.image_size, 0.0, 1.0)
      bounces[:, k] = o.bounces[span]
      if o.sounding:
        heard = np.flatnonzero(o.bounces) - clip.margin + scene.offset
        heard = heard[(heard >= 0) & (heard < t_frames)] * clip.samples_per_frame
        onsets[k, :len(heard)] = heard
    pad = lambda values, fill=-1: np.array(list(values) + [fill] * (m - n))
    first_sounding = next(o for o in objs if o.sounding)
    return {
        "frames": self.render_frames(scene),
        "audio": self.render_audio(scene),
        "boxes": boxes,
        "object_valid": np.arange(m) < n,
        "num_objects": np.int32(n),
        "sounding": pad((o.sounding for o in objs), False).astype(bool),
        "shape": pad(o.shape for o in objs).astype(np.int32),
        "colour": pad(o.colour for o in objs).astype(np.int32),
        "size": pad(o.size for o in objs).astype(np.int32),
        "pitch_hz": pad((PITCHES_HZ[o.colour] for o in objs), 0.0).astype(np.float32),
        "loudness": pad((self.loudness(o) for o in objs), 0.0).astype(np.float32),
        "bounces": bounces,
        "onsets": onsets,
        "offset": np.int32(scene.offset),
        "snr_db": np.float32(np.inf if scene.snr_db is None else scene.snr_db),
        "label": np.int32(sw.class_index(first_sounding.colour, first_sounding.shape)),
        "captions": captions(objs),
    }
