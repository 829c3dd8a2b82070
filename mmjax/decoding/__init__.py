"""Jit-compiled decoding for every text- (or token-) producing model in mmjax.

Pure functions over a decoder step function; they depend on jax/numpy only. Everything is
traceable: wrap the call in `jax.jit` with the model parameters as arguments, e.g.

    @jax.jit
    def caption(params, cache, prompt, prompt_lengths):
      step_fn = functools.partial(decoder_step, params)   # closes over weights only
      return decoding.beam_search(step_fn, cache, prompt, prompt_lengths, num_beams=4,
                                  max_new_tokens=32, eos_id=EOS)

Loops are `lax.while_loop`s with static `max_new_tokens` that exit early once every row
(or every prompt's beam set) has finished. Shapes and options that change the program
(`max_new_tokens`, `num_beams`, `top_k`, `eos_id`, ...) are Python values; `length_penalty`
and `guidance_scale` may also be traced scalars.

The decoder interface
---------------------
    step_fn(tokens int32[B, T], cache, positions int32[B, T]) -> (logits float[B, T, V], cache)

* `positions[b, t]` is the absolute position of `tokens[b, t]`. The step writes that token's
  keys/values into cache slot `positions[b, t]` and lets it attend to slots `<= positions[b, t]`
  (a causal mask by position, per row). It returns the next-token logits of every input token.
* Decoding calls it once on the whole prompt (prefill, T = P, positions 0..P-1) and then once
  per new token (T = 1, positions `prompt_lengths + t - 1`, different per row).
* Prompts are right-padded `[B, P]` with `prompt_lengths[b] >= 1` valid tokens. Padding slots
  written during prefill lie after the row's prompt, so no query attends to them before the
  generated tokens overwrite them: the decoder needs no padding mask.
* The cache is any PyTree built for B rows by the model (e.g. `model.init_cache(B, max_len)`)
  with room for `P + max_new_tokens` positions. **Every leaf has the batch axis first**:
  beam search and `num_return_sequences` repeat each row k times once after prefill
  (`expand_rows`) and reorder beams by gathering rows (`gather_rows`); a cache node that is a
  `RowsOwner` (the attention's `SlotKVCache` and `ContextKVCache`) does both itself, so a beam
  reorder moves a slot table instead of K/V. Per-example conditioning
  (image embeddings, cross-attention keys/values, encoder states) must therefore live in the
  cache, so it is expanded exactly once with it (the LAVIS #142 bug expanded it twice); the
  step function closes over weights only. 0-d leaves (e.g. a shared write index) are shared by
  all rows and not expanded; a cache with a shared index supports equal-length prompts only.
* `recompute_step_fn(forward_fn)` builds a step function from a plain causal forward pass
  (no KV cache; recomputes every position each step).

What is here
------------
greedy, sample (temperature / top-k / top-p, `num_return_sequences`), beam_search (length
penalty, early stopping, `num_return_sequences`); for all three: repetition penalty,
`min_new_tokens`, `max_new_tokens`, constrained decoding to a candidate list through a
`PrefixTrie`; `guided_step_fn` for classifier-free guidance with separate conditional and
unconditional caches; `sequence_log_probs` to rank a closed candidate list by likelihood;
`from_left_padded` for batches padded on the left (Hugging Face's convention).
"""
from mmjax.decoding.beam_search import beam_search
from mmjax.decoding.constraints import PrefixTrie, build_prefix_trie
from mmjax.decoding.greedy import greedy
from mmjax.decoding.padding import from_left_padded
from mmjax.decoding.guidance import GuidanceCache, guidance_cache, guided_step_fn
from mmjax.decoding.processors import (apply_repetition_penalty, apply_temperature, top_k_filter,
                                       top_p_filter)
from mmjax.decoding.recompute import RecomputeCache, init_recompute_cache, recompute_step_fn
from mmjax.decoding.sampling import sample
from mmjax.decoding.scoring import sequence_log_probs
from mmjax.decoding.step import (DecodeOutput, StepFn, banned_tokens_step_fn, expand_rows,
                                 gather_rows, prefill)

__all__ = [
    "DecodeOutput", "GuidanceCache", "PrefixTrie", "RecomputeCache", "StepFn",
    "apply_repetition_penalty", "apply_temperature", "banned_tokens_step_fn", "beam_search",
    "build_prefix_trie",
    "expand_rows", "from_left_padded", "gather_rows", "greedy", "guidance_cache",
    "guided_step_fn", "init_recompute_cache", "prefill", "recompute_step_fn", "sample", "sequence_log_probs",
    "top_k_filter", "top_p_filter",
]
