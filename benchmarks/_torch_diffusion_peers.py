"""PyTorch side of benchmarks/diffusion_train.py: the peers of mmjax's UNet and DiT, as a worker.

Run by diffusion_train.py with a PyTorch interpreter (it imports no JAX and no mmjax):

  VENV/bin/python benchmarks/_torch_diffusion_peers.py --batch-file B.npz --threads 2

Once started it writes one JSON line of versions (torch, diffusers, threads); then it reads one
JSON command per line on stdin and answers one JSON line on stdout:
  {"cmd": "build", "model": "unet" | "dit", "config": {...}} -> {"params": N}
  {"cmd": "steps", "model": ..., "n": k}  -> {"seconds": [k step times], "loss": last loss}
  {"cmd": "quit"}
A step is forward + MSE to the target + backward + `torch.optim.AdamW`, eager float32; each
step's time is taken inside this process, so the pipe costs nothing.

Peers:
  unet: diffusers `UNet2DConditionModel` with mmjax's UNet channels, blocks and heads. It
    differs from mmjax's in its layers: q/k/v projections without bias and a GEGLU
    feed-forward (fc1 twice as wide) in every transformer block; stride-2 convs padded (1, 1)
    where XLA's "SAME" pads (0, 1). The parameter counts are printed side by side.
  dit: `TorchDiT` below, a transcription of mmjax.nn.dit.DiT with cross-attention (same
    parameter shapes, zero-initialised modulations and output, tanh GELU, LN eps 1e-6).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0,
                       max_period: float = 10000.0) -> torch.Tensor:
  """`[B]` times in [0, 1] -> `[B, dim]` features [cos, sin] (mmjax.nn.unet's order)."""
  half = dim // 2
  freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
  args = (t.float() * scale)[:, None] * freqs[None, :]
  return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_2d_positions(height: int, width: int, dim: int) -> torch.Tensor:
  """Fixed positions `[height * width, dim]`: rows in the first half of the features, columns
  in the second, each [sin, cos] at frequencies 10000^(-k / (dim / 4))."""
  quarter = dim // 4
  freqs = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)

  def encode(pos):
    angles = pos[:, None] * freqs[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  rows, cols = np.meshgrid(np.arange(height, dtype=np.float64),
                           np.arange(width, dtype=np.float64), indexing="ij")
  table = np.concatenate([encode(rows.ravel()), encode(cols.ravel())], axis=1)
  return torch.from_numpy(table.astype(np.float32))


def zero_linear(d_in: int, d_out: int) -> nn.Linear:
  layer = nn.Linear(d_in, d_out)
  nn.init.zeros_(layer.weight)
  nn.init.zeros_(layer.bias)
  return layer


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
  """`x [B, T, D] * (1 + scale [B, D]) + shift [B, D]`."""
  return x * (1 + scale[:, None]) + shift[:, None]


def affine_free_norm(x: torch.Tensor) -> torch.Tensor:
  return F.layer_norm(x, x.shape[-1:], eps=1e-6)


class SelfAttention(nn.Module):
  """Fused qkv projection (mmjax's [D, 3, H, Dh] kernel as one Linear) + SDPA + out."""

  def __init__(self, width: int, heads: int):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(width, 3 * width)
    self.out = nn.Linear(width, width)

  def forward(self, x):
    batch, length, width = x.shape
    qkv = self.qkv(x).view(batch, length, 3, self.heads, width // self.heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, T, Dh]
    h = F.scaled_dot_product_attention(q, k, v)
    return self.out(h.transpose(1, 2).reshape(batch, length, width))


class CrossAttention(nn.Module):
  """Query from the tokens, fused kv from the context `[B, L, Dc]`; mask `[B, L]` bool."""

  def __init__(self, width: int, context_dim: int, heads: int):
    super().__init__()
    self.heads = heads
    self.query = nn.Linear(width, width)
    self.kv = nn.Linear(context_dim, 2 * width)
    self.out = nn.Linear(width, width)

  def forward(self, x, context, mask):
    batch, length, width = x.shape
    head_dim = width // self.heads
    q = self.query(x).view(batch, length, self.heads, head_dim).transpose(1, 2)
    kv = self.kv(context).view(batch, context.shape[1], 2, self.heads, head_dim)
    k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
    h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    return self.out(h.transpose(1, 2).reshape(batch, length, width))


class AdaLNZeroBlock(nn.Module):
  """mmjax TransformerBlock(adaptive_norm=True, cross_attention=True)."""

  def __init__(self, width: int, heads: int, mlp_dim: int, context_dim: int):
    super().__init__()
    self.adaln_modulation = zero_linear(width, 6 * width)
    self.self_attn = SelfAttention(width, heads)
    self.ln_cross = nn.LayerNorm(width, eps=1e-6)
    self.cross_attn = CrossAttention(width, context_dim, heads)
    self.fc1 = nn.Linear(width, mlp_dim)
    self.fc2 = nn.Linear(mlp_dim, width)

  def forward(self, x, condition, context, mask):
    shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = (
        self.adaln_modulation(F.silu(condition)).chunk(6, dim=-1))
    h = modulate(affine_free_norm(x), shift_attn, scale_attn)
    x = x + gate_attn[:, None] * self.self_attn(h)
    x = x + self.cross_attn(self.ln_cross(x), context, mask)
    h = modulate(affine_free_norm(x), shift_mlp, scale_mlp)
    h = self.fc2(F.gelu(self.fc1(h), approximate="tanh"))
    return x + gate_mlp[:, None] * h


class TorchDiT(nn.Module):
  """mmjax.nn.dit.DiT (sincos positions, text cross-attention, no SR inputs) in PyTorch.

  `forward(x [B, C, H, W], t [B] in [0, 1], context [B, L, Dc], mask [B, L] bool)`
  -> `[B, C, H, W]`.
  """

  def __init__(self, *, image_size: int, in_channels: int, patch_size: int, width: int,
               num_layers: int, num_heads: int, mlp_ratio: float, context_dim: int,
               frequency_dim: int = 256, time_scale: float = 1000.0):
    super().__init__()
    self.patch_size, self.frequency_dim, self.time_scale = patch_size, frequency_dim, time_scale
    patch_dim = patch_size * patch_size * in_channels
    grid = image_size // patch_size
    self.patch_embed = nn.Linear(patch_dim, width)
    self.register_buffer("positions", sincos_2d_positions(grid, grid, width), persistent=False)
    self.time_fc1 = nn.Linear(frequency_dim, width)
    self.time_fc2 = nn.Linear(width, width)
    self.pooled_text = nn.Linear(context_dim, width)
    self.blocks = nn.ModuleList(
        AdaLNZeroBlock(width, num_heads, int(mlp_ratio * width), context_dim)
        for _ in range(num_layers))
    self.final_modulation = zero_linear(width, 2 * width)
    self.final_proj = zero_linear(width, patch_dim)

  def forward(self, x, t, context, mask):
    batch, channels, height, width = x.shape
    p = self.patch_size
    # [B, C, H, W] -> [B, (H/p W/p), (p p C)]: the patch features in mmjax's (p, q, c) order.
    patches = x.view(batch, channels, height // p, p, width // p, p)
    patches = patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, -1, p * p * channels)
    tokens = self.patch_embed(patches) + self.positions

    emb = timestep_embedding(t, self.frequency_dim, self.time_scale)
    condition = self.time_fc2(F.silu(self.time_fc1(emb)))
    weights = mask.float()[..., None]
    pooled = (context * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    condition = condition + self.pooled_text(pooled)

    for block in self.blocks:
      tokens = block(tokens, condition, context, mask)
    shift, scale = self.final_modulation(F.silu(condition)).chunk(2, dim=-1)
    h = self.final_proj(modulate(affine_free_norm(tokens), shift, scale))
    h = h.view(batch, height // p, width // p, p, p, channels)
    return h.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, height, width)


def diffusers_unet(config: dict) -> nn.Module:
  from diffusers import UNet2DConditionModel
  levels = len(config["channels"])
  attention = set(config["attention_levels"])
  if not config["mid_attention"]:
    raise ValueError("the diffusers peer always has a cross-attention middle block")
  return UNet2DConditionModel(
      sample_size=config["image_size"], in_channels=config["in_channels"],
      out_channels=config["in_channels"], block_out_channels=tuple(config["channels"]),
      layers_per_block=config["num_res_blocks"],
      down_block_types=tuple("CrossAttnDownBlock2D" if i in attention else "DownBlock2D"
                             for i in range(levels)),
      up_block_types=tuple("CrossAttnUpBlock2D" if i in attention else "UpBlock2D"
                           for i in reversed(range(levels))),
      cross_attention_dim=config["context_dim"],
      # diffusers' `attention_head_dim` is the number of heads here (its documented misnomer;
      # `num_attention_heads` is refused by UNet2DConditionModel).
      attention_head_dim=config["num_heads"], norm_num_groups=config["num_groups"])


class Peer:
  """One model, its AdamW and the batch as torch tensors (NCHW images)."""

  def __init__(self, model_name: str, config: dict, batch: dict[str, np.ndarray]):
    torch.manual_seed(0)
    self.model_name = model_name
    if model_name == "unet":
      self.model = diffusers_unet(config)
    elif model_name == "dit":
      self.model = TorchDiT(image_size=config["image_size"], in_channels=config["in_channels"],
                            patch_size=config["patch_size"], width=config["width"],
                            num_layers=config["num_layers"], num_heads=config["num_heads"],
                            mlp_ratio=config["mlp_ratio"], context_dim=config["context_dim"])
    else:
      raise ValueError(f"model must be 'unet' or 'dit', got {model_name!r}")
    self.model.train()
    optim = config["optim"]
    self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=optim["learning_rate"],
                                       betas=(optim["b1"], optim["b2"]), eps=optim["eps"],
                                       weight_decay=optim["weight_decay"])
    self.x_t = torch.from_numpy(batch["x_t"]).permute(0, 3, 1, 2).contiguous()
    self.target = torch.from_numpy(batch["target"]).permute(0, 3, 1, 2).contiguous()
    self.t = torch.from_numpy(batch["t"])
    self.context = torch.from_numpy(batch["context"])
    self.mask = torch.from_numpy(batch["context_mask"])
    self.num_params = sum(p.numel() for p in self.model.parameters())

  def predict(self):
    if self.model_name == "unet":
      # diffusers takes the discrete-style timestep (t * 1000) and a {0, 1} key mask.
      return self.model(self.x_t, self.t * 1000.0, encoder_hidden_states=self.context,
                        encoder_attention_mask=self.mask.float()).sample
    return self.model(self.x_t, self.t, self.context, self.mask)

  def steps(self, n: int) -> tuple[list[float], float]:
    seconds = []
    for _ in range(n):
      start = time.perf_counter()
      self.optimizer.zero_grad(set_to_none=True)
      loss = F.mse_loss(self.predict(), self.target)
      loss.backward()
      self.optimizer.step()
      value = float(loss.detach())
      seconds.append(time.perf_counter() - start)
    if not math.isfinite(value):
      raise FloatingPointError(f"torch {self.model_name} loss is {value}")
    return seconds, value


def versions() -> dict:
  out = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
  try:
    import diffusers
    out["diffusers"] = diffusers.__version__
  except ImportError:
    out["diffusers"] = None
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch-file", required=True, help=".npz with x_t, t, context, ...")
  parser.add_argument("--threads", type=int, default=2)
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  with np.load(args.batch_file) as data:
    batch = {name: data[name] for name in data.files}
  peers = {}
  reply = sys.stdout
  reply.write(json.dumps(versions()) + "\n")
  reply.flush()
  for line in sys.stdin:
    command = json.loads(line)
    if command["cmd"] == "quit":
      break
    if command["cmd"] == "build":
      peer = peers[command["model"]] = Peer(command["model"], command["config"], batch)
      answer = {"params": peer.num_params}
    elif command["cmd"] == "steps":
      seconds, loss = peers[command["model"]].steps(command["n"])
      answer = {"seconds": seconds, "loss": loss}
    else:
      raise ValueError(f"unknown command {command['cmd']!r}")
    reply.write(json.dumps(answer) + "\n")
    reply.flush()


if __name__ == "__main__":
  main()
