"""Text-to-image diffusion training (a text-conditioned UNet or DiT denoiser) on ShapeWorld.

The model is a `TextToImageDenoiser` (mmjax/models/text_to_image.py): a `UNet` or `DiT`
(`model.denoiser.name`) that cross-attends to the per-token outputs of a `TextTransformer`
trained jointly with it, plus a learned null context used for classifier-free guidance: with
probability `diffusion.cfg_dropout` an example's text context is replaced by it in training.

With an `autoencoder` config section naming a trained autoencoder run (`autoencoder.workdir`),
the same task is Stable-Diffusion-style latent diffusion: the denoiser works on the frozen
autoencoder's scaled latents and samples are decoded back to images (`diffusion_spaces`).

`evaluate` is deliberately cheap: the denoising loss on a fixed held-out batch at a few fixed
times with fixed noise (deterministic, comparable across steps). CLIP-judged prompt accuracy
and FID of samples are heavier and belong to an experiment script, not to the training loop.
"""
from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from mmjax import diffusion
from mmjax.diffusion import parameterization
from mmjax.data import pipeline
from mmjax.data.shapeworld_inputs import (bad_example_options, check_images, check_tokens,
                                          text_tower_fields)
from mmjax.data.sources import image_text_source, task_tokenizer
from mmjax.models import build_model
from mmjax.models.text_to_image import DENOISERS, TextToImageDenoiser
from mmjax.train import sharding
from mmjax.train.tasks.base import Task
from mmjax.train.tasks.diffusion_spaces import PixelSpace, load_latent_space

SCHEDULES = {"cosine": diffusion.cosine_schedule, "linear": diffusion.linear_schedule,
             "scaled_linear": diffusion.scaled_linear_schedule}


def build_schedule(config: ml_collections.ConfigDict) -> diffusion.Schedule:
  """The noise schedule named by `config.schedule` ("cosine", "linear", "scaled_linear")."""
  if config.schedule not in SCHEDULES:
    raise ValueError(f"diffusion.schedule must be one of {sorted(SCHEDULES)}, got "
                     f"{config.schedule!r}")
  return SCHEDULES[config.schedule](config.num_train_steps, discrete=config.discrete)


class DiffusionTask(Task):
  """Text-to-image denoising (eps/v/x0 MSE, optional min-SNR) with condition dropout for CFG."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.tokenizer = task_tokenizer(config.data)
    denoiser = config.model.get("denoiser")
    if not hasattr(denoiser, "get") or denoiser.get("name") not in DENOISERS:
      raise ValueError(f"model.denoiser must be a dict whose name is one of {DENOISERS}, got "
                       f"{denoiser.get('name') if hasattr(denoiser, 'get') else denoiser!r}")
    self._model = build_model(
        config.model, text=text_tower_fields(self.tokenizer, config.data.context_length),
        denoiser=dict(context_dim=config.model.text.width, **self._denoiser_extras()))
    self.schedule = build_schedule(config.diffusion)
    cfg = config.diffusion
    parameterization.check_prediction(cfg.prediction)
    if not 0.0 <= cfg.cfg_dropout <= 1.0:
      raise ValueError(f"diffusion.cfg_dropout must be in [0, 1], got {cfg.cfg_dropout}")
    # < 1 for a refiner that only learns the low-noise end (see `refine`).
    self.max_train_time = float(cfg.get("max_train_time", 1.0))
    if not 0.0 < self.max_train_time <= 1.0:
      raise ValueError(f"diffusion.max_train_time must be in (0, 1], got {self.max_train_time}")
    autoencoder = config.get("autoencoder")
    if autoencoder is not None and autoencoder.workdir:
      self.space = load_latent_space(autoencoder, config.data)
    else:
      self.space = PixelSpace(config.data.image_size)
    self._eval_cache = None
    self._samplers = {}
    self._eval_fn = None

  @property
  def model(self) -> TextToImageDenoiser:
    return self._model

  # -- data -----------------------------------------------------------------------------------

  def _source(self, split: str, length: int):
    return image_text_source(self.config.data, split, length)

  def train_batches(self, process_index: int, process_count: int):
    return pipeline.batch_iterator(pipeline.image_text_batches(
        self._source("train", self.config.data.train_length), self.tokenizer,
        batch_size=self.config.batch_size // process_count,
        context_length=self.config.data.context_length, seed=self.config.seed,
        process_index=process_index, process_count=process_count,
        **bad_example_options(self.config.data)))

  def check_batch(self, batch, step: int) -> None:
    data = self.config.data
    image = check_images(batch, step, data.image_size)
    text = check_tokens(batch, step, "text", data.context_length, len(image))
    empty = np.flatnonzero((text != self.tokenizer.pad_id).sum(axis=1) == 0)
    if empty.size:
      raise ValueError(f"batch at step {step}: rows {empty[:8].tolist()} have empty text (all "
                       "padding)")

  # -- model ----------------------------------------------------------------------------------

  def _denoiser_extras(self) -> dict[str, Any]:
    """Denoiser fields this task fixes, besides the text context's width (none for
    text-to-image; a super-resolution stage's low-res input)."""
    return {}

  def _extra_condition(self, x0: jax.Array, key: jax.Array, train: bool) -> dict[str, jax.Array]:
    """Denoiser inputs besides x_t, t and the text for clean data `x0 [B, ...]` (none for
    text-to-image; a super-resolution stage adds its noise-augmented low-res image)."""
    del x0, key, train
    return {}

  def init_params(self, rng: jax.Array) -> Any:
    length = self.config.data.context_length
    x = jnp.zeros((1,) + self.space.shape, jnp.float32)
    tokens = jnp.zeros((1, length), jnp.int32).at[:, 0].set(self.tokenizer.bos_id)
    extra = self._extra_condition(x, rng, train=False)
    return self._model.init(rng, x, jnp.ones((1,), jnp.float32), tokens, **extra)["params"]

  def _apply(self, params, *args, method, **kwargs):
    return self._model.apply({"params": params}, *args, method=method, **kwargs)

  def _denoise_fn(self, params):
    """`(x_t, t, context, context_mask, **extra) -> output`: the library's `denoise_fn`
    contract (`extra`: see `_extra_condition`)."""
    def denoise_fn(x_t, t, context, context_mask, **extra):
      return self._apply(params, x_t, t, context, context_mask,
                         method=TextToImageDenoiser.denoise, **extra)
    return denoise_fn

  def _condition(self, params, tokens):
    context, mask = self._apply(params, tokens, method=TextToImageDenoiser.encode_text)
    null = self._apply(params, tokens.shape[1], method=TextToImageDenoiser.null_condition)
    return {"context": context, "context_mask": mask}, {"context": null[0], "context_mask": null[1]}

  def loss_fn(self, params, batch, rng):
    cfg = self.config.diffusion
    drop_key, time_key, noise_key, encode_key = jax.random.split(rng, 4)
    x0 = self.space.encode(batch["image"], encode_key)
    cond, null = self._condition(params, batch["text"])
    cond, keep = diffusion.drop_condition(drop_key, cond, null, cfg.cfg_dropout)
    t = diffusion.sample_train_times(time_key, x0.shape[0], self.schedule,
                                     max_time=self.max_train_time)
    noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
    x_t = diffusion.q_sample(self.schedule, x0, t, noise)
    extra = self._extra_condition(x0, jax.random.fold_in(rng, 1), train=True)
    output = self._denoise_fn(params)(x_t, t, **cond, **extra)
    per_example = diffusion.denoising_loss(output, x0, noise, t, self.schedule,
                                           prediction=cfg.prediction, reduce=False)
    if cfg.min_snr_gamma is None:
      loss = jnp.mean(per_example)
    else:
      weights = diffusion.min_snr_weight(self.schedule.log_snr(t), cfg.prediction,
                                         cfg.min_snr_gamma)
      loss = jnp.mean(per_example * weights)
    return loss, {"mse": jnp.mean(per_example), "cond_fraction": jnp.mean(keep.astype(jnp.float32))}

  # -- evaluation -----------------------------------------------------------------------------

  def _eval_data(self):
    """A fixed held-out batch: images in [0, 1], first captions' tokens, fixed noise."""
    if self._eval_cache is None:
      cfg = self.config.eval
      source = self._source("test", cfg.batch_size)
      count = len(source)
      arrays = pipeline.eval_arrays(source, self.tokenizer, self.config.data.context_length,
                                    count)
      first_caption = np.unique(arrays["text_to_image"], return_index=True)[1]
      noise = np.asarray(jax.random.normal(jax.random.key(cfg.seed),
                                           (count,) + self.space.shape, jnp.float32))
      self._eval_cache = dict(image=arrays["image"], text=arrays["text"][first_caption],
                              noise=noise)
    return self._eval_cache

  def eval_losses(self, params, mesh: Mesh) -> jax.Array:
    """Unweighted denoising MSE `[len(eval.times)]` on the fixed held-out batch."""
    data = self._eval_data()
    times = jnp.asarray(self.config.eval.times, jnp.float32)
    if self._eval_fn is None:
      prediction = self.config.diffusion.prediction

      def losses(params, images, tokens, noise):
        x0 = self.space.encode(images)
        cond, _ = self._condition(params, tokens)
        cond.update(self._extra_condition(x0, jax.random.key(self.config.eval.seed),
                                          train=False))
        denoise = self._denoise_fn(params)

        def at(time):
          t = jnp.full((x0.shape[0],), time, jnp.float32)
          x_t = diffusion.q_sample(self.schedule, x0, t, noise)
          return diffusion.denoising_loss(denoise(x_t, t, **cond), x0, noise, t, self.schedule,
                                          prediction=prediction)
        return jax.lax.map(at, times)
      self._eval_fn = jax.jit(losses)
    placed = sharding.replicate_from_host((data["image"], data["text"], data["noise"]), mesh)
    return self._eval_fn(params, *placed)

  def evaluate(self, params, mesh: Mesh) -> dict[str, float]:
    values = sharding.to_host(self.eval_losses(params, mesh))
    results = {f"eval_mse_t{t:g}": float(v) for t, v in zip(self.config.eval.times, values)}
    results["eval_mse"] = float(np.mean(values))
    return results

  # -- sampling -------------------------------------------------------------------------------

  def sample(self, params, prompts: Sequence[str] | None, *, num_samples: int = 4,
             steps: int = 20, guidance: float = 3.0, sampler: str = "dpmpp_2m",
             seed: int = 0) -> np.ndarray:
    """Generates `num_samples` images per prompt with classifier-free guidance.

    Args:
      params: the denoiser's parameters.
      prompts: P captions, or None for `num_samples` unconditional images (null context).
      guidance: CFG scale (0 = unconditional, 1 = conditional, > 1 guided).
      sampler: one of `mmjax.diffusion.SAMPLERS` ("ddim", "dpmpp_2m", ...).
      seed: the noise and sampler key; the same seed and shapes give the same x_T.
    Returns:
      float32 `[P * num_samples, H, W, 3]` in [0, 1], prompt-major.
    """
    tokens, count = self._sampling_tokens(prompts, num_samples, steps, sampler)
    run = self._jitted(("sample", sampler, int(steps), tokens is None),
                       lambda: self._sample_fn(sampler, int(steps)))
    images = run(params, count, tokens, jax.random.key(seed), jnp.float32(guidance))
    return np.asarray(sharding.to_host(images))

  def refine(self, params, coarse_images, prompts: Sequence[str] | None, *, strength: float = 0.3,
             steps: int = 20, guidance: float = 3.0, sampler: str = "dpmpp_2m",
             seed: int = 0) -> np.ndarray:
    """Coarse-to-fine refinement (SDXL-refiner style SDEdit) with this model.

    The coarse images are upsampled to `data.image_size`, noised to t = strength and
    denoised with classifier-free guidance (`mmjax.diffusion.refine_coarse_to_fine`). A
    refiner is trained with `diffusion.max_train_time` >= strength (it never sees more noise).

    Args:
      coarse_images: `[N, h, w, 3]` in [0, 1], any resolution up to `data.image_size`.
      prompts: N captions, one per image, or None (null context).
      strength: in (0, 1], traced (changing it does not recompile).
    Returns:
      float32 `[N, S, S, 3]` in [0, 1].
    """
    if not isinstance(self.space, PixelSpace):
      raise ValueError("refine needs a pixel-space model (no autoencoder.workdir)")
    coarse = np.asarray(coarse_images, np.float32)
    if coarse.ndim != 4 or coarse.shape[-1] != 3 or not len(coarse):
      raise ValueError(f"coarse_images must be [N, h, w, 3] with N >= 1, got {coarse.shape}")
    if not 0.0 < float(strength) <= 1.0:
      raise ValueError(f"strength must be in (0, 1], got {strength}")
    tokens, count = self._sampling_tokens(prompts, 1, steps, sampler)
    if prompts is not None and count != len(coarse):
      raise ValueError(f"give one prompt per coarse image: {count} prompts, {len(coarse)} images")
    run = self._jitted(("refine", sampler, int(steps), tokens is None),
                       lambda: self._refine_fn(sampler, int(steps)))
    images = run(params, len(coarse), tokens, jax.random.key(seed), jnp.float32(guidance),
                 coarse, jnp.float32(strength))
    return np.asarray(sharding.to_host(images))

  def _sampling_tokens(self, prompts, num_samples, steps, sampler):
    """Validates sampling arguments; returns (tokens `[P * num_samples, L]` prompt-major or
    None for unconditional sampling, the number of images to draw)."""
    if sampler not in diffusion.SAMPLERS:
      raise ValueError(f"unknown sampler {sampler!r}, expected one of {diffusion.SAMPLERS}")
    if int(num_samples) < 1 or int(steps) < 1:
      raise ValueError(f"num_samples and steps must be >= 1, got {num_samples} and {steps}")
    if prompts is None:
      return None, int(num_samples)
    if isinstance(prompts, str) or not len(prompts):
      raise ValueError(f"prompts must be a non-empty list of str (or None), got {prompts!r}")
    unknown = [p for p in prompts
               if all(i == self.tokenizer.unk_id for i in self.tokenizer.encode(p))]
    if unknown:
      raise ValueError(f"prompt {unknown[0]!r} has no word the model knows (every word maps to "
                       f"the unknown token); use words of its vocabulary, e.g. "
                       f"{self.config.sample.prompts[0]!r}")
    length = self.config.data.context_length
    tokens = np.repeat(self.tokenizer.encode_batch(list(prompts), length), num_samples, axis=0)
    return tokens, len(tokens)

  def _jitted(self, key, build):
    """`jax.jit(build(), static_argnums=1)` (argument 1: the image count), once per key."""
    if key not in self._samplers:
      self._samplers[key] = jax.jit(build(), static_argnums=1)
    return self._samplers[key]

  def _guided_denoiser(self, params, tokens, count: int, guidance):
    """(denoise_fn, cond) for sampling `count` images: classifier-free guidance around the
    text of `tokens [count, L]`, or the null context alone when tokens is None."""
    length = self.config.data.context_length
    denoise = self._denoise_fn(params)
    null_context, null_mask = self._apply(params, length, method=TextToImageDenoiser.null_condition)
    if tokens is None:
      return denoise, {"context": jnp.broadcast_to(null_context, (count,) + null_context.shape),
                       "context_mask": jnp.broadcast_to(null_mask, (count, length))}
    cond, _ = self._condition(params, tokens)
    return diffusion.classifier_free_guidance(
        denoise, guidance, uncond={"context": null_context, "context_mask": null_mask}), cond

  def _sampler_options(self) -> dict[str, Any]:
    """`sample` keywords shared by every sampling path: the prediction type and, in pixel
    space, clipping of x0 predictions to the data range (latents are unbounded)."""
    options = {"prediction": self.config.diffusion.prediction}
    if self.space.thresholding:
      options["x0_transform"] = diffusion.static_thresholding(1.0)
    return options

  def _sample_fn(self, sampler: str, steps: int):
    def run(params, count, tokens, key, guidance):
      noise_key, sampler_key = jax.random.split(key)
      x_T = jax.random.normal(noise_key, (count,) + self.space.shape, jnp.float32)
      denoise, cond = self._guided_denoiser(params, tokens, count, guidance)
      x0 = diffusion.sample(denoise, sampler_key, x_T, self.schedule, sampler=sampler,
                            num_steps=steps, cond=cond, **self._sampler_options())
      return self.space.decode(x0)
    return run

  def _refine_fn(self, sampler: str, steps: int):
    def run(params, count, tokens, key, guidance, coarse, strength):
      denoise, cond = self._guided_denoiser(params, tokens, count, guidance)
      x0 = diffusion.refine_coarse_to_fine(
          denoise, key, self.space.encode(coarse), self.schedule, shape=self.space.shape,
          strength=strength, num_steps=steps, sampler=sampler, cond=cond,
          **self._sampler_options())
      return self.space.decode(x0)
    return run

  def write_artifacts(self, params, mesh: Mesh, workdir: pathlib.Path) -> list[pathlib.Path]:
    from mmjax.train import plots
    cfg = self.config.sample
    images = self.sample(params, list(cfg.prompts), num_samples=cfg.num_per_prompt,
                         steps=cfg.steps, guidance=cfg.guidance, sampler=cfg.sampler,
                         seed=cfg.seed)
    if jax.process_index() != 0:
      return []
    grid = plots.save_image_grid(workdir / "samples.png", images, columns=cfg.num_per_prompt,
                           zoom=cfg.zoom)
    (workdir / "samples.txt").write_text("\n".join(cfg.prompts) + "\n")
    return [plots.loss_curve(workdir), grid]
