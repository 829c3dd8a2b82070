"""ShapeWorld-AV and its speech subset: determinism, held-out pairings, and every label checked
against the rendered pixels / waveform with independent references (the documented pitch and
formant tables and Fourier series transcribed here, FFT peaks, energy envelopes, box geometry).
"""
import dataclasses
import time

import numpy as np
import pytest

from mmjax.data import shapeworld_av as av
from mmjax.data import shapeworld_av_speech as avs

COLOURS, SHAPES = av.COLOURS, av.SHAPES
SPF = 2000  # Samples per frame at the defaults (16 kHz, 1 s, 8 frames).
# The documented pitch of each colour: minor thirds from 220 Hz.
PITCH_OF = {"red": 220.0, "green": 261.63, "blue": 311.13, "yellow": 369.99,
            "magenta": 440.0, "cyan": 523.25, "orange": 622.25, "white": 739.99}
# |harmonic 2| / |harmonic 1| and |harmonic 3| / |harmonic 1| of each shape's waveform (Fourier
# series of sine, square, triangle, sawtooth, sine + noise, 25% pulse).
HARMONIC_RATIOS = {"circle": (0, 0), "square": (0, 1 / 3), "triangle": (0, 1 / 9),
                   "star": (1 / 2, 1 / 3), "cross": (0, 0), "diamond": (2 ** -0.5, 1 / 3)}
# Speech: (F1, F2) per phoneme letter and (half width, half height) of the mouth per phoneme as
# fractions of the image side (closed lips: a 1 px half-height line).
FORMANTS = {"a": (730, 1090), "e": (530, 1840), "i": (270, 2290), "o": (570, 840),
            "u": (300, 870), "m": (250, 1200), "b": (200, 600), "s": (2500, 3500)}
MOUTH = {"a": (0.15, 0.09), "e": (0.17, 0.05), "i": (0.20, 0.035), "o": (0.10, 0.06),
         "u": (0.065, 0.035), "m": (0.14, 0.0), "b": (0.14, 0.0), "s": (0.20, 0.035)}


@pytest.fixture(scope="module")
def single():
  """Clean one-object clips (all sounding) with their items."""
  ds = av.ShapeWorldAV("val", 200, seed=5, num_objects=(1, 1), silent_probability=0.0)
  return ds, [ds[i] for i in range(len(ds))]


def energy(audio, start, stop):
  return float(np.mean(np.square(audio[max(start, 0):stop], dtype=np.float64)))


def test_item_layout():
  ds = av.ShapeWorldAV("val", 10, num_objects=(2, 3), image_size=48, num_frames=4,
                       sample_rate=8000, clip_seconds=0.5)
  ex = ds[np.int64(3)]
  n = int(ex["num_objects"])
  expect = {"frames": (np.uint8, (4, 48, 48, 3)), "audio": (np.float32, (4000,)),
            "boxes": (np.float32, (4, 3, 4)), "object_valid": (bool, (3,)),
            "sounding": (bool, (3,)), "shape": (np.int32, (3,)), "colour": (np.int32, (3,)),
            "pitch_hz": (np.float32, (3,)), "loudness": (np.float32, (3,)),
            "bounces": (bool, (4, 3)), "onsets": (np.int32, (3, 4)), "offset": (np.int32, ()),
            "snr_db": (np.float32, ()), "label": (np.int32, ())}
  for key, (dtype, shape) in expect.items():
    assert ex[key].dtype == dtype and ex[key].shape == shape, key
  assert ex["object_valid"].tolist() == [k < n for k in range(3)]
  assert (ex["boxes"][:, n:] == 0).all() and (ex["shape"][n:] == -1).all()
  assert not ex["sounding"][n:].any() and ex["sounding"][:n].any()
  assert ex["snr_db"] == np.inf and len(ex["captions"]) == av.NUM_CAPTIONS
  np.testing.assert_allclose(ex["pitch_hz"][:n], [PITCH_OF[COLOURS[c]] for c in ex["colour"][:n]],
                             rtol=1e-4)
  first = int(np.argmax(ex["sounding"]))
  assert ex["label"] == ex["colour"][first] * len(SHAPES) + ex["shape"][first]


def test_deterministic_pure_function_of_seed_split_index():
  a, b = av.ShapeWorldAV("train", 50, seed=7), av.ShapeWorldAV("train", 10 ** 9, seed=7)
  for i in (0, 13, 49):
    x, y = a[i], b[np.int32(i)]
    for key in x:
      assert np.array_equal(np.asarray(x[key]), np.asarray(y[key])), key
    assert a[i]["audio"].tobytes() == x["audio"].tobytes()  # No hidden state.
  for other in (av.ShapeWorldAV("val", 50, seed=7), av.ShapeWorldAV("train", 50, seed=8)):
    assert other[1]["frames"].tobytes() != a[1]["frames"].tobytes()
    assert other[1]["audio"].tobytes() != a[1]["audio"].tobytes()
  assert a[1]["audio"].tobytes() != a[2]["audio"].tobytes()
  s, t = avs.ShapeWorldAVSpeech("train", 20, seed=7), avs.ShapeWorldAVSpeech("train", 20, seed=7)
  assert s[4]["audio"].tobytes() == t[4]["audio"].tobytes()
  assert s[4]["frames"].tobytes() == t[4]["frames"].tobytes()
  assert s[4]["audio"].tobytes() != avs.ShapeWorldAVSpeech("val", 20, seed=7)[4]["audio"].tobytes()


def test_heldout_pairings_absent_from_train_present_in_test():
  heldout = {(COLOURS.index(c), SHAPES.index(s)) for c, s in av.HELDOUT_COMBOS}
  train = av.ShapeWorldAV("train", 1200, seed=2)
  for i in range(len(train)):
    objs = train.scene(i).objects
    assert not heldout & {(o.colour, o.shape) for o in objs}, i
    if i < 200:
      text = " ".join(av.captions(objs))
      assert not any(f"{c} {s}" in text for c, s in av.HELDOUT_COMBOS), text
  for i in range(60):  # Items agree with their scenes.
    ex, objs = train[i], train.scene(i).objects
    n = int(ex["num_objects"])
    assert list(zip(ex["colour"][:n], ex["shape"][:n])) == [(o.colour, o.shape) for o in objs]
  test = av.ShapeWorldAV("test", 500, seed=2)
  seen = {(o.colour, o.shape) for i in range(len(test)) for o in test.scene(i).objects}
  assert heldout <= seen and len(seen) == len(COLOURS) * len(SHAPES)
  speech_train = avs.ShapeWorldAVSpeech("train", 400, seed=2)
  words = {avs.WORDS[speech_train.scene(i).word] for i in range(400)}
  assert words == set(avs.WORDS) - set(avs.HELDOUT_WORDS)
  speech_test = avs.ShapeWorldAVSpeech("test", 200, seed=2)
  assert {avs.WORDS[speech_test.scene(i).word] for i in range(200)} == set(avs.WORDS)


def _foreground(image):
  background = np.median(image.reshape(-1, 3), axis=0)
  return np.abs(image.astype(np.float32) - background).max(-1) > 40


def test_boxes_contain_the_drawn_pixels(single):
  _, items = single
  for i, ex in enumerate(items[:80]):
    for t, frame in enumerate(ex["frames"]):
      ys, xs = np.nonzero(_foreground(frame))
      x0, y0, x1, y1 = ex["boxes"][t, 0] * 32
      assert xs.min() >= np.floor(x0) - 1 and xs.max() <= np.ceil(x1), (i, t)
      assert ys.min() >= np.floor(y0) - 1 and ys.max() <= np.ceil(y1), (i, t)
      assert xs.min() <= x0 + 2.5 and xs.max() + 1 >= x1 - 2.5, (i, t)
      assert ys.min() <= y0 + 2.5 and ys.max() + 1 >= y1 - 2.5, (i, t)


def test_bounces_are_wall_touches_of_straight_motion_and_give_the_onsets():
  ds = av.ShapeWorldAV("val", 150, seed=3, silent_probability=0.3)
  bounced = 0
  for i in range(len(ds)):
    ex = ds[i]
    for k in range(int(ex["num_objects"])):
      box = ex["boxes"][:, k].astype(np.float64)
      touch = (box[:, :2].min(-1) < 1e-5) | (box[:, 2:].max(-1) > 1 - 1e-5)
      assert ex["bounces"][:, k].tolist() == touch.tolist(), (i, k)
      step = np.diff((box[:, :2] + box[:, 2:]) / 2, axis=0) * 32  # [T - 1, 2] px per frame.
      for t in range(1, 7):
        if not touch[t] and not touch[t + 1]:  # Straight, constant-speed motion.
          np.testing.assert_allclose(step[t], step[t - 1], atol=1e-3, err_msg=f"{i} {k} {t}")
        elif touch[t]:  # It turns at the wall along at least one axis.
          assert (step[t] * step[t - 1] < 0).any(), (i, k, t)
      expected = np.flatnonzero(touch) * SPF if ex["sounding"][k] else []
      onsets = ex["onsets"][k]
      assert onsets[onsets >= 0].tolist() == list(expected), (i, k)
      bounced += touch.any()
  assert bounced > 150  # Most objects bounce in a clip.


def test_audio_energy_rises_exactly_at_the_onsets(single):
  _, items = single
  rises = 0
  for i, ex in enumerate(items):
    onsets = set(ex["onsets"][0][ex["onsets"][0] >= 0].tolist())
    for t in range(1, 8):
      n = t * SPF
      ratio = energy(ex["audio"], n, n + 160) / energy(ex["audio"], n - 160, n)
      if n in onsets:
        assert ratio > 2.0, (i, t, ratio)
        rises += 1
      else:
        assert ratio < 1.6, (i, t, ratio)
  assert rises > 100


def _spectrum(audio, pad=4):
  return np.abs(np.fft.rfft(audio, n=pad * len(audio)))


def test_pitch_is_the_colours_and_timbre_the_shapes(single):
  ds, items = single
  seen = set()
  for i, ex in enumerate(items):
    colour, shape = COLOURS[ex["colour"][0]], SHAPES[ex["shape"][0]]
    spectrum = _spectrum(ex["audio"] * np.hanning(16000))  # 0.25 Hz bins.
    peak = (np.argmax(spectrum[200:]) + 200) / 4
    assert abs(peak - PITCH_OF[colour]) <= 1.0, (i, colour, peak)
    pitch = PITCH_OF[colour]
    harmonic = lambda h: spectrum[int(4 * h * pitch) - 12:int(4 * h * pitch) + 13].max()
    ratios = harmonic(2) / harmonic(1), harmonic(3) / harmonic(1)
    np.testing.assert_allclose(ratios, HARMONIC_RATIOS[shape], atol=0.03, err_msg=f"{i} {shape}")
    floor = np.median(spectrum[400:28000]) / harmonic(1)
    assert (floor > 3e-3) == (shape == "cross"), (i, shape, floor)  # Only the cross hisses.
    seen.add((colour, shape))
  assert len(seen) > 30


def test_loudness_follows_size(single):
  _, items = single
  peaks = {0: [], 1: []}
  for i, ex in enumerate(items):
    box = ex["boxes"][:, 0]
    extent = float(np.max(box[:, 2:] - box[:, :2], axis=1).max())  # Unclipped frames hold it.
    assert ex["loudness"][0] == pytest.approx(0.6 * extent, rel=1e-4), i
    if (ex["onsets"][0] >= 0).any():  # Some burst peaks at the full loudness.
      peak = np.abs(ex["audio"]).max()
      # The cross's 30% noise need not peak where its sine does.
      lowest = 0.65 if SHAPES[ex["shape"][0]] == "cross" else 0.85
      assert lowest * 0.6 * extent <= peak <= 0.6 * extent * (1 + 1e-5), (i, peak, extent)
      if lowest == 0.85:
        peaks[int(ex["size"][0])].append(peak)
  assert min(peaks[1]) > max(peaks[0]) and len(peaks[0]) > 20 and len(peaks[1]) > 20


def test_silent_objects_contribute_nothing():
  ds = av.ShapeWorldAV("val", 60, seed=4, num_objects=(2, 3), silent_probability=0.5)
  checked = 0
  for i in range(len(ds)):
    scene = ds.scene(i)
    if all(o.sounding for o in scene.objects):
      continue
    heard = dataclasses.replace(scene, objects=tuple(o for o in scene.objects if o.sounding))
    audio = ds.render_audio(scene)
    np.testing.assert_array_equal(audio, ds.render_audio(heard))
    assert not np.array_equal(ds.render_frames(scene), ds.render_frames(heard))  # Still seen.
    loud = dataclasses.replace(scene, objects=tuple(
        dataclasses.replace(o, sounding=True) for o in scene.objects))
    assert np.abs(ds.render_audio(loud) - audio).max() > 0.01
    checked += 1
  assert checked > 10
  always_silent = av.ShapeWorldAV("val", 30, seed=4, num_objects=(3, 3), silent_probability=1.0)
  never_silent = av.ShapeWorldAV("val", 30, seed=4, num_objects=(3, 3), silent_probability=0.0)
  for i in range(30):
    quiet, loud = always_silent[i], never_silent[i]
    assert quiet["sounding"].sum() == 1 and loud["sounding"].all()  # One object always sounds.
    assert quiet["frames"].tobytes() == loud["frames"].tobytes()


def assert_shifted(audio, offset, reference, reference_offset):
  """audio[n] == reference[n - (offset - reference_offset) * F] wherever both exist."""
  lag = (offset - reference_offset) * SPF
  if lag >= 0:
    np.testing.assert_allclose(audio[lag:], reference[:len(reference) - lag], atol=1e-6)
  else:
    np.testing.assert_allclose(audio[:lag], reference[-lag:], atol=1e-6)


@pytest.mark.parametrize("offset", [-3, -1, 2, 3])
def test_offset_shifts_the_audio_by_whole_frames(offset):
  aligned = av.ShapeWorldAV("val", 12, seed=6, offset_frames=0)
  shifted = av.ShapeWorldAV("val", 12, seed=6, offset_frames=offset)
  nearer = offset - int(np.sign(offset))
  one_less = av.ShapeWorldAV("val", 12, seed=6, offset_frames=nearer)
  lag = offset * SPF
  for i in range(12):
    a, b, c = aligned[i], shifted[i], one_less[i]
    assert b["offset"] == offset
    np.testing.assert_array_equal(a["frames"], b["frames"])
    # Positive offset: audio lags video; audio_k[n] = audio_0[n - k * F].
    assert_shifted(b["audio"], offset, a["audio"], 0)
    # The shifted-in samples are the scene's sound beyond the clip (the same for every offset
    # that shifts them in), not silence.
    assert_shifted(b["audio"], offset, c["audio"], nearer)
    padding = b["audio"][:lag] if offset > 0 else b["audio"][lag:]
    assert np.sqrt(np.mean(padding ** 2)) > 0.01, i
    for k in range(int(a["num_objects"])):
      before = a["onsets"][k][a["onsets"][k] >= 0] + lag
      after = b["onsets"][k][b["onsets"][k] >= 0]
      inside = before[(before >= 0) & (before < 16000)]
      assert set(inside.tolist()) <= set(after.tolist()), (i, k)


def test_random_offsets_are_drawn_in_range_and_leave_the_objects_alone():
  aligned = av.ShapeWorldAV("train", 40, seed=9)
  ranged = av.ShapeWorldAV("train", 40, seed=9, offset_frames=(-3, 3), snr_db=(0.0, 20.0))
  offsets = []
  for i in range(40):
    a, b = aligned[i], ranged[i]
    k = int(b["offset"])
    offsets.append(k)
    np.testing.assert_array_equal(a["frames"], b["frames"])
    assert 0.0 <= b["snr_db"] <= 20.0
    clean = ranged.render_audio(dataclasses.replace(ranged.scene(i), snr_db=None))
    assert_shifted(clean, k, a["audio"], 0)
  assert set(offsets) == set(range(-3, 4))


@pytest.mark.parametrize("snr_db", [0.0, 6.0, 20.0])
def test_noise_power_matches_the_snr(snr_db):
  clean_ds = av.ShapeWorldAV("test", 8, seed=1)
  noisy_ds = av.ShapeWorldAV("test", 8, seed=1, snr_db=snr_db)
  for i in range(8):
    clean, noisy = clean_ds[i]["audio"], noisy_ds[i]["audio"]
    assert noisy_ds[i]["snr_db"] == snr_db and np.abs(noisy).max() < 1.0  # Nothing clipped.
    noise = noisy.astype(np.float64) - clean
    measured = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise ** 2))
    assert measured == pytest.approx(snr_db, abs=0.01), i
    assert abs(np.corrcoef(noise[1:], noise[:-1])[0, 1]) < 0.05  # White.


def _formant_peaks(segment, sample_rate=16000):
  spectrum = _spectrum(segment * np.hanning(len(segment)))
  freqs = np.fft.rfftfreq(4 * len(segment), 1 / sample_rate)
  first = np.argmax(spectrum)
  far = np.abs(freqs - freqs[first]) > 150
  second = np.argmax(np.where(far, spectrum, 0))
  return sorted((freqs[first], freqs[second]))


def _mouth_size(frame):
  rgb = frame.astype(np.int32)
  lips = (rgb[..., 0] - rgb[..., 1] > 85) & (rgb[..., 0] > 100)
  ys, xs = np.nonzero(lips)
  return xs.max() - xs.min() + 1, ys.max() - ys.min() + 1


def test_speech_phonemes_set_the_formants_and_the_mouth():
  ds = avs.ShapeWorldAVSpeech("test", 40, seed=8)
  pd = 2
  for i in range(len(ds)):
    ex = ds[i]
    word = avs.WORDS[ex["word"]]
    assert ex["captions"][0] == f"a face saying {word}."
    letters = [avs.PHONEMES[p] for p in ex["phonemes"] if p >= 0]
    assert letters == list(word), (i, word)
    per_frame = ex["phoneme_frames"]
    start = int(np.argmax(per_frame >= 0))
    expected = [-1] * start + [avs.PHONEMES.index(c) for c in word for _ in range(pd)]
    assert per_frame.tolist() == expected + [-1] * (8 - len(expected)), (i, word)
    assert ex["onsets"][0][ex["onsets"][0] >= 0].tolist() == [
        (start + j * pd) * SPF for j in range(len(word))]
    audio, scale = ex["audio"], float(ex["formant_scale"])
    spoken = np.zeros(16000, bool)
    for j, letter in enumerate(word):
      lo = (start + j * pd) * SPF
      spoken[lo:lo + pd * SPF] = True
      peaks = _formant_peaks(audio[lo:lo + pd * SPF])
      np.testing.assert_allclose(peaks, np.array(FORMANTS[letter]) * scale, rtol=0.01,
                                 err_msg=f"{i} {word} {letter}")
    assert not audio[~spoken].any()  # Silence outside the word.
    for t, frame in enumerate(ex["frames"]):
      letter = avs.PHONEMES[per_frame[t]] if per_frame[t] >= 0 else "m"  # Rest: lips closed.
      a, b = MOUTH[letter][0] * 32, max(MOUTH[letter][1] * 32, 1.0)  # Half axes, px.
      width, height = _mouth_size(frame)
      # Pixel centres sample the ellipse: the widest sampled row is within 0.5 px of its
      # centre line, and a chord of length L holds L +- 1 pixel centres (+0.3 for the threshold).
      assert 2 * a * np.sqrt(max(0.0, 1 - (0.5 / b) ** 2)) - 1.3 <= width <= 2 * a + 1.3, (
          i, t, letter, width)
      assert abs(height - 2 * b) <= 1.3, (i, t, letter, height)
      x0, y0, x1, y1 = ex["boxes"][t, 0] * 32
      assert (x1 - x0) == pytest.approx(2 * a, abs=1e-3), (i, t)
      assert (y1 - y0) == pytest.approx(2 * b, abs=1e-3), (i, t)


def test_speech_offset_and_noise():
  aligned = avs.ShapeWorldAVSpeech("val", 10, seed=1)
  late = avs.ShapeWorldAVSpeech("val", 10, seed=1, offset_frames=2, snr_db=10.0)
  for i in range(10):
    a, b = aligned[i], late[i]
    np.testing.assert_array_equal(a["frames"], b["frames"])
    clean = late.render_audio(dataclasses.replace(late.scene(i), snr_db=None))
    assert_shifted(clean, 2, a["audio"], 0)
    assert not clean[:2 * SPF].any()
    noise = b["audio"].astype(np.float64) - clean
    assert 10 * np.log10(np.mean(clean ** 2.0) / np.mean(noise ** 2)) == pytest.approx(10, abs=0.01)


def test_captions_name_the_objects_and_their_sounds():
  verbs = dict(zip(SHAPES, ("beeping", "buzzing", "whistling", "rasping", "hissing", "honking")))
  ds = av.ShapeWorldAV("train", 100, seed=3, silent_probability=0.4)
  tok, speech_tok = av.shapeworld_av_tokenizer(), avs.shapeworld_av_speech_tokenizer()
  for i in range(len(ds)):
    ex = ds[i]
    n = int(ex["num_objects"])
    names = [f"{COLOURS[c]} {SHAPES[s]}" for c, s in zip(ex["colour"][:n], ex["shape"][:n])]
    loud = [f"the {name} is {verbs[name.split()[1]]}" for name, on in zip(names, ex["sounding"])
            if on]
    silent = [f"the {name} is silent" for name, on in zip(names, ex["sounding"]) if not on]
    first, sounds = ex["captions"][0], ex["captions"][1]
    assert all(name in first for name in names) and all(s in first for s in loud + silent)
    assert all(s in sounds for s in loud) and "silent" not in sounds
    assert sounds.count(" is ") == len(loud)
    for caption in ex["captions"]:
      assert tok.unk_id not in tok.encode(caption) and tok.decode(tok.encode(caption)) == caption
  for i in range(20):
    for caption in avs.ShapeWorldAVSpeech("val", 20)[i]["captions"]:
      assert speech_tok.unk_id not in speech_tok.encode(caption)


def test_grain_random_access():
  import grain
  ds = av.ShapeWorldAV("val", 6, seed=2)
  mapped = grain.MapDataset.source(ds)
  assert len(mapped) == 6
  np.testing.assert_array_equal(mapped[4]["audio"], ds[4]["audio"])


def test_bad_arguments():
  bad = [dict(split="training"), dict(length=-1), dict(image_size=8), dict(num_frames=1),
         dict(sample_rate=0), dict(sample_rate=-16000), dict(sample_rate=16000.0),
         dict(clip_seconds=0.0), dict(clip_seconds=float("nan")),
         dict(num_frames=7),  # 16000 samples is not a multiple of 7 frames.
         dict(num_objects=(0, 2)), dict(num_objects=(2, 4)), dict(num_objects=(3, 2)),
         dict(offset_frames=8), dict(offset_frames=-8), dict(offset_frames=(2, -2)),
         dict(offset_frames=(-3, 8)), dict(snr_db=float("nan")), dict(snr_db=(10.0, 0.0)),
         dict(snr_db=float("inf")), dict(silent_probability=1.5),
         dict(silent_probability=float("nan"))]
  for kwargs in bad:
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
      av.ShapeWorldAV(**kwargs)
  with pytest.raises(ValueError, match="offset_frames"):
    av.ShapeWorldAV(offset_frames=(0, 1, 2))
  with pytest.raises(ValueError, match="sample_rate"):
    avs.ShapeWorldAVSpeech(sample_rate=4000)
  with pytest.raises(ValueError, match="num_frames"):
    avs.ShapeWorldAVSpeech(num_frames=2)
  with pytest.raises(IndexError):
    av.ShapeWorldAV(length=3)[3]
  with pytest.raises(IndexError):
    avs.ShapeWorldAVSpeech(length=3)[-1]


def test_speed():
  ds = av.ShapeWorldAV("train", 100, seed=11)
  speech = avs.ShapeWorldAVSpeech("train", 100, seed=11)
  for source in (ds, speech):
    source[0]
    start = time.process_time()  # CPU time of this process: robust to a shared machine.
    for i in range(len(source)):
      source[i]
    per_example = (time.process_time() - start) / len(source)
    assert per_example < 0.015, f"{source!r}: {per_example * 1e3:.1f} ms of CPU per example"


def test_size_ranges_set_the_box_extents():
  big = av.ShapeWorldAV("test", 40, num_objects=(1, 1), size_ranges=((0.5, 0.55), (0.7, 0.75)))
  default = av.ShapeWorldAV("test", 40, num_objects=(1, 1))
  for ds, (small, large) in ((big, ((0.5, 0.55), (0.7, 0.75))),
                             (default, av.sw.SIZE_RANGES)):
    for i in range(40):
      item = ds[i]
      box = item["boxes"][0, 0]
      extent = max(box[2] - box[0], box[3] - box[1])  # the larger side: the unit box's 2 * half
      lo, hi = (small, large)[int(item["size"][0])]
      assert lo - 1e-3 <= extent <= hi + 1e-3, (i, extent, lo, hi)
  with pytest.raises(ValueError, match="size_ranges must be"):
    av.ShapeWorldAV("test", 4, size_ranges=((0.5, 0.4), (0.6, 0.7)))
