"""Shared helper for benchmark scripts: rewrite one marked section of benchmarks/README.md."""
import pathlib
import platform
import re

README = pathlib.Path(__file__).with_name("README.md")


def machine_line() -> str:
  """One line naming the machine a table was measured on."""
  import os
  return f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, Python {platform.python_version()}"


def write_section(name: str, markdown: str) -> None:
  """Replaces the text between `<!-- BEGIN name -->` and `<!-- END name -->` in README.md."""
  text = README.read_text()
  begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
  if begin not in text:
    text += f"\n## {name}\n{begin}\n{end}\n"
  pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
  text = pattern.sub(lambda _: f"{begin}\n{markdown.strip()}\n{end}", text)
  README.write_text(text)
