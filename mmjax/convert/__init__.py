"""Import of public checkpoints (safetensors / npz, never pickle) into mmjax models and params."""
from mmjax.convert.clip import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_config_from_state_dict,
                                load_clip, normalize_images)
from mmjax.convert.sd_vae import load_sd_vae
from mmjax.convert.siglip import (SIGLIP_MEAN, SIGLIP_PAD_ID, SIGLIP_STD, load_siglip,
                                  siglip_config_from_state_dict)
from mmjax.convert.state_dict import read_state_dict, read_state_dict_with_metadata

__all__ = ["OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "clip_config_from_state_dict", "load_clip",
           "load_sd_vae", "normalize_images", "read_state_dict", "read_state_dict_with_metadata",
           "SIGLIP_MEAN", "SIGLIP_PAD_ID", "SIGLIP_STD", "load_siglip",
           "siglip_config_from_state_dict"]
