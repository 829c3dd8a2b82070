"""mmjax: a JAX/Flax library and experiment runner for multi-modal learning.

Subpackages are imported on demand (``import mmjax.losses``) so that importing one pure
function never pulls in the trainer, Grain or orbax.
"""
__version__ = "0.1.0"
