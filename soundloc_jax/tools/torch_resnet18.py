"""ResNet-18 in PyTorch with torchvision's module layout and key names
(conv1, bn1, layer1..4 of BasicBlocks with downsample.0/.1, avgpool, fc), at
any width, any layer4 stride and any number of input channels.

Needs torch (this module imports it); the project itself never does. Used
where a torch twin of our model is wanted: the fixtures of
`tests/importers_test.py` (`tests/fixtures/make_fixtures.py`) and the
PyTorch peer of `benchmarks/train_step.py --torch`. torchvision's own
BasicBlock refuses widths other than 64, and its wheels are tied to one
torch build, so the network is written here.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

  def forward(self, x):
    y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
    return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
  """`forward(x, stem="conv1")` returns the layer4 map `[N, 8*width, h, w]`
  (avgpool and fc exist for the checkpoint layout, unused). `extra_stems`
  adds the LVS release's conv1_a (1 channel) and conv1_flow (6 channels)."""

  def __init__(self, width: int, layer4_stride: int = 2, extra_stems: bool = False,
               num_classes: int = 10, in_channels: int = 3):
    super().__init__()
    if extra_stems:
      self.conv1_a = nn.Conv2d(1, width, 7, 2, 3, bias=False)
    self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
    if extra_stems:
      self.conv1_flow = nn.Conv2d(6, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    widths, cin = (width, 2 * width, 4 * width, 8 * width), width
    for i, (cout, stride) in enumerate(zip(widths, (1, 2, 2, layer4_stride))):
      setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, cout, stride),
                                                   BasicBlock(cout, cout, 1)))
      cin = cout
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(8 * width, num_classes)

  def forward(self, x: torch.Tensor, stem: str = "conv1") -> torch.Tensor:
    x = self.maxpool(self.relu(self.bn1(getattr(self, stem)(x))))
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))
