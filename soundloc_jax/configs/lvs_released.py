"""The released LVS models, converted by `python -m soundloc_jax.tools.import_lvs`.

`--config=configs/lvs_released.py[:TEST_SET]`, TEST_SET = `vggss` (default,
for `lvs_vggss.tar`) or `flickr` (for `lvs_soundnet.pth.tar`). For
`--mode=eval` (and `soundloc_jax.load`) of an imported workdir, not training.

The LVS model differs from our default model in the audio stream only
(facts of its public model code): layer4 keeps stride 1 in both streams and
the audio map is max-pooled (`model.audio_layer4_stride=1`,
`model.audio_pool="max"`). Inputs and scoring follow its public test code:
224x224 test view with ImageNet mean/std, the LVS test front end on the first
10 s (`audio.LVS_TEST`, 257x671; `eval.audio="lvs_test"` recomputes it
from the test splits' stored waveform), the median protocol at 224.
`dataset.name` must name the user's built test set (`--config.dataset.name`).
"""

import ml_collections

from soundloc_jax import audio
from soundloc_jax.configs import default, lvs

TEST_SETS = {"vggss": "vggss", "flickr": "flickr_soundnet"}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  test_set = (arg or "vggss").strip()
  if test_set not in TEST_SETS:
    raise ValueError(f"configs/lvs_released.py: unknown test set {test_set!r}; available: "
                     f"{', '.join(TEST_SETS)}")
  c = lvs.get_config()
  c.model.width = 64
  c.model.layer4_stride = 1
  c.model.audio_layer4_stride = 1
  c.model.audio_pool = "max"
  c.dataset.name = TEST_SETS[test_set]
  c.dataset.test_splits = ("test",)
  c.dataset.build_if_missing = False
  c.dataset.image_size = 224
  c.audio = default.audio_config(audio.LVS_TEST)
  c.eval.protocol = "median"
  c.eval.size = 224
  c.eval.success_threshold = 0.5
  c.eval.audio = "lvs_test"
  return c
