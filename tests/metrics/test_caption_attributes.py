"""attribute_metrics against hand counts on small made-up vocabularies."""
import numpy as np
import pytest

from mmjax.metrics import attribute_metrics

VOCABULARIES = {"size": ("small", "large"), "colour": ("red", "green", "blue"),
                "shape": ("circle", "square", "star")}
# Image 0: one small red circle; image 1: a large blue star and a small green square.
LABELS = {"num_objects": np.array([1, 2]),
          "size": np.array([[0, -1], [1, 0]]), "colour": np.array([[0, -1], [2, 1]]),
          "shape": np.array([[0, -1], [2, 1]])}


def test_against_hand_counts():
  words = [["a", "small", "red", "circle", "."],
           ["a", "large", "blue", "star", "and", "a", "green", "square", "."]]
  # Image 1 names the star fully but the square without its size: 1 of 2 objects.
  assert attribute_metrics(words, LABELS, VOCABULARIES) == {
      "object_accuracy": (1.0 + 0.5) / 2, "size_accuracy": 1.0, "colour_accuracy": 1.0,
      "shape_accuracy": 1.0, "single_object_accuracy": 1.0}
  # "circle that is blue": the words are not together, and the first colour word is wrong.
  words = [["a", "small", "circle", "that", "is", "blue", "."], ["two", "shapes", "."]]
  assert attribute_metrics(words, LABELS, VOCABULARIES) == {
      "object_accuracy": 0.0, "size_accuracy": 1.0, "colour_accuracy": 0.0,
      "shape_accuracy": 1.0, "single_object_accuracy": 0.0}


def test_phrase_order_follows_the_vocabularies():
  words = [["a", "red", "small", "circle"], ["nothing"]]
  assert attribute_metrics(words, LABELS, VOCABULARIES)["object_accuracy"] == 0.0
  reordered = {"colour": VOCABULARIES["colour"], "size": VOCABULARIES["size"],
               "shape": VOCABULARIES["shape"]}
  assert attribute_metrics(words, LABELS, reordered)["object_accuracy"] == 0.5


def test_without_single_object_images_only_object_accuracy():
  labels = {key: value[1:] for key, value in LABELS.items()}
  assert attribute_metrics([["a", "large", "blue", "star"]], labels, VOCABULARIES) == {
      "object_accuracy": 0.5}


def test_bad_input():
  with pytest.raises(ValueError, match="got 1 captions but labels for 2 images"):
    attribute_metrics([["a"]], LABELS, VOCABULARIES)
  with pytest.raises(ValueError, match=r"labels have no \['texture'\]"):
    attribute_metrics([["a"], ["b"]], LABELS, {**VOCABULARIES, "texture": ("smooth",)})
