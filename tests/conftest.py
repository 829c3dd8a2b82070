"""Test-wide setup: 8 simulated CPU devices so sharding tests see a small pod.

The flag must be set before jax initialises its backends, hence at import time here. An
XLA_FLAGS already in the environment keeps its other flags; a device count other than 8 in it
is an error rather than a silent run of the sharding tests on fewer devices.
"""
import os
import re

import pytest

NUM_DEVICES = 8
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def xla_flags_with_device_count(flags: str, count: int = NUM_DEVICES) -> str:
  """`flags` (an XLA_FLAGS value) with `--xla_force_host_platform_device_count=count` added
  when absent; ValueError if it already forces another count."""
  counts = re.findall(rf"{_DEVICE_COUNT_FLAG}=(\S*)", flags)
  if not counts:
    return f"{flags} {_DEVICE_COUNT_FLAG}={count}".strip()
  if any(c != str(count) for c in counts):
    raise ValueError(f"XLA_FLAGS={flags!r} sets {_DEVICE_COUNT_FLAG}={','.join(counts)}, but the "
                     f"tests need {count} host devices; unset XLA_FLAGS or use "
                     f"{_DEVICE_COUNT_FLAG}={count}")
  return flags


os.environ["XLA_FLAGS"] = xla_flags_with_device_count(os.environ.get("XLA_FLAGS", ""))
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def use_a_fresh_compilation_cache() -> str:
  """Points jax's persistent compilation cache at a new temporary folder for this session.

  Most of the suite's time is XLA compiling the same tiny models again: every `train` call jits
  new closures, and child processes start cold. The cache is keyed by the compiled program, so a
  hit returns the executable a fresh compile would build (bit-identical runs stay bit-identical);
  a new folder per session means no entry outlives the code that wrote it. Set through the
  environment so `mmjax train` children inherit it. An explicit JAX_COMPILATION_CACHE_DIR is
  kept."""
  import atexit
  import shutil
  import tempfile
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    folder = tempfile.mkdtemp(prefix="mmjax_test_xla_cache_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
  # Tiny test programs compile in well under jax's default 1 s threshold.
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  return os.environ["JAX_COMPILATION_CACHE_DIR"]


use_a_fresh_compilation_cache()


@pytest.fixture(autouse=True, scope="session")
def eight_devices():
  """Fails every test loudly if jax does not see the 8 devices (e.g. jax was initialised before
  this file set XLA_FLAGS, or JAX_PLATFORMS selects another platform)."""
  import jax
  count = jax.device_count()
  if count != NUM_DEVICES:
    raise RuntimeError(f"jax sees {count} devices ({jax.devices()[0].platform}), the tests need "
                       f"{NUM_DEVICES}: XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}, "
                       f"JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS')!r}")
