"""Test-wide setup: 8 simulated CPU devices so sharding tests see a small pod.

The flag must be set before jax initialises its backends, hence at import time here.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
