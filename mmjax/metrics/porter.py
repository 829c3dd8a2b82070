"""Porter stemmer, in the variant rouge-score uses (NLTK's default 'NLTK_EXTENSIONS' mode).

Porter (1980) with NLTK's departures: a pool of irregular forms, words of <= 2 letters left
alone, 'ies'/'ied' on 4-letter words -> 'ie', 'y' -> 'i' only after a consonant that is not
the first letter, 'bli' -> 'ble', 'alli' handled recursively, 'fulli' -> 'ful', 'logi' ->
'log', and a 2-letter vowel-consonant stem counting as cvc.
"""
import functools

_VOWELS = frozenset("aeiou")
_IRREGULAR = {
    "skies": "sky", "sky": "sky", "dying": "die", "lying": "lie", "tying": "tie",
    "news": "news", "innings": "inning", "inning": "inning", "outings": "outing",
    "outing": "outing", "cannings": "canning", "canning": "canning", "howe": "howe",
    "proceed": "proceed", "exceed": "exceed", "succeed": "succeed",
}


def _is_consonant(word: str, i: int) -> bool:
  if word[i] in _VOWELS:
    return False
  if word[i] == "y":
    # 'y' is a consonant at the start or after a vowel, a vowel after a consonant.
    negate = False
    while i > 0 and word[i] == "y":
      negate = not negate
      i -= 1
    return (word[i] not in _VOWELS) != negate
  return True


def _consonant_flags(stem: str) -> list[bool]:
  flags = []
  for i, ch in enumerate(stem):
    if ch in _VOWELS:
      flags.append(False)
    elif ch == "y":
      flags.append(True if i == 0 else not flags[i - 1])
    else:
      flags.append(True)
  return flags


def _measure(stem: str) -> int:
  """m in [C](VC)^m[V]: the number of vowel->consonant transitions."""
  flags = _consonant_flags(stem)
  return sum(1 for a, b in zip(flags, flags[1:]) if not a and b)


def _positive_measure(stem: str) -> bool:
  return _measure(stem) > 0


def _contains_vowel(stem: str) -> bool:
  return not all(_consonant_flags(stem))


def _ends_double_consonant(word: str) -> bool:
  return len(word) >= 2 and word[-1] == word[-2] and _is_consonant(word, len(word) - 1)


def _ends_cvc(word: str) -> bool:
  n = len(word)
  return ((n >= 3 and _is_consonant(word, n - 3) and not _is_consonant(word, n - 2)
           and _is_consonant(word, n - 1) and word[-1] not in "wxy")
          or (n == 2 and not _is_consonant(word, 0) and _is_consonant(word, 1)))


def _apply_rules(word: str, rules) -> str:
  """Applies the first rule whose suffix matches (then stops, whether or not its condition
  holds). A suffix of '*d' matches a double consonant."""
  for suffix, replacement, condition in rules:
    if suffix == "*d" and _ends_double_consonant(word):
      stem = word[:-2]
      return stem + replacement if condition is None or condition(stem) else word
    if word.endswith(suffix):
      stem = word[:len(word) - len(suffix)]
      return stem + replacement if condition is None or condition(stem) else word
  return word


def _step1a(word):
  if word.endswith("ies") and len(word) == 4:
    return word[:-3] + "ie"
  return _apply_rules(word, [("sses", "ss", None), ("ies", "i", None), ("ss", "ss", None),
                             ("s", "", None)])


def _step1b(word):
  if word.endswith("ied"):
    return word[:-3] + ("ie" if len(word) == 4 else "i")
  if word.endswith("eed"):
    stem = word[:-3]
    return stem + "ee" if _measure(stem) > 0 else word
  for suffix in ("ed", "ing"):
    if word.endswith(suffix) and _contains_vowel(word[:-len(suffix)]):
      stem = word[:-len(suffix)]
      break
  else:
    return word
  return _apply_rules(stem, [
      ("at", "ate", None), ("bl", "ble", None), ("iz", "ize", None),
      ("*d", stem[-1], lambda s: stem[-1] not in "lsz"),
      ("", "e", lambda s: _measure(s) == 1 and _ends_cvc(s)),
  ])


def _step1c(word):
  return _apply_rules(word, [("y", "i", lambda s: len(s) > 1 and _is_consonant(s, len(s) - 1))])


_STEP2_RULES = [
    ("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"),
    ("izer", "ize"), ("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"),
    ("ousli", "ous"), ("ization", "ize"), ("ation", "ate"), ("ator", "ate"), ("alism", "al"),
    ("iveness", "ive"), ("fulness", "ful"), ("ousness", "ous"), ("aliti", "al"),
    ("iviti", "ive"), ("biliti", "ble"), ("fulli", "ful"),
]


def _step2(word):
  if word.endswith("alli") and _positive_measure(word[:-4]):
    return _step2(word[:-4] + "al")
  rules = [(s, r, _positive_measure) for s, r in _STEP2_RULES]
  rules.append(("logi", "log", lambda s: _positive_measure(word[:-3])))
  return _apply_rules(word, rules)


def _step3(word):
  return _apply_rules(word, [(s, r, _positive_measure) for s, r in (
      ("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"),
      ("ful", ""), ("ness", ""))])


def _step4(word):
  def gt1(stem):
    return _measure(stem) > 1
  rules = [(s, "", gt1) for s in ("al", "ance", "ence", "er", "ic", "able", "ible", "ant",
                                  "ement", "ment", "ent")]
  rules.append(("ion", "", lambda s: _measure(s) > 1 and s[-1:] in ("s", "t")))
  rules += [(s, "", gt1) for s in ("ou", "ism", "ate", "iti", "ous", "ive", "ize")]
  return _apply_rules(word, rules)


def _step5a(word):
  if word.endswith("e"):
    stem = word[:-1]
    measure = _measure(stem)
    if measure > 1 or (measure == 1 and not _ends_cvc(stem)):
      return stem
  return word


def _step5b(word):
  return _apply_rules(word, [("ll", "l", lambda s: _measure(word[:-1]) > 1)])


@functools.lru_cache(maxsize=2**16)
def porter_stem(word: str) -> str:
  """The stem of one word (lowercased first), as nltk's PorterStemmer().stem(word)."""
  stem = word.lower()
  if stem in _IRREGULAR:
    return _IRREGULAR[stem]
  if len(word) <= 2:
    return stem
  for step in (_step1a, _step1b, _step1c, _step2, _step3, _step4, _step5a, _step5b):
    stem = step(stem)
  return stem
