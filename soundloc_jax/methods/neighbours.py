"""HardPos neighbour sets for the input pipeline: per training example, the
positions (in the training split) of its K audio and K visual neighbours, and
the per-batch negative mask of Eq. 4 (N_i: everything outside both sets).

Two kinds of table: `MinedNeighbours`, from the file `python -m
soundloc_jax.mine` writes (`methods.mining.save_neighbours`, ids in row order), and
`RandomNeighbours`, the "Random HP" ablation: each example's two sets are K
examples drawn uniformly without replacement from the others, generated on
demand from `(seed, modality, position)`, so they are fixed for the whole run
and need no file. A mined file is tied to the split by its ids: it must list
exactly the split's ids in the split's order (the mining command writes them
so), which `check_split` verifies on spread-out positions at start-up and the
pipeline verifies for every example it reads; a mismatch is a DatasetError
naming the file. Only the first K columns of a mined file are used (its rows
are sorted by similarity), so one file mined with a large K serves any smaller
K. `from_config` builds the table a HardPos config asks for.
"""

from __future__ import annotations

import abc
import functools
import os

import numpy as np
from absl import logging

from soundloc_jax.errors import ConfigError, DatasetError
from soundloc_jax.methods import mining

KINDS = ("mined", "random")
MINE_COMMAND = "python -m soundloc_jax.mine --workdir=BASELINE_WORKDIR"
CHECKED_POSITIONS = 64  # ids compared at start-up (every read example is checked too)


class NeighbourTable(abc.ABC):
  """Positions of each example's neighbours; subclasses define `audio` / `visual`."""

  num_examples: int
  num_neighbours: int
  source_path: str = ""

  @abc.abstractmethod
  def audio(self, index: int) -> np.ndarray:
    """Positions of the K audio neighbours of `index` (a mined table: most similar first)."""

  @abc.abstractmethod
  def visual(self, index: int) -> np.ndarray:
    """Positions of the K visual neighbours of `index` (a mined table: most similar first)."""

  def expected_id(self, index: int) -> bytes | None:
    """The id the split must hold at `index` (None: not tied to ids)."""
    return None

  @functools.lru_cache(maxsize=4096)
  def excluded(self, index: int) -> np.ndarray:
    """Sorted positions that are NOT negatives of `index`: both sets and itself."""
    return np.union1d(np.union1d(self.audio(index), self.visual(index)), [index])

  def negative_row(self, index: int, batch_indices: np.ndarray) -> np.ndarray:
    """bool `[G]`: which of the batch's base examples are negatives of `index`."""
    return ~np.isin(batch_indices, self.excluded(index), assume_unique=False)

  def check_id(self, index: int, example_id) -> None:
    expected = self.expected_id(index)
    if expected is None:
      return
    got = example_id if isinstance(example_id, bytes) else str(example_id).encode()
    if got != expected:
      raise DatasetError(
          f"neighbours file {self.source_path} does not match the training split: position "
          f"{index} holds id {got.decode(errors='replace')!r} but the file lists "
          f"{expected.decode(errors='replace')!r}; mine again on this split ({MINE_COMMAND})")


class MinedNeighbours(NeighbourTable):
  """The first `num_neighbours` columns of a `methods.mining.save_neighbours` file."""

  def __init__(self, result: dict, num_neighbours: int, source_path: str = ""):
    self.source_path = source_path
    self.ids = np.asarray(result["ids"])
    self.num_examples = len(self.ids)
    self.num_neighbours = int(num_neighbours)
    self._audio = np.asarray(result["audio_indices"])[:, :self.num_neighbours]
    self._visual = np.asarray(result["visual_indices"])[:, :self.num_neighbours]

  def audio(self, index):
    return self._audio[index]

  def visual(self, index):
    return self._visual[index]

  def expected_id(self, index):
    return str(self.ids[index]).encode()


class RandomNeighbours(NeighbourTable):
  """"Random HP": K uniform draws without replacement from the other examples."""

  def __init__(self, num_examples: int, num_neighbours: int, seed: int):
    self.num_examples = int(num_examples)
    self.num_neighbours = int(num_neighbours)
    self.seed = int(seed)

  @functools.lru_cache(maxsize=8192)
  def _draw(self, modality: int, index: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, 7, modality, index])
    picks = rng.choice(self.num_examples - 1, size=self.num_neighbours, replace=False)
    return picks + (picks >= index)  # skip the example itself

  def audio(self, index):
    return self._draw(0, int(index))

  def visual(self, index):
    return self._draw(1, int(index))


def load_mined(path: str, num_neighbours: int, warn=logging.warning) -> MinedNeighbours:
  """A mined table from `path`, with errors that name the file; `warn` says
  when the file holds fewer than `num_neighbours` columns."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    raise DatasetError(f"neighbours file {path} does not exist; create it with {MINE_COMMAND} "
                       "(it writes BASELINE_WORKDIR/neighbours.npz)")
  try:
    result = mining.load_neighbours(path)
  except Exception as e:  # not an npz, missing keys, wrong version or shapes
    raise DatasetError(f"neighbours file {path} is not a readable neighbours file "
                       f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                       f"create it with {MINE_COMMAND}") from e
  k = result["k"]
  if num_neighbours > k:
    warn(f"config.method.num_neighbours={num_neighbours} but {path} holds {k} neighbours "
         f"per example; using {k}")
    num_neighbours = k
  return MinedNeighbours(result, num_neighbours, source_path=path)


def check_split(table: NeighbourTable, source) -> None:
  """The table must describe this split: same size, same ids at spread-out positions."""
  if table.num_examples != len(source):
    where = f"neighbours file {table.source_path}" if table.source_path else "the neighbour table"
    raise DatasetError(f"{where} lists {table.num_examples} examples but the training split has "
                       f"{len(source)}; mine again on this split ({MINE_COMMAND})")
  if table.expected_id(0) is None:
    return
  for index in np.unique(np.linspace(0, len(source) - 1, CHECKED_POSITIONS).astype(int)):
    table.check_id(int(index), source[int(index)].get("id", b""))


def from_config(method_config, source, seed: int, warn=logging.warning) -> NeighbourTable:
  """The table `config.method` asks for (`neighbours`, `neighbours_path`,
  `num_neighbours`), checked against the training split `source`; `warn` says
  when K is more than the data allows."""
  kind = method_config.neighbours
  if kind not in KINDS:
    raise ConfigError(f"config.method.neighbours: unknown {kind!r}; available: {', '.join(KINDS)}")
  n = len(source)
  k = int(method_config.num_neighbours)
  if k < 1:
    raise ConfigError(f"config.method.num_neighbours must be >= 1, got {k}")
  if k > n - 1:
    warn(f"config.method.num_neighbours={k} but the training split has {n} examples; "
         f"using {n - 1}")
    k = n - 1
  if kind == "random":
    table = RandomNeighbours(n, k, seed)
  else:
    if not method_config.neighbours_path:
      raise ConfigError(
          "config.method.neighbours_path is empty: HardPos (neighbours=mined) needs mined "
          f"neighbours. Train the Vanilla-LVS baseline (--config=configs/lvs.py:,variant=vanilla "
          f"--workdir=BASELINE_WORKDIR), run {MINE_COMMAND}, then pass "
          "--config.method.neighbours_path=BASELINE_WORKDIR/neighbours.npz "
          "(or use configs/hard_positive.py:,neighbours=random for Random HP)")
    table = load_mined(method_config.neighbours_path, k, warn)
  check_split(table, source)
  return table
