"""The models a run can train, by the name of the `model` run-config key.

- `cnn`: the reference MNIST CNN (1,199,882 parameters), PyTorch's MNIST example.
- `tanh-cnn`: a small CNN for DP training (26,010 parameters): the MNIST network of
  Opacus' example and of Papernot, Thakurta, Song, Chien & Erlingsson 2021 ("Tempered
  Sigmoid Activations for Deep Learning with Differential Privacy", AAAI), whose tanh
  activations keep clipped updates informative. The noise DP-FedAvg adds has norm
  σS√d/m, so a model with 46× fewer parameters gets √46 ≈ 6.8× less noise per unit of
  signal. No BatchNorm and no dropout: both mix samples or need per-sample state that
  breaks DP-SGD's per-sample clipping.
"""

import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    """conv(1->32,k3)-ReLU-conv(32->64,k3)-ReLU-maxpool2-dropout0.25-
    fc(9216->128)-ReLU-dropout0.5-fc(128->10)-log_softmax (1,199,882 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.dropout1 = nn.Dropout(0.25)
        self.fc1 = nn.Linear(9216, 128)
        self.dropout2 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = self.dropout1(F.max_pool2d(x, 2))
        x = self.dropout2(F.relu(self.fc1(torch.flatten(x, 1))))
        return F.log_softmax(self.fc2(x), dim=1)


class TanhCNN(nn.Module):
    """conv(1->16,k8,s2,p3)-tanh-maxpool(2,1)-conv(16->32,k4,s2)-tanh-maxpool(2,1)-
    fc(512->32)-tanh-fc(32->10)-log_softmax (26,010 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 8, 2, padding=3)
        self.conv2 = nn.Conv2d(16, 32, 4, 2)
        self.fc1 = nn.Linear(32 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.tanh(self.conv1(x)), 2, 1)
        x = F.max_pool2d(torch.tanh(self.conv2(x)), 2, 1)
        x = torch.tanh(self.fc1(torch.flatten(x, 1)))
        return F.log_softmax(self.fc2(x), dim=1)


MODELS: dict[str, type[nn.Module]] = {"cnn": Net, "tanh-cnn": TanhCNN}


def build_model(name: str) -> nn.Module:
    """A freshly initialised model of `name` (one of `MODELS`)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r} (allowed: {', '.join(MODELS)})")
    return MODELS[name]()


def uses_dropout(name: str) -> bool:
    """Whether model `name` draws dropout masks (from torch's global generator)."""
    return any(isinstance(m, nn.Dropout) for m in build_model(name).modules())


def seeded_model(name: str, seed: int) -> nn.Module:
    """A freshly initialised model of `name` whose weights depend only on `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(name)


def seeded_net(seed: int) -> Net:
    """A freshly initialised reference `Net` whose weights depend only on `seed`."""
    net = seeded_model("cnn", seed)
    assert isinstance(net, Net), "MODELS['cnn'] is Net"
    return net
