"""Pure-function diffusion: schedules, samplers, guidance and losses over a `denoise_fn`.

    from mmjax import diffusion
    schedule = diffusion.scaled_linear_schedule()
    x0 = diffusion.sample(denoise_fn, key, noise, schedule, sampler="dpmpp_2m", num_steps=20)

`denoise_fn(x_t [B, ...], t [B], **cond) -> eps | x0 | v [B, ...]` with t the continuous time
in [0, 1] (see `schedules` for the discrete-index convention). Depends on jax/numpy only.
"""
from mmjax.diffusion.cascade import CascadeStage
from mmjax.diffusion.cascade import refine_coarse_to_fine
from mmjax.diffusion.cascade import sample_cascade
from mmjax.diffusion.cascade import super_resolve
from mmjax.diffusion.forward import denoising_loss
from mmjax.diffusion.forward import drop_condition
from mmjax.diffusion.forward import min_snr_weight
from mmjax.diffusion.forward import q_sample
from mmjax.diffusion.forward import sample_train_times
from mmjax.diffusion.forward import training_loss
from mmjax.diffusion.guidance import classifier_free_guidance
from mmjax.diffusion.guidance import dynamic_threshold
from mmjax.diffusion.guidance import dynamic_thresholding
from mmjax.diffusion.guidance import rescale_guidance
from mmjax.diffusion.guidance import static_thresholding
from mmjax.diffusion.parameterization import PREDICTIONS
from mmjax.diffusion.parameterization import convert_output
from mmjax.diffusion.parameterization import eps_from_output
from mmjax.diffusion.parameterization import output_from_x0_eps
from mmjax.diffusion.parameterization import x0_from_output
from mmjax.diffusion.samplers import SAMPLERS
from mmjax.diffusion.samplers import img2img
from mmjax.diffusion.samplers import sample
from mmjax.diffusion.schedules import Schedule
from mmjax.diffusion.schedules import cosine_schedule
from mmjax.diffusion.schedules import from_alpha_bar
from mmjax.diffusion.schedules import from_betas
from mmjax.diffusion.schedules import karras_sigmas
from mmjax.diffusion.schedules import linear_schedule
from mmjax.diffusion.schedules import rescale_zero_terminal_snr
from mmjax.diffusion.schedules import scaled_linear_schedule
from mmjax.diffusion.timesteps import SPACINGS
from mmjax.diffusion.timesteps import sampling_times
