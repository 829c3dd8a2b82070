"""`load_sd_vae` against diffusers' own `AutoencoderKL` outputs (the committed fixture made by
tests/fixtures/convert_sd_vae/make_sd_vae_fixture.py: a random 3-level VAE with perturbed norms,
float16 weights, reference encode / decode computed by diffusers in float32 from them)."""
import pathlib

import jax
import numpy as np
import pytest
import safetensors.numpy

from mmjax.convert.sd_vae import load_sd_vae
from mmjax.convert.state_dict import read_state_dict
from mmjax.errors import CheckpointMismatchError
from mmjax.nn.autoencoder import KLAutoencoder

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "convert_sd_vae"
FOLDER = FIXTURE / "tiny_vae"
WEIGHTS = FOLDER / "diffusion_pytorch_model.safetensors"
LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


@pytest.fixture(scope="module")
def converted():
  return load_sd_vae(FOLDER)


@pytest.fixture(scope="module")
def state():
  return read_state_dict(WEIGHTS)


def _flat(params):
  return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_encode_and_decode_match_diffusers(converted):
  model, params, factor = converted
  ref = np.load(FIXTURE / "reference.npz")
  assert (model.layout, model.channels, model.num_res_blocks, model.latent_channels,
          model.num_groups) == ("sd", (8, 16, 16), 2, 4, 4)

  @jax.jit
  def run(params, image, z):
    posterior = model.apply({"params": params}, image, method=KLAutoencoder.encode)
    return posterior, model.apply({"params": params}, z, method=KLAutoencoder.decode)

  posterior, decoded = run(params, ref["image"], ref["z"])
  np.testing.assert_allclose(posterior.mean, ref["mean"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(posterior.logvar, ref["logvar"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(decoded, ref["decoded"], atol=1e-4, rtol=0)
  # The fixture's config.json (save_pretrained's) carries SDXL's factor; the model applies it.
  assert factor == model.scaling_factor == 0.13025


def test_legacy_attention_names_and_conv_weights_convert_the_same(converted, state, tmp_path,
                                                                  capsys):
  legacy = {}
  for key, value in state.items():
    for new, old in LEGACY.items():
      if f".attentions.0.{new}." in key:
        key = key.replace(f".{new}.", f".{old}.")
        value = value[:, :, None, None] if value.ndim == 2 else value  # 1x1-conv weights
    legacy[key] = value
  assert "decoder.mid_block.attentions.0.proj_attn.weight" in legacy
  assert legacy["encoder.mid_block.attentions.0.query.weight"].shape == (16, 16, 1, 1)
  np.savez(tmp_path / "legacy.npz", **legacy)
  model, params, factor = load_sd_vae(tmp_path / "legacy.npz", num_groups=4)
  want = _flat(converted[1])
  got = _flat(params)
  assert sorted(got) == sorted(want)
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  # No metadata, no config.json: SD 1's factor, and a note saying SDXL's would look the same.
  assert factor == model.scaling_factor == 0.18215
  assert "pass load_sd_vae(..., scaling_factor='sdxl')" in capsys.readouterr().err


def test_scaling_factor_choice(state, tmp_path):
  # Explicit beats config.json (0.13025 in the fixture folder).
  assert load_sd_vae(FOLDER, scaling_factor=0.25)[2] == 0.25
  # Safetensors metadata, when there is no explicit value; names map to the published factors.
  path = tmp_path / "vae.safetensors"
  safetensors.numpy.save_file(state, str(path), metadata={"scaling_factor": "0.5"})
  model, _, factor = load_sd_vae(path, num_groups=4)
  assert factor == model.scaling_factor == 0.5
  assert load_sd_vae(path, num_groups=4, scaling_factor="sdxl")[2] == 0.13025
  with pytest.raises(ValueError, match=r"one of \['sd', 'sdxl'\], got 'sd3'"):
    load_sd_vae(path, num_groups=4, scaling_factor="sd3")


def _rewrite(state, tmp_path, drop=(), add=None):
  """The fixture's state dict without `drop`, with `add`'s entries set, as an .npz path."""
  changed = {k: v for k, v in state.items() if k not in drop}
  changed.update(add or {})
  np.savez(tmp_path / "bad.npz", **changed)
  return tmp_path / "bad.npz"


def test_mismatching_checkpoints_name_the_keys(state, tmp_path):
  missing = "decoder.up_blocks.0.resnets.2.conv2.bias"
  with pytest.raises(CheckpointMismatchError, match=rf"missing {missing}"):
    load_sd_vae(_rewrite(state, tmp_path, drop=[missing]), num_groups=4)
  wrong = {"encoder.mid_block.attentions.0.to_q.weight": np.zeros((16, 8), np.float16)}
  with pytest.raises(CheckpointMismatchError,
                     match=r"to_q.weight has shape \[16, 8\], expected \[16, 16\]"):
    load_sd_vae(_rewrite(state, tmp_path, add=wrong), num_groups=4)
  extra = {"decoder.up_blocks.0.resnets.0.time_emb_proj.weight": np.zeros((16, 4))}
  with pytest.raises(CheckpointMismatchError,
                     match=r"does not have: \['decoder.up_blocks.0.resnets.0.time_emb_proj"):
    load_sd_vae(_rewrite(state, tmp_path, add=extra), num_groups=4)
  ldm = {"encoder.down.0.block.0.norm1.weight": np.ones(8)}
  with pytest.raises(CheckpointMismatchError, match=r"original CompVis / ldm layout.*"
                     r"from_single_file"):
    load_sd_vae(_rewrite(state, tmp_path, add=ldm))
  with pytest.raises(ValueError, match=r"3 GroupNorm groups do not divide the channel counts "
                     r"\[8, 16\]"):
    load_sd_vae(WEIGHTS, num_groups=3)


def test_unknown_layout_fails_clearly():
  with pytest.raises(ValueError, match=r"layout must be one of \('mmjax', 'sd'\), got 'ldm'"):
    jax.eval_shape(KLAutoencoder(channels=(8,), num_groups=4, layout="ldm").init,
                   jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32))
