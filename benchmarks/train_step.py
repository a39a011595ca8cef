"""Throughput of the jitted train step on synthetic inputs of the real shapes.

  python benchmarks/train_step.py --config=configs/iterative.py --teacher=on \
      --batch=128 --dtype=bfloat16            # GPU, paper shapes (224, 257x300, width 64)
  python benchmarks/train_step.py --batch 8 --image_size 64 --spec 64x63 \
      --width 16 --dtype float32              # CPU smoke size
  python benchmarks/train_step.py --config=configs/hard_positive.py ...   # neighbour batches
  python benchmarks/train_step.py ... --devices 8   # 8 simulated CPU devices (re-execs)
  python benchmarks/train_step.py ... --torch [--torch_compile]  # + a PyTorch peer, side by side
  python benchmarks/train_step.py ... --profile /tmp/trace   # jax.profiler trace

Prints ONE JSON line. The step is `train.make_train_step` exactly as
`train_and_evaluate` runs it: a 'data' mesh over all devices, state
replicated and donated, batch sharded, the full step (student forward and
backward, the frozen teacher's forward when --teacher=on, Adam update).

Fields: samples_per_s and ms_per_step (median over --steps timed steps after
--warmup steps, each synchronised with block_until_ready), compile_s
(lower + compile), peak_memory_bytes (device 0's memory_stats()
peak_bytes_in_use; null where the backend has none, e.g. CPU),
flops_per_step (XLA cost_analysis of the compiled step: the per-device
program, which is the whole step on one device; flops_per_step_all_devices
multiplies by the device count), mfu = flops_per_step /
(step time * per-device peak) with the peak named in peak_name (null on CPU
and unknown devices), argument/output/temp_bytes (XLA memory_analysis of the
compiled step). The batch follows the training contract (uint8 YCbCr crops,
their flips, float16 spectrograms; `input_pipeline`), so the step includes
the device half of the augmentation. `--compile_only` prints the compiled step's
FLOPs and memory without running it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Dense per-device peaks, FLOP/s: (device_kind substring, dtype) -> (peak, name).
# float32 matmuls run as TF32 on these GPUs under JAX's default precision.
PEAKS = [
    ("H200", "bfloat16", 989e12, "H200 dense bf16 989 TFLOP/s (same compute as H100 SXM)"),
    ("H200", "float32", 494.5e12, "H200 dense TF32 494.5 TFLOP/s"),
    ("H100 PCIe", "bfloat16", 756e12, "H100 PCIe dense bf16 756 TFLOP/s"),
    ("H100 PCIe", "float32", 378e12, "H100 PCIe dense TF32 378 TFLOP/s"),
    ("H100", "bfloat16", 989e12, "H100 SXM dense bf16 989 TFLOP/s"),
    ("H100", "float32", 494.5e12, "H100 SXM dense TF32 494.5 TFLOP/s"),
    ("A100", "bfloat16", 312e12, "A100 dense bf16 312 TFLOP/s"),
    ("A100", "float32", 156e12, "A100 dense TF32 156 TFLOP/s"),
]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="configs/iterative.py",
                 help="config file[:arg] (method, optimizer and model defaults)")
  p.add_argument("--teacher", choices=("on", "off"), default="on",
                 help="on: the frozen teacher's forward runs in the step (ICL Eq. 7); "
                      "off: initialisation epochs (Eq. 3)")
  p.add_argument("--batch", type=int, default=128, help="global batch")
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--spec", default="257x300", help="spectrogram FxT")
  p.add_argument("--width", type=int, default=64, help="ResNet-18 base width")
  p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                 help="model compute dtype (params stay float32)")
  p.add_argument("--steps", type=int, default=20, help="timed steps")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
  p.add_argument("--compile_only", action="store_true",
                 help="compile the step and print its FLOPs and memory, without running it")
  p.add_argument("--profile", default="", help="write a jax.profiler trace of 3 steps here")
  p.add_argument("--devices", type=int, default=0,
                 help="CPU only: simulate N devices (re-execs with XLA_FLAGS)")
  p.add_argument("--torch", action="store_true",
                 help="also time a PyTorch peer (ResNet-18 x2, the config's loss family)")
  p.add_argument("--torch_compile", action="store_true",
                 help="with --torch: torch.compile the peer's forward + loss")
  p.add_argument("--visual_backbone", choices=("resnet18", "efficientnet_lite0"),
                 default="resnet18", help="config.model.visual_backbone")
  p.add_argument("--cpu_ops", choices=("auto", "plain", "cpu"), default="auto",
                 help="config.model.cpu_ops (the ResNet-18s' max-pool, BatchNorm and "
                      "tiny-output convolutions)")
  p.add_argument("--depthwise_impl", choices=("auto", "shift", "grouped"), default="auto",
                 help="config.model.depthwise_impl (efficientnet_lite0)")
  p.add_argument("--visual_trunk", choices=("finetune", "frozen"), default="finetune",
                 help="config.model.visual_trunk (efficientnet_lite0)")
  return p.parse_args(argv)


def maybe_reexec(args):
  """`--devices N`: restart with N simulated host devices (fixed at JAX start-up)."""
  flag = f"--xla_force_host_platform_device_count={args.devices}"
  if args.devices and flag not in os.environ.get("XLA_FLAGS", ""):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flag).strip())
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], env)


def load_config(spec: str):
  path, _, arg = spec.partition(":")
  if not os.path.isabs(path):
    path = os.path.join(REPO, path)
  module_spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg)


def peak_flops(device_kind: str, platform: str, dtype: str):
  if platform == "gpu" or "NVIDIA" in device_kind:
    for key, dt, peak, name in PEAKS:
      if key in device_kind and dt == dtype:
        return peak, name
  return None, None


def flops_of(compiled):
  try:
    cost = compiled.cost_analysis()
  except Exception:  # some backends do not implement it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost:
    return None
  flops = cost.get("flops")
  return float(flops) if flops is not None and flops >= 0 else None


def memory_of(compiled) -> dict:
  """The compiled step's buffer sizes (XLA memory_analysis), bytes."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # some backends do not implement it
    m = None
  if m is None:
    return {}
  return {"argument_bytes": m.argument_size_in_bytes, "output_bytes": m.output_size_in_bytes,
          "temp_bytes": m.temp_size_in_bytes, "generated_code_bytes":
          m.generated_code_size_in_bytes}


def time_steps(run_step, n):
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    run_step()
    times.append(time.perf_counter() - t0)
  return times


def bench_jax(args, config):
  import jax
  import numpy as np
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from soundloc_jax import methods, train
  from soundloc_jax import state as state_lib

  f, t = (int(x) for x in args.spec.lower().split("x"))
  n_dev = jax.device_count()
  if args.batch % n_dev:
    raise SystemExit(f"--batch {args.batch} is not divisible by {n_dev} devices")
  mesh = jax.make_mesh((n_dev,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  optimizer = state_lib.make_optimizer(config)
  graphdef, state = state_lib.create_train_state(config, optimizer)
  state = jax.device_put(state, NamedSharding(mesh, P()))
  method = methods.get(config.method.name)
  rng = np.random.default_rng(0)
  # HardPos batches (`input_pipeline.train_iterator(neighbours=...)`): each base
  # row brings its visual neighbour's image and audio neighbour's spectrogram
  # ([B, 2, ...]) and a row of the negative mask; samples/s counts base rows.
  # The training batch contract: uint8 crops as decoded from JFIF frames
  # (YCbCr), their flips, float16 spectrograms as stored; the colour
  # conversion, the flip and the float32 cast run in the step.
  slots = (2,) if method.needs_neighbours else ()
  batch = {"image": rng.integers(0, 256, (args.batch, *slots, args.image_size, args.image_size,
                                          3), dtype=np.uint8),
           "ycbcr": np.ones((args.batch, *slots), bool),
           "flip": rng.random((args.batch, *slots)) < 0.5,
           "spectrogram": rng.normal(size=(args.batch, *slots, f, t)).astype(np.float16)}
  if method.needs_neighbours:  # ~85% of the other rows are negatives, as on the demo
    mask = rng.random((args.batch, args.batch)) < 0.85
    np.fill_diagonal(mask, False)
    batch["negative_mask"] = mask
  batch = jax.device_put(batch, NamedSharding(mesh, P("data")))
  step = train.make_train_step(graphdef, method, config.method, optimizer,
                               args.teacher == "on" and method.needs_teacher, mesh)

  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  flops = flops_of(compiled)
  memory = memory_of(compiled)
  if args.compile_only:
    return {"framework": "jax", "platform": jax.local_devices()[0].platform,
            "method": config.method.name, "batch": args.batch, "image_size": args.image_size,
            "spec": [f, t], "width": args.width, "dtype": args.dtype, "compile_s": compile_s,
            "flops_per_step": flops, "input_bytes": sum(x.nbytes for x in batch.values()),
            **memory}

  holder = {"state": state}

  def run_step():
    holder["state"], metrics = compiled(holder["state"], batch)
    jax.block_until_ready((holder["state"], metrics))
    return metrics

  for _ in range(args.warmup):
    run_step()
  times = time_steps(run_step, args.steps)
  loss = float(jax.device_get(run_step()["loss"]))
  if args.profile:
    with jax.profiler.trace(args.profile):
      for _ in range(3):
        run_step()

  step_s = statistics.median(times)
  device = jax.local_devices()[0]
  try:
    stats = device.memory_stats() or {}
  except Exception:
    stats = {}
  peak, peak_name = peak_flops(device.device_kind, device.platform, args.dtype)
  return {
      "framework": "jax", "jax": jax.__version__, "device": device.device_kind,
      "platform": device.platform, "devices": n_dev,
      "method": config.method.name,
      "teacher": args.teacher if method.needs_teacher else "n/a",
      "inputs_per_sample": 2 if method.needs_neighbours else 1, "batch": args.batch,
      "image_size": args.image_size, "spec": [f, t], "width": args.width, "dtype": args.dtype,
      "visual_backbone": config.model.visual_backbone,
      "depthwise_impl": config.model.depthwise_impl, "cpu_ops": config.model.cpu_ops,
      "visual_trunk": config.model.visual_trunk,
      "samples_per_s": args.batch / step_s, "ms_per_step": 1e3 * step_s,
      "ms_per_sample": 1e3 * step_s / args.batch,
      "ms_per_step_min": 1e3 * min(times), "timed_steps": len(times),
      "compile_s": compile_s,
      "peak_memory_bytes": stats.get("peak_bytes_in_use"),
      "flops_per_step": flops, **memory,
      "flops_per_step_all_devices": flops * n_dev if flops else None,
      "mfu": flops / step_s / peak if (flops and peak) else None,
      "peak_flops": peak, "peak_name": peak_name, "final_loss": loss,
      "profile": args.profile or None,
  }


def _torch_loss(torch, method_config):
  """`(v [B,d,h,w], a [B,d]) -> loss` of the config's family in torch, the
  same function as ours (`tests/benchmarks_test.py` compares them where torch
  is installed): `methods.lvs.lvs_loss` for "lvs"/"lvs_vanilla",
  `methods.ezvsl.ezvsl_loss` for "ezvsl", ICL's Eq. 3 (pooled InfoNCE,
  `losses`) for everything else."""
  F = torch.nn.functional
  name = method_config.name
  if name == "ezvsl":
    def ezvsl(v, a):
      logits = torch.einsum("ndhw,kd->nkhw", v, a).amax(dim=(2, 3)) / method_config.temperature
      labels = torch.arange(v.shape[0], device=v.device)
      return F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)
    return ezvsl, "EZ-VSL"
  if name not in ("lvs", "lvs_vanilla"):
    def eq3(v, a):
      logits = v.mean(dim=(2, 3)) @ a.T / method_config.get("tau", 0.07)
      return F.cross_entropy(logits, torch.arange(v.shape[0], device=v.device))
    return eq3, "Eq. 3"
  eps, eps2 = method_config.epsilon, method_config.epsilon2
  tau, temp = method_config.mask_tau, method_config.temperature
  full = name == "lvs"
  masked_negatives = method_config.get("negative_pooling", "mean") == "masked"

  def masked(maps, weights):
    return (weights * maps).sum((-2, -1)) / weights.sum((-2, -1))

  def lvs(v, a):
    pairs = torch.einsum("ndhw,kd->nkhw", v, a)       # [image, audio, h, w]
    own = torch.diagonal(pairs).permute(2, 0, 1)      # [B, h, w]
    positive = masked(own, torch.sigmoid((own - eps) / tau))
    between = (masked(pairs, torch.sigmoid((pairs - eps) / tau)) if masked_negatives
               else pairs.mean((2, 3)))
    eye = torch.eye(v.shape[0], dtype=torch.bool, device=v.device)
    logits = [positive[:, None]]
    if full:  # tri-map hard negative: the background of the own map
      logits.append(masked(own, torch.sigmoid(-(own - eps2) / tau))[:, None])
    logits = torch.cat(logits + [between.masked_fill(eye, float("-inf"))], 1) / temp
    return F.cross_entropy(logits, torch.zeros(v.shape[0], dtype=torch.long, device=v.device))
  return lvs, "LVS tri-map + hard negative" if full else "Vanilla-LVS"


def bench_torch(args, config):
  """PyTorch peer of the same model and loss family: two ResNet-18 trunks
  (`soundloc_jax.tools.torch_resnet18`: visual layer4 stride 1, audio
  1-channel stem and layer4 stride 2),
  L2-normalised features, the config's loss (`_torch_loss`), Adam; bf16 via
  autocast on CUDA, channels_last; `--torch_compile` compiles the forward +
  loss with torch.compile (the fast PyTorch recipe of shared/GPU.md)."""
  try:
    import torch
    import torch.nn.functional as F
  except ImportError as e:
    print(f"--torch: skipped, PyTorch not importable ({e})", file=sys.stderr)
    return {"skipped": f"torch not importable: {e}"}
  if config.method.name == "hardpos":
    return {"skipped": "no PyTorch peer of HardPos's neighbour batches"}

  dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  f, t = (int(x) for x in args.spec.lower().split("x"))
  torch.manual_seed(0)
  loss_of, loss_name = _torch_loss(torch, config.method)

  from soundloc_jax.tools.torch_resnet18 import ResNet18

  if args.visual_backbone == "efficientnet_lite0":
    try:  # the reference model (efficientnet_pytorch layout), truncated as ours
      from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
      print(f"--torch: skipped, the reference EfficientNet is not importable ({e}; pip "
            "install --no-deps efficientnet-lite-pytorch)", file=sys.stderr)
      return {"skipped": f"efficientnet_lite_pytorch not importable: {e}"}

  def visual_stream():
    if args.visual_backbone == "resnet18":
      return ResNet18(args.width, layer4_stride=1)
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)

    class Visual(torch.nn.Module):  # stem + blocks 0..10 (stride 16) + 1x1 projection
      def __init__(self):
        super().__init__()
        self.stem, self.bn0, self.act = net._conv_stem, net._bn0, net._swish
        self.blocks = torch.nn.ModuleList(list(net._blocks)[:11])
        self.proj = torch.nn.Conv2d(112, 8 * args.width, 1)

      def forward(self, x):
        x = self.act(self.bn0(self.stem(x)))
        for block in self.blocks:
          x = block(x)
        return self.proj(x)
    return Visual()

  class AV(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.visual = visual_stream()
      self.audio = ResNet18(args.width, layer4_stride=2, in_channels=1)

    def forward(self, image, spec):
      v = F.normalize(self.visual(image), dim=1)                          # [B, d, h, w]
      a = F.normalize(self.audio(spec[:, None]).mean(dim=(2, 3)), dim=1)  # [B, d]
      return v, a

  model = AV().to(dev).to(memory_format=torch.channels_last)
  from soundloc_jax import methods
  teacher_on = args.teacher == "on" and methods.get(config.method.name).needs_teacher
  teacher = AV().to(dev).to(memory_format=torch.channels_last).eval()
  for p in teacher.parameters():
    p.requires_grad_(False)
  opt = torch.optim.Adam(model.parameters(), lr=3e-3, fused=dev.type == "cuda")
  image = torch.randn(args.batch, 3, args.image_size, args.image_size, device=dev)
  image = image.to(memory_format=torch.channels_last)
  spec = torch.randn(args.batch, f, t, device=dev)
  use_bf16 = args.dtype == "bfloat16" and dev.type == "cuda"

  def forward_loss(image, spec):
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
      if teacher_on:
        with torch.no_grad():
          teacher(image, spec)
      v, a = model(image, spec)
    return loss_of(v.float(), a.float())

  compiled = torch.compile(forward_loss) if args.torch_compile else forward_loss
  sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

  def run_step():
    loss = compiled(image, spec)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sync()
    return loss

  t0 = time.perf_counter()
  run_step()  # compiles with --torch_compile
  first_s = time.perf_counter() - t0
  for _ in range(args.warmup):
    run_step()
  times = time_steps(run_step, args.steps)
  loss = float(run_step().detach())
  step_s = statistics.median(times)
  peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else None
  return {"framework": "torch", "torch": torch.__version__, "device": str(dev),
          "visual_backbone": args.visual_backbone, "width": args.width,
          "bf16_autocast": use_bf16, "channels_last": True,
          "torch_compile": args.torch_compile, "loss": loss_name, "teacher_forward": teacher_on,
          "samples_per_s": args.batch / step_s, "ms_per_step": 1e3 * step_s,
          "first_step_s": first_s, "peak_memory_bytes": peak, "final_loss": loss}


def main(argv=None):
  args = parse_args(argv)
  maybe_reexec(args)
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  config = load_config(args.config)
  config.model.width = args.width
  config.model.compute_dtype = args.dtype
  config.batch_size = args.batch
  config.dataset.image_size = args.image_size
  config.model.visual_backbone = args.visual_backbone
  config.model.depthwise_impl = args.depthwise_impl
  config.model.cpu_ops = args.cpu_ops
  config.model.visual_trunk = args.visual_trunk
  result = bench_jax(args, config)
  if args.torch:
    peer = bench_torch(args, config)
    result["torch"] = peer
    if "samples_per_s" in peer:
      result["speedup_vs_torch"] = result["samples_per_s"] / peer["samples_per_s"]
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
