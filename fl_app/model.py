"""The reference MNIST CNN."""

import torch
from torch import nn
import torch.nn.functional as F


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


def seeded_net(seed: int) -> Net:
    """A freshly initialised `Net` whose weights depend only on `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Net()
