"""One diagnostic run of "Which term stops HardPos"
(docs/notes/2026-11-28-hardpos-on-the-demo.md): HardPos with positives P_b and P_a
on the demo, where P_a's logit is stop-gradiented. It
still enters the log-sum-exp over the positives, so its only effect is to
take part of P_b's weight; no gradient flows through it.

  python scripts/hardpos_detached_pa.py WORKDIR NEIGHBOURS.npz [SEED] [EPOCHS]

Same settings as the table's other rows (masked negatives, `positives="ba"`,
seed 0 and 6 epochs by default), with `method.detached_positives="a"` (the
workdir's config.json records it).
"""
import sys

from soundloc_jax import train
from soundloc_jax.configs import hard_positive


def main(argv):
  if len(argv) < 2:
    raise SystemExit(__doc__)
  workdir, neighbours = argv[0], argv[1]
  config = hard_positive.get_config("")
  config.seed = int(argv[2]) if len(argv) > 2 else 0
  config.num_epochs = int(argv[3]) if len(argv) > 3 else 6
  config.method.negative_pooling = "masked"
  config.method.neighbours_path = neighbours
  config.method.positives = "ba"
  config.method.detached_positives = "a"
  train.train_and_evaluate(config, workdir)


if __name__ == "__main__":
  main(sys.argv[1:])
