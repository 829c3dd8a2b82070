"""Initialisers shared by mmjax layers (one place, so towers initialise alike)."""
import flax.linen as nn

# Fan-in scaled normal over the contracted input axis (axis 0 of every kernel in mmjax).
attention_kernel = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                                     in_axis=0, out_axis=-1)
dense_kernel = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
embedding = nn.initializers.normal(stddev=0.02)
