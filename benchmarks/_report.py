"""Shared helpers of the benchmark scripts: the machine line, the load guard, and rewriting one
marked section of benchmarks/README.md.

A ratio measured beside other jobs is not a result (other processes slow PyTorch's OpenMP
threads far more than XLA's pool), so every script measures the 1-minute load average before
and after its run (`LoadWatch`) and prints both. `write_section` refuses to write a README
table when the load before was at or above `IDLE_LOAD`, or the load after was above what the
run itself makes (it keeps every core busy: `os.cpu_count()`) plus `IDLE_LOAD`, unless
`--allow-loaded` is given; the table then says it was measured under load. The table's load
line is always the measured numbers, never a sentence typed into a script.
"""
import os
import pathlib
import platform
import re

README = pathlib.Path(__file__).with_name("README.md")
IDLE_LOAD = 1.0


def machine_line() -> str:
  """One line naming the machine a table was measured on."""
  return (f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")


class LoadWatch:
  """The 1-minute load average at construction (`before`) and at `finish()` (`after`)."""

  def __init__(self):
    self.before = os.getloadavg()[0]
    self.after = None
    print(f"load average (1 min) before the run: {self.before:.2f}", flush=True)

  def finish(self) -> None:
    if self.after is None:
      self.after = os.getloadavg()[0]
      print(f"load average (1 min) after the run: {self.after:.2f}", flush=True)

  @property
  def idle(self) -> bool:
    """Idle before the run, and nothing but the run (all cores) during it."""
    self.finish()
    return self.before < IDLE_LOAD and self.after < (os.cpu_count() or 1) + IDLE_LOAD

  def line(self) -> str:
    """The table's load line: the two measured values, and a warning when not idle."""
    self.finish()
    text = (f"Load: 1-minute load average {self.before:.2f} before and {self.after:.2f} after "
            "the run")
    if self.idle:
      return text + "."
    return (text + " -- not idle: **measured beside other jobs, so these figures are not a "
            "result** (written with --allow-loaded).")


def add_load_argument(parser) -> None:
  """`--allow-loaded`: write the README table even when the machine was not idle."""
  parser.add_argument("--allow-loaded", action="store_true",
                      help=f"write the README table even if the load average was >= "
                           f"{IDLE_LOAD} (the table then says so)")


def write_section(name: str, markdown: str, load: LoadWatch, allow_loaded: bool = False) -> bool:
  """Replaces the text between `<!-- BEGIN name -->` and `<!-- END name -->` in README.md
  with `markdown` and `load`'s line; returns False (writing nothing) if the machine was not
  idle and `allow_loaded` is False."""
  if not load.idle and not allow_loaded:
    print(f"not writing README section {name!r}: the load average was {load.before:.2f} "
          f"before (idle: < {IDLE_LOAD}) and {load.after:.2f} after (the run alone: < "
          f"{(os.cpu_count() or 1) + IDLE_LOAD}); rerun on an idle machine, or pass "
          "--allow-loaded to write it marked as measured under load")
    return False
  markdown = f"{markdown.strip()}\n\n{load.line()}"
  text = README.read_text()
  begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
  if begin not in text:
    text += f"\n## {name}\n{begin}\n{end}\n"
  pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
  text = pattern.sub(lambda _: f"{begin}\n{markdown}\n{end}", text)
  README.write_text(text)
  print(f"wrote README section {name!r}")
  return True
