"""EZ-VSL baseline loss (Mo and Morgado, "Localizing Visual Sounds the Easy
Way"): multiple-instance contrastive learning, one more baseline that falls
out of the LVS code (`methods.lvs.response_maps`) with max pooling in place of
soft masks; and its registry entry "ezvsl".

Inputs follow the model contract: `visual_features` [B, h, w, d] L2-normalised
per patch, `audio_embedding` [B, d] L2-normalised, so A[i, j] =
`response_maps(...)[i, j]` is the cosine map of image i with audio j.

Rules:
* The score of a pair is the best-matching patch: S[i, j] = max_uv A[i, j]
  (an image contains the source somewhere; the bag-of-patches is positive if
  one patch is). Its gradient reaches only the arg-max patch of each pair.
* Both retrieval directions, each an InfoNCE over the batch with the true
  pair as the positive and every other sample of the batch as a negative
  (no exclusion set): image i against all audios (row i of S / T) and audio
  j against all images (column j). The loss is the SUM of the two
  directions' batch means, as EZ-VSL's released training code computes it
  (not their average).
* `temperature` is a config value (configs/ezvsl.py, default 0.03, the
  default of EZ-VSL's released training code).
* Not here: EZ-VSL's object-guided localization (the inference-time mix of
  the audio-visual map with an ImageNet objectness prior) and its
  multi-modal feature dropout; our heatmap is the plain cosine map, as for
  every other method, so the table compares the training objectives.

`aux` holds scalar diagnostics: the mean positive score S[i, i] and the mean
off-diagonal score.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from soundloc_jax.methods.lvs import response_maps
from soundloc_jax.methods.registry import Method, register


def ezvsl_loss(visual_features, audio_embedding, *, temperature=0.03):
  """EZ-VSL's max-pooled, two-way InfoNCE (module docstring). `(loss, aux)`."""
  scores = jnp.max(response_maps(visual_features, audio_embedding), axis=(2, 3))  # [B, B]
  logits = scores / temperature
  diagonal = jnp.diagonal(logits)
  image_to_audio = jnp.mean(jax.nn.logsumexp(logits, axis=1) - diagonal)
  audio_to_image = jnp.mean(jax.nn.logsumexp(logits, axis=0) - diagonal)
  batch = scores.shape[0]
  off_diagonal = 1.0 - jnp.eye(batch, dtype=jnp.float32)
  aux = {
      "positive_response": jnp.mean(jnp.diagonal(scores)),
      "negative_response": jnp.sum(scores * off_diagonal) / jnp.maximum(jnp.sum(off_diagonal), 1.0),
  }
  return image_to_audio + audio_to_image, aux


# Registry entry (config.method field: temperature; configs/ezvsl.py).
def _method_loss(outputs, teacher_outputs, batch, cfg, rng):
  del teacher_outputs, batch, rng
  return ezvsl_loss(outputs["visual_features"], outputs["audio_embedding"],
                    temperature=cfg.temperature)


register(Method("ezvsl", _method_loss))
