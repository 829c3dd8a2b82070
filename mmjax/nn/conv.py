"""2-D convolution ("SAME", NHWC) with a backward pass tuned for XLA:CPU.

    y = Conv2D(64, kernel_size=3, implementation="fast")  # params {"kernel", "bias"}, as nn.Conv
    out = conv2d(x [B, H, W, Cin], kernel [k, k, Cin, Cout], strides=2, implementation="fast")

`Conv2D` has `nn.Conv`'s parameter names, shapes and initialisation order, so param trees and
checkpoints are interchangeable with `nn.Conv(features, (k, k), strides, padding="SAME")`.

Implementations:
  "xla":  `lax.conv_general_dilated` and its autodiff transpose.
  "fast": k x k (k > 1): the same forward conv under a `jax.custom_vjp` whose input gradient is
          XLA's own transposed conv and whose kernel gradient, on XLA:CPU, is summed over bands
          of output rows (~1024 output pixels B * rows * W_out each, at most 16 bands); smaller
          convs and other backends get XLA's own gradient. 1 x 1: an einsum (a matmul both ways).

Why (jax 0.10.2, 2-core AMD EPYC VM shared with training jobs, load 3-7, float32, medians of
interleaved runs, ms; benchmarks/conv_gradient.py reproduces the per-conv and UNet figures, and
benchmarks/conv_gradient.json holds them measured alone on the machine: kernel+input gradient
1.14-2.53x faster, UNet step 1.29x):
XLA:CPU hands f32 convolutions to YNNPACK. The forward and the input gradient (a conv with the
flipped kernel) run well there (16x32x32x64->64: 17-21 and 18-22), but the kernel gradient is a
conv whose window is the whole [Ho, Wo] output gradient, contracting over B * Ho * Wo, and
YNNPACK takes 43-102 for it. On Eigen (per-jit `xla_cpu_experimental_ynn_fusion_type=""`) it
takes 23, but that flag is the caller's (and moves dots off YNNPACK too). Kernel gradient of
16x32x32x64->64, tried:
  per-tap GEMMs [B*H*W, Cin]^T @ [B*H*W, Cout]  70-96 (XLA runs the 9 dots concurrently; in a
      fori_loop 45; the 9 GEMMs alone ~41)
  one im2col GEMM over [B*H*W, 9 Cin]  101-124 (building the 37 MB im2col: ~90; a fresh large
      buffer page-faults on this VM: a 37 MB elementwise op is 23 fresh, 2.6 donated)
  NCHW layout, or the gradient written as a forward conv: 61-82
  batch_group_count / "grad as lhs" forms: 560-1170 (off YNNPACK onto XLA's naive loop)
  batch chunks via lax.scan: 900-1500 (slow conv inside the loop body)
  output-channel chunks of 16 (under YNNPACK's size cut-off, so Eigen): 35-40
  batch chunks of 1-2 examples: 30-37; bands of 1-2 output rows: 41-43 (xla 87-102 same runs)
Bands were kept: as fast as batch chunks, and they leave the batch dim (and a batch-sharded
input's sharding) alone: each band's partial gradient is all-reduced, nothing is gathered.
The per-tap-GEMM input gradient (68-80) loses to XLA's transposed conv (18-24). bf16 convs
are not YNNPACK's: kernel gradient 140 (xla) vs 53 (bands), load 6.
Whole-conv value_and_grad (w.r.t. input and kernel): 1.0-1.4x for 3x3 64/128 channels, 1.7x
for conv_in (B=64, 3->64), 1.0x stride 2, 2x for a 1x1 (einsum). UNet(channels=(64, 128))
train step, batch 16, 32x32: 1.17-1.38x faster, but it compiles in ~35-40 s instead of ~18-20
(one conv per band).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax import lax

Dtype = Any
Initializer = Callable[..., jax.Array]

IMPLEMENTATIONS = ("xla", "fast")
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
# The kernel gradient is summed over bands of output rows holding about this many output
# pixels (B * rows * W_out) each, at most _MAX_KERNEL_GRAD_BANDS bands: taller bands bring
# back YNNPACK's slow large-window case, more bands cost compile time (small convs: 1 band).
_KERNEL_GRAD_BAND_PIXELS = 1024
_MAX_KERNEL_GRAD_BANDS = 16


def _same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
  """(low, high) padding of one spatial dim that XLA's "SAME" uses."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel_size - size, 0)
  return total // 2, total - total // 2


def _xla_conv(x: jax.Array, kernel: jax.Array, strides: int, padding="SAME") -> jax.Array:
  return lax.conv_general_dilated(x, kernel, (strides, strides), padding,
                                  dimension_numbers=_DIMENSION_NUMBERS)


def _kernel_grad_bands(grad_out_shape: tuple[int, ...]) -> int:
  """How many bands of output rows the kernel gradient of a `[B, Ho, Wo, Cout]` output takes.

  Only XLA:CPU gains from bands; other backends get one (their own kernel gradient).
  """
  if jax.default_backend() != "cpu":
    return 1
  batch, out_height, out_width, _ = grad_out_shape
  return min(_MAX_KERNEL_GRAD_BANDS, out_height,
             max(1, batch * out_height * out_width // _KERNEL_GRAD_BAND_PIXELS))


def _kernel_grad_by_row_bands(x: jax.Array, grad_out: jax.Array, kernel: jax.Array,
                              strides: int) -> jax.Array:
  """d(sum(conv(x, kernel) * grad_out)) / d kernel, as a float32 `[k, k, Cin, Cout]`.

  `x [B, H, W, Cin]`, `grad_out [B, Ho, Wo, Cout]`. Output rows [r0, r1) only see padded input
  rows [r0 * s, (r1 - 1) * s + k), so each band is a small conv with the band of `grad_out` as
  its window and the batch as its contraction features: `[Cin, rows, Wp, B] * [r, Wo, B, Cout]
  -> [Cin, k, k, Cout]`. Both operands are transposed once, not per band.
  """
  kh, kw = kernel.shape[:2]
  height, width = x.shape[1:3]
  out_height = grad_out.shape[1]
  band = math.ceil(out_height / _kernel_grad_bands(grad_out.shape))
  x = jnp.pad(x, ((0, 0), _same_padding(height, kh, strides), _same_padding(width, kw, strides),
                  (0, 0)))
  x_t = jnp.transpose(x, (3, 1, 2, 0))  # [Cin, Hp, Wp, B]
  grad_t = jnp.transpose(grad_out, (1, 2, 0, 3))  # [Ho, Wo, B, Cout]
  total = jnp.zeros((x.shape[3], kh, kw, grad_out.shape[3]), jnp.float32)
  for r0 in range(0, out_height, band):
    r1 = min(r0 + band, out_height)
    x_band = lax.slice_in_dim(x_t, r0 * strides, (r1 - 1) * strides + kh, axis=1)
    grad_band = lax.slice_in_dim(grad_t, r0, r1, axis=0)
    total = total + lax.conv_general_dilated(
        x_band, grad_band, (1, 1), "VALID", rhs_dilation=(strides, strides),
        dimension_numbers=_DIMENSION_NUMBERS, preferred_element_type=jnp.float32)
  return jnp.transpose(total, (1, 2, 0, 3))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _fast_conv(x: jax.Array, kernel: jax.Array, strides: int) -> jax.Array:
  return _xla_conv(x, kernel, strides)


def _fast_conv_fwd(x, kernel, strides):
  return _xla_conv(x, kernel, strides), (x, kernel)


def _fast_conv_bwd(strides, residuals, grad_out):
  x, kernel = residuals
  if _kernel_grad_bands(grad_out.shape) == 1:  # small conv: XLA's own gradient, fewer ops
    return jax.vjp(lambda x_, k_: _xla_conv(x_, k_, strides), x, kernel)[1](grad_out)
  _, input_vjp = jax.vjp(lambda x_: _xla_conv(x_, kernel, strides), x)
  grad_x = input_vjp(grad_out)[0]
  grad_kernel = _kernel_grad_by_row_bands(x, grad_out, kernel, strides)
  return grad_x, grad_kernel.astype(kernel.dtype)


_fast_conv.defvjp(_fast_conv_fwd, _fast_conv_bwd)


def _check(x: jax.Array, kernel: jax.Array, strides: int, implementation: str) -> None:
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"conv implementation must be one of {IMPLEMENTATIONS}, got "
                     f"{implementation!r}")
  if x.ndim != 4:
    raise ValueError(f"conv input must be NHWC [B, H, W, C], got shape {x.shape}")
  if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
    raise ValueError(f"conv kernel must be [k, k, Cin, Cout] with k odd, got shape "
                     f"{kernel.shape}")
  if kernel.shape[2] != x.shape[3]:
    raise ValueError(f"conv kernel expects Cin={kernel.shape[2]} input channels, the input "
                     f"[B, H, W, C] has shape {x.shape}")
  if strides not in (1, 2):
    raise ValueError(f"conv strides must be 1 or 2, got {strides}")


def conv2d(x: jax.Array, kernel: jax.Array, *, strides: int = 1,
           implementation: str = "xla") -> jax.Array:
  """A "SAME" conv of `x [B, H, W, Cin]` with `kernel [k, k, Cin, Cout]` (k odd) ->
  `[B, ceil(H / strides), ceil(W / strides), Cout]`, in the operands' dtype (no bias)."""
  _check(x, kernel, strides, implementation)
  if implementation == "xla":
    return _xla_conv(x, kernel, strides)
  if kernel.shape[0] == 1:  # "SAME" pads nothing for k = 1; stride s keeps every s-th pixel
    return jnp.einsum("bhwc,co->bhwo", x[:, ::strides, ::strides], kernel[0, 0])
  return _fast_conv(x, kernel, strides)


class Conv2D(nn.Module):
  """`nn.Conv(features, (k, k), strides, padding="SAME")` with a choice of implementation.

  `x [B, H, W, Cin]` -> `[B, ceil(H / strides), ceil(W / strides), features]` in `dtype`.
  Params: "kernel" `[k, k, Cin, features]` and "bias" `[features]`, created in that order
  with the given initialisers (so the same rng gives `nn.Conv`'s values).

  Attributes:
    kernel_size: k, odd (1 or 3 in the UNet and autoencoder).
    strides: 1 or 2.
    dtype: compute dtype (None: inferred from the input and params, as nn.Conv).
    implementation: "xla" or "fast"; see the module docstring.
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros
  implementation: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 4:
      raise ValueError(f"Conv2D input must be NHWC [B, H, W, C], got shape {x.shape}")
    if self.kernel_size < 1 or self.kernel_size % 2 == 0:
      raise ValueError(f"Conv2D kernel_size must be odd and positive, got {self.kernel_size}")
    kernel_shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv2d(x, kernel, strides=self.strides, implementation=self.implementation)
    return y + bias
