#!/usr/bin/env bash
# Prepare the offline GPU machine (see shared/GPU.md): it ships a CUDA jax,
# flax, optax, orbax, numpy and torch for Python 3.12, but lacks TFDS, grain,
# librosa, ml-collections, array-record and some small dependencies, and has
# no network.
#
#   benchmarks/gpu_setup.sh download   # here, with network: wheels -> .gpu_wheels/
#   benchmarks/gpu_setup.sh install    # there, offline: install them, never touching jax
#   benchmarks/gpu_setup.sh list       # pip list of the packages that matter
#
# .gpu_wheels/ is git-ignored; carry it along to the GPU machine (device tool:
# carry [".gpu_wheels"]). Environment: PYTHON (default python3 there, the
# project venv's python here), WHEELS (default .gpu_wheels).
set -euo pipefail

cd "$(dirname "$0")/.."
WHEELS="${WHEELS:-.gpu_wheels}"
# What the GPU machine lacks (top level); their dependencies come along.
MISSING=(tensorflow-datasets grain librosa ml-collections array-record
         importlib_resources scikit-learn matplotlib portpicker)
# Already on the GPU machine: never downloaded, never reinstalled.
KEEP='^(jax|jaxlib|jax[-_]cuda[0-9]+[-_].*|nvidia[-_].*|flax|optax|orbax[-_]checkpoint|numpy|torch|torchvision|triton|ml[-_]dtypes|opt[-_]einsum|scipy)-'
# Seen installed on the GPU image ('cuda', read 2026-11-17, device KINDS.md),
# normalised names; wheels of these are deleted after the download.
THERE=(absl-py attrs certifi charset-normalizer click cloudpickle contourpy cycler einops
       etils filelock fonttools fsspec idna joblib kiwisolver lazy-loader llvmlite matplotlib
       msgpack narwhals numba numpy packaging pillow protobuf psutil pyarrow pyparsing
       python-dateutil pyyaml requests scikit-learn scipy six threadpoolctl tqdm
       typing-extensions urllib3 wrapt zipp)
# Pinned to this machine's (tested) versions when downloading.
TESTED_PINS='^(tensorflow-datasets|grain|librosa|ml[-_]collections|array[-_]record|importlib[-_]resources|promise|dm-tree|immutabledict|simple[-_]parsing|tensorflow-metadata|soundfile|soxr|pooch|audioread|portpicker)=='
KEY_PACKAGES='^(jax|jaxlib|jax-cuda[0-9]+-(plugin|pjrt)|flax|optax|orbax-checkpoint|numpy|scipy|torch|torchvision|grain|tensorflow-datasets|array-record|librosa|ml-collections|scikit-learn|soundloc[-_]jax)[[:space:]]'

cmd="${1:-}"
case "$cmd" in
  download)
    PY="${PYTHON:-/work/venv/bin/python}"
    mkdir -p "$WHEELS"
    # promise (a TFDS dependency) is sdist-only: build its pure-Python wheel
    # first, so the cross-platform download below can resolve it from here.
    "$PY" -m pip wheel --no-deps "promise==2.3" -w "$WHEELS"
    "$PY" -m pip download --find-links "$WHEELS" --only-binary=:all: --python-version 3.12 \
      --implementation cp --abi cp312 \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
      --platform any \
      -c <("$PY" -m pip list --format=freeze 2>/dev/null | grep -iE "$TESTED_PINS") \
      -d "$WHEELS" "${MISSING[@]}"
    # Drop what the GPU machine already has (its CUDA jax must stay as it is):
    # the KEEP pattern, the THERE list, and, if given, PRESENT=FILE holding
    # that machine's `python3 -m pip list --format=freeze`.
    present=" ${THERE[*]} "
    if [[ -n "${PRESENT:-}" ]]; then
      present+=" $(sed -E 's/[=@ ].*//' "$PRESENT" | tr 'A-Z_.' 'a-z--' | tr '\n' ' ') "
    fi
    for f in "$WHEELS"/*.whl; do
      name="$(basename "$f" | cut -d- -f1 | tr 'A-Z_.' 'a-z--')"
      if [[ "$(basename "$f")" =~ $KEEP || "$present" == *" $name "* ]]; then rm -f "$f"; fi
    done
    echo "$(ls "$WHEELS"/*.whl | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1) in $WHEELS"
    ;;
  install)
    PY="${PYTHON:-python3}"
    [[ -d "$WHEELS" ]] || { echo "no $WHEELS here: run '$0 download' on a networked machine and carry it" >&2; exit 1; }
    before="$("$PY" -m pip list --format=freeze 2>/dev/null | grep -iE '^(jax|jaxlib|jax-cuda.*)==' || true)"
    # Offline; the dependency resolver may only pick from .gpu_wheels plus what
    # is installed, so jax/numpy/torch are reused, never replaced. A
    # constraints file pins every installed package to its current version.
    constraints="$(mktemp)"
    "$PY" -m pip list --format=freeze 2>/dev/null | grep '==' > "$constraints" || true
    "$PY" -m pip install --no-index --find-links "$WHEELS" -c "$constraints" "${MISSING[@]}"
    # The project itself: no dependencies (they are all present now), no build
    # isolation (no network for setuptools).
    "$PY" -m pip install --no-deps --no-build-isolation --no-index -e . \
      || echo "editable install failed; use PYTHONPATH=$(pwd) instead" >&2
    after="$("$PY" -m pip list --format=freeze 2>/dev/null | grep -iE '^(jax|jaxlib|jax-cuda.*)==' || true)"
    if [[ "$before" != "$after" ]]; then
      echo "WARNING: jax packages changed:" >&2; diff <(echo "$before") <(echo "$after") >&2 || true
    fi
    rm -f "$constraints"
    "$PY" -m pip list 2>/dev/null | grep -iE "$KEY_PACKAGES" || true
    "$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
    ;;
  list)
    PY="${PYTHON:-python3}"
    "$PY" -m pip list 2>/dev/null | grep -iE "$KEY_PACKAGES" || true
    ;;
  *)
    echo "usage: $0 download|install|list" >&2; exit 2 ;;
esac
