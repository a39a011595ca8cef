"""The training methods, one module each, and their registry.

  icl.py        ICL (iterative contrastive learning, Eq. 1-7) and its Eq. 3
                alone ("contrastive"): the losses and their registry entries
  lvs.py        the LVS baseline ("lvs", "lvs_vanilla")
  hardpos.py    HardPos's loss (Eq. 5-6, "hardpos"), with
  mining.py     its exact top-K neighbour mining (the `mine` command's core) and
  neighbours.py the neighbour sets the input pipeline samples from
  ezvsl.py      the EZ-VSL baseline ("ezvsl")
  icl_hardpos.py  ICL's pseudo-labels with HardPos's mined positives ("icl_hardpos")
  registry.py   `Method`, `register`, `get`, `names` (the entry contract)

Each method module holds its pure, batched loss, its registry entry and its
config check; the defaults of its `config.method` fields are declared once in
`configs/default.py`. Importing this package registers every method. These
modules never import the trainer, the workdir or inference.
"""

from soundloc_jax.methods import ezvsl, hardpos, icl, icl_hardpos, lvs  # noqa: F401  (registers)
from soundloc_jax.methods.registry import (  # noqa: F401
    Method, TeacherSchedule, get, names, register)
