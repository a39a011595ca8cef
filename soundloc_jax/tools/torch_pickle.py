"""Read `torch.save` files as numpy, without torch and without running pickled code.

A torch file is a pickle whose tensors point at raw storages: in the zip
format (torch >= 1.6) `<root>/data.pkl` plus one `<root>/data/<key>` file of
raw little-endian bytes per storage; in the legacy format (torch < 1.6, e.g.
the LVS release, trained with torch 1.3) a run of pickles (magic number,
protocol version, system info, the object, the list of storage keys) followed
by each storage as an int64 element count and its raw bytes. `load` rebuilds
every tensor (`torch._utils._rebuild_tensor_v2`: storage, offset, shape,
strides) as a numpy array and returns the object with arrays in place of
tensors. The unpickler only resolves an allow-list of globals (OrderedDict,
the tensor/parameter rebuild functions, the typed storage classes); any other
global, which could run arbitrary code when called, is refused with a
`TorchFileError` naming it. The very old tar format is not supported.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import tarfile
import zipfile

import ml_dtypes
import numpy as np

from soundloc_jax.errors import UserError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class TorchFileError(UserError, ValueError):
  """The file is not a readable torch file, or holds something we refuse to load."""


class _StorageType:
  """Stands in for `torch.FloatStorage` & co: only its element dtype matters."""

  def __init__(self, name: str):
    self.name, self.dtype = name, np.dtype(STORAGE_DTYPES[name])


class _Storage:
  """A storage named in the pickle; its bytes are attached once they are read."""

  def __init__(self, key: str, dtype: np.dtype, numel: int):
    self.key, self.dtype, self.numel = key, dtype, numel
    self.data: np.ndarray | None = None


class _TensorRef:
  """A tensor as the pickle describes it; made an array after all storages are read."""

  def __init__(self, storage, offset, shape, stride):
    self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
  del requires_grad, backward_hooks, state
  return data


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
  """Resolves only `_SAFE_GLOBALS`; storages come back as `_Storage` placeholders."""

  def __init__(self, file, path: str, storages: dict | None):
    super().__init__(file)
    self.path, self.storages = path, storages

  def find_class(self, module, name):
    try:
      return _SAFE_GLOBALS[(module, name)]
    except KeyError:
      raise TorchFileError(
          f"{self.path}: refusing the pickled global {module}.{name} (only tensors, "
          "storages and OrderedDict are loaded: other globals could run arbitrary code)"
      ) from None

  def persistent_load(self, pid):
    if self.storages is None or not isinstance(pid, tuple) or not pid or pid[0] != "storage":
      raise TorchFileError(f"{self.path}: unsupported persistent object {str(pid)[:60]!r} "
                           "(only tensor storages are loaded)")
    storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
    if not isinstance(storage_type, _StorageType):
      raise TorchFileError(f"{self.path}: storage {key} has no storage type")
    if len(pid) > 5 and pid[5] is not None:
      raise TorchFileError(f"{self.path}: storage views (torch < 0.4 files) are not supported")
    if key not in self.storages:
      self.storages[key] = _Storage(key, storage_type.dtype, numel)
    return self.storages[key]


def _tensor(ref: _TensorRef, path: str) -> np.ndarray:
  storage = ref.storage
  if storage.data is None:
    raise TorchFileError(f"{path}: storage {storage.key} has no data in the file")
  shape, stride = ref.shape, ref.stride
  if len(shape) != len(stride) or min(shape + stride + (ref.offset,), default=0) < 0:
    raise TorchFileError(f"{path}: malformed tensor (shape {shape}, stride {stride})")
  if 0 in shape:
    return np.zeros(shape, storage.dtype)
  last = ref.offset + sum((n - 1) * s for n, s in zip(shape, stride))
  if last >= storage.data.size:
    raise TorchFileError(f"{path}: a tensor of shape {shape} reads past the end of "
                         f"storage {storage.key} ({storage.data.size} elements)")
  item = storage.data.itemsize
  view = np.lib.stride_tricks.as_strided(storage.data[ref.offset:], shape=shape,
                                         strides=tuple(s * item for s in stride),
                                         writeable=False)
  return np.array(view)


def _resolve(obj, path: str):
  """The unpickled object with every `_TensorRef` replaced by its array."""
  if isinstance(obj, _TensorRef):
    return _tensor(obj, path)
  if isinstance(obj, dict):
    out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
    for k, v in obj.items():
      out[k] = _resolve(v, path)
    return out
  if isinstance(obj, (list, tuple)):
    return type(obj)(_resolve(v, path) for v in obj)
  if isinstance(obj, (_Storage, _StorageType)):
    raise TorchFileError(f"{path}: holds a bare storage, not a tensor")
  return obj


def _from_bytes(raw: bytes, storage: _Storage, path: str, big_endian: bool) -> np.ndarray:
  expected = storage.numel * storage.dtype.itemsize
  if len(raw) < expected:
    raise TorchFileError(f"{path}: storage {storage.key} is truncated "
                         f"({len(raw)} of {expected} bytes)")
  dtype = storage.dtype.newbyteorder(">") if big_endian and storage.dtype.itemsize > 1 \
      else storage.dtype
  return np.frombuffer(raw[:expected], dtype=dtype).astype(storage.dtype)


def _load_zip(path: str):
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise TorchFileError(f"{path}: a zip file without a torch data.pkl (not a torch.save file)")
    root = pickles[0][:-len("data.pkl")]
    big_endian = (f"{root}byteorder" in names
                  and zf.read(f"{root}byteorder").strip() == b"big")
    storages: dict[str, _Storage] = {}
    obj = _Unpickler(io.BytesIO(zf.read(pickles[0])), path, storages).load()
    for key, storage in storages.items():
      member = f"{root}data/{key}"
      if member not in names:
        raise TorchFileError(f"{path}: storage {key} is missing ({member})")
      storage.data = _from_bytes(zf.read(member), storage, path, big_endian)
  return _resolve(obj, path)


def _load_legacy(path: str):
  with open(path, "rb") as f:
    header = _Unpickler(f, path, None)
    if header.load() != LEGACY_MAGIC:
      raise TorchFileError(f"{path}: a pickle, but not one written by torch.save")
    if header.load() != LEGACY_PROTOCOL:
      raise TorchFileError(f"{path}: unsupported legacy torch protocol version")
    sys_info = header.load()
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
      raise TorchFileError(f"{path}: written on a big-endian machine (unsupported)")
    storages: dict[str, _Storage] = {}
    obj = _Unpickler(f, path, storages).load()
    keys = _Unpickler(f, path, None).load()
    for key in keys:
      storage = storages.get(str(key))
      if storage is None:
        raise TorchFileError(f"{path}: storage {key} is stored but never used")
      (numel,) = struct.unpack("<q", f.read(8).ljust(8, b"\0"))
      if numel != storage.numel:
        raise TorchFileError(f"{path}: storage {key} holds {numel} elements, "
                             f"expected {storage.numel}")
      storage.data = _from_bytes(f.read(numel * storage.dtype.itemsize), storage, path, False)
  return _resolve(obj, path)


def load(path: str):
  """The object `torch.save` wrote to `path`, with numpy arrays for tensors."""
  path = str(path)
  try:
    with open(path, "rb") as f:
      head = f.read(2)
  except FileNotFoundError:
    raise TorchFileError(f"{path}: no such file") from None
  except OSError as e:
    raise TorchFileError(f"{path}: cannot read ({e.strerror or e})") from None
  try:
    if zipfile.is_zipfile(path):
      return _load_zip(path)
    if head[:1] == b"\x80":  # pickle protocol >= 2 opcode
      return _load_legacy(path)
    if tarfile.is_tarfile(path):
      raise TorchFileError(f"{path}: the tar format of torch < 0.4 is not supported; "
                           "re-save it with a newer torch (torch.save(torch.load(f), g))")
  except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, struct.error,
          AttributeError, IndexError, TypeError, ValueError) as e:
    if isinstance(e, TorchFileError):
      raise
    raise TorchFileError(f"{path}: not a readable torch file ({type(e).__name__}: "
                         f"{str(e)[:80]})") from None
  raise TorchFileError(f"{path}: not a torch file (neither the zip nor the legacy pickle "
                       "format of torch.save)")
