"""Process-level set-up: multi-host start-up, which process writes, global
batches from per-process data, and the persistent compilation cache.

One code path for every topology: `train_and_evaluate` builds a 1-D 'data'
mesh over `jax.devices()` (all devices of all processes), replicates the state
and shards the batch. With several processes each one reads only its slice
of every global batch (`input_pipeline.train_iterator(process_index,
process_count)`), and `global_batch` assembles the slices into global
`jax.Array`s without any host-to-host copy. With one process both are no-ops
in effect (`global_batch` equals `jax.device_put(batch, sharding)`).

Start-up, e.g. two processes on one machine (CPU collectives use gloo):

  initialize_from_env_or_flags("localhost:12345", num_processes=2, process_id=i)

or with the arguments left empty, from the environment:
`SOUNDLOC_COORDINATOR_ADDRESS`, `SOUNDLOC_NUM_PROCESSES`, `SOUNDLOC_PROCESS_ID`
(or a cluster JAX detects by itself: SLURM, Open MPI, Cloud TPU, ...; set
`SOUNDLOC_DISTRIBUTED=auto` to ask for that).

Process 0 writes the run's files (`is_primary`); the others compute the same
values and write nothing (orbax coordinates the checkpoint writes itself).
"""

from __future__ import annotations

import collections
import os

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from soundloc_jax import input_pipeline
from soundloc_jax.errors import ConfigError

_ENV_ADDRESS = "SOUNDLOC_COORDINATOR_ADDRESS"
_ENV_NUM = "SOUNDLOC_NUM_PROCESSES"
_ENV_ID = "SOUNDLOC_PROCESS_ID"
_ENV_AUTO = "SOUNDLOC_DISTRIBUTED"
_ENV_CACHE = "SOUNDLOC_XLA_CACHE"


def enable_compilation_cache(path: str | None = None) -> None:
  """Persistent XLA cache (`path`, else $SOUNDLOC_XLA_CACHE, else
  ~/.cache/soundloc_jax/xla), so reruns and tests do not recompile a step."""
  path = path or os.environ.get(_ENV_CACHE, os.path.expanduser("~/.cache/soundloc_jax/xla"))
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def is_primary() -> bool:
  """Whether this process writes the run's files (records, metrics, reports,
  plots): process 0."""
  return jax.process_index() == 0


def initialize_from_env_or_flags(coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
  """`jax.distributed.initialize` when more than one process is asked for.

  Arguments left as None/empty fall back to the SOUNDLOC_* environment
  variables. Returns True when the distributed runtime was initialised,
  False for a single-process run (nothing is done then). Must run before
  any other JAX call that touches devices.
  """
  coordinator_address = coordinator_address or os.environ.get(_ENV_ADDRESS) or None
  if num_processes is None and os.environ.get(_ENV_NUM):
    num_processes = int(os.environ[_ENV_NUM])
  if process_id is None and os.environ.get(_ENV_ID):
    process_id = int(os.environ[_ENV_ID])

  if os.environ.get(_ENV_AUTO, "").lower() == "auto" and coordinator_address is None:
    jax.distributed.initialize()  # cluster auto-detection
    return True
  if num_processes is None or num_processes <= 1:
    return False
  if coordinator_address is None or process_id is None:
    raise ConfigError(
        f"{num_processes} processes need a coordinator address and a process id "
        f"(arguments or ${_ENV_ADDRESS} / ${_ENV_ID})")
  if not 0 <= process_id < num_processes:
    raise ConfigError(f"process_id {process_id} is not in [0, {num_processes})")
  # CPU cross-process collectives: gloo (explicit, in case the default changes).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  return True


def global_batch(local_batch: dict, mesh, spec=P("data"),
                 keys=input_pipeline.DEVICE_KEYS) -> dict:
  """Global `jax.Array`s of `keys` from this process's rows of the batch.

  `local_batch[k]` holds this process's `global_rows / process_count` rows
  (its contiguous slice, as `train_iterator` reads them); the result has the
  global leading dimension, sharded per `spec` over `mesh`. Host-only keys
  are dropped, and so are `keys` the batch lacks (a synthetic batch without
  `flip` / `ycbcr`: `input_pipeline.device_inputs` then applies none). With
  one process this is `jax.device_put` of the rows.
  """
  sharding = NamedSharding(mesh, spec)
  out = {}
  for k in (k for k in keys if k in local_batch):
    local = np.asarray(local_batch[k])
    global_shape = (local.shape[0] * jax.process_count(),) + local.shape[1:]
    out[k] = jax.make_array_from_process_local_data(sharding, local, global_shape)
  return out


def prefetch_to_device(batches, put, size: int = 2):
  """Yields `put(batch)` (`global_batch`: the transfer, asynchronous) for each
  of `batches`, keeping `size` of them put ahead: while the step runs on
  batch n, batches n+1 .. n+size-1 are already on their way to the device
  and the host builds the next (double-buffered with the default 2).
  Closing the generator closes `batches` (grain's worker processes)."""
  queue = collections.deque()
  try:
    for batch in batches:
      queue.append(put(batch))
      if len(queue) >= size:
        yield queue.popleft()
    while queue:
      yield queue.popleft()
  finally:
    if hasattr(batches, "close"):
      batches.close()
