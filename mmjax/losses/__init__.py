"""Pure loss functions (jax/numpy only): contrastive InfoNCE and sigmoid losses.

`clip_loss` and `siglip_loss` take `[N, D]` embeddings; `block_size=` selects the blockwise
form that never materialises the `[N, N]` logits. The `*_sharded` variants run inside
`jax.shard_map` and pass text shards around a ring. `grad_cached_value_and_grad` computes a
training step's gradient one chunk of the batch at a time (GradCache). `mine_itm_negatives`
and `itm_loss` are BLIP's image-text matching with negatives mined from ITC similarities.
`caption_loss` is the masked next-token cross-entropy of teacher-forced text decoders;
`coordinate_tokens.token_nll` gives its coordinate-bin targets Gaussian widths.
"""
from mmjax.losses.captioning import caption_loss
from mmjax.losses.contrastive import clip_loss
from mmjax.losses.grad_cache import grad_cached_value_and_grad
from mmjax.losses.itm import itm_loss, mine_itm_negatives, positive_mask_from_ids
from mmjax.losses.sharded import clip_loss_sharded, siglip_loss_sharded
from mmjax.losses.sigmoid import siglip_loss

__all__ = [
    "caption_loss", "clip_loss", "clip_loss_sharded", "grad_cached_value_and_grad", "itm_loss",
    "mine_itm_negatives", "positive_mask_from_ids", "siglip_loss", "siglip_loss_sharded",
]
