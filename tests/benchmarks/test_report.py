"""benchmarks/_report.py: a README table is written only from an idle machine, and always
carries the load it was measured at."""
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
import _report  # noqa: E402  pylint: disable=wrong-import-position

SECTION = "# Benchmarks\n\n## t\n<!-- BEGIN t -->\nold table\n<!-- END t -->\n\nkept text\n"


@pytest.fixture
def readme(tmp_path, monkeypatch):
  path = tmp_path / "README.md"
  path.write_text(SECTION)
  monkeypatch.setattr(_report, "README", path)
  return path


def _load_watch(monkeypatch, before, after):
  monkeypatch.setattr(_report.os, "cpu_count", lambda: 2)  # the run alone: load < 2 + 1
  loads = iter([before, after])
  monkeypatch.setattr(_report.os, "getloadavg", lambda: (next(loads), 0.0, 0.0))
  return _report.LoadWatch()


def test_an_idle_run_writes_its_table_with_the_measured_load(readme, monkeypatch, capsys):
  load = _load_watch(monkeypatch, 0.12, 2.95)  # after: the run's own 2 busy cores
  assert _report.write_section("t", "| new | table |", load)
  text = readme.read_text()
  assert ("<!-- BEGIN t -->\n| new | table |\n\nLoad: 1-minute load average 0.12 before and "
          "2.95 after the run.\n<!-- END t -->") in text
  assert "old table" not in text and text.endswith("kept text\n")
  out = capsys.readouterr().out
  assert "load average (1 min) before the run: 0.12" in out
  assert "load average (1 min) after the run: 2.95" in out


@pytest.mark.parametrize("before, after", [(1.0, 0.2), (0.2, 3.1)])
def test_a_loaded_run_writes_nothing_unless_allowed_and_then_says_so(readme, monkeypatch, capsys,
                                                                     before, after):
  load = _load_watch(monkeypatch, before, after)
  assert not _report.write_section("t", "| new | table |", load)
  assert readme.read_text() == SECTION
  assert "not writing README section 't'" in capsys.readouterr().out
  assert _report.write_section("t", "| new | table |", load, allow_loaded=True)
  assert (f"Load: 1-minute load average {before:.2f} before and {after:.2f} after the run -- "
          "not idle: **measured beside other jobs, so these figures are not a "
          "result**") in readme.read_text()
