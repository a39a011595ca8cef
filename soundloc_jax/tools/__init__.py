"""Command-line tools that convert other projects' weights into ours.

`import_torchvision_resnet18` (ImageNet ResNet-18 -> `config.model.init_visual`)
and `import_lvs` (the released LVS model -> a workdir `soundloc_jax.load` and
`--mode=eval` read); both read torch files with `torch_pickle`, without torch.
`torch_resnet18` is the one module here that needs torch: a torch twin of
the ResNet-18 for fixtures and the benchmark's PyTorch peer.
"""
