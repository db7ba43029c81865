"""Small models outside the zoo, exercising every supported layer type and functional op."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class AllLayers(nn.Module):
    """Every supported leaf module and the common functional ops, with a residual and a branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.gconv = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4, bias=False)
        self.sconv = nn.Conv2d(8, 6, 3, stride=2, padding=1)
        self.pconv = nn.Conv2d(8, 6, 1, padding=0)
        self.maxpool = nn.MaxPool2d(2)
        self.avgpool = nn.AvgPool2d(2, ceil_mode=True)
        self.act1 = nn.LeakyReLU(0.1)
        self.act2 = nn.GELU()
        self.act3 = nn.SiLU()
        self.act4 = nn.Sigmoid()
        self.act5 = nn.Tanh()
        self.act6 = nn.ReLU6()
        self.act7 = nn.ELU()
        self.act8 = nn.Hardswish()
        self.gap = nn.AdaptiveAvgPool2d((1, 1))
        self.gmp = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.drop = nn.Dropout(0.5)
        self.ident = nn.Identity()
        self.fc1 = nn.Linear(36, 16)
        self.bn1d = nn.BatchNorm1d(16)
        self.ln = nn.LayerNorm(16)
        self.conv1d = nn.Conv1d(1, 2, 3, padding=1)
        self.fc2 = nn.Linear(32, 5)
        self.softmax = nn.Softmax(dim=1)
        with torch.no_grad():  # non-trivial BN statistics
            for bn in (self.bn, self.bn1d):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn(self.conv(x)))
        y = y + self.gconv(y)  # residual
        y = F.relu(y) * 0.5
        a = self.maxpool(self.act1(self.sconv(y)))  # stride-2 branch
        b = self.avgpool(self.act2(self.maxpool(self.pconv(y))))
        b = self.act8(self.act7(self.act6(self.act5(self.act4(self.act3(b))))))
        z = torch.cat([a, b], dim=1)
        m = z.mean(dim=(2, 3), keepdim=True)
        z = z - m
        p = torch.flatten(self.gap(z), 1)
        q = self.gmp(z).view(z.size(0), -1)
        r = self.flatten(self.ident(self.drop(z))).reshape(z.shape[0], -1)[:, :12]
        h = torch.cat([p, q, r], dim=1)
        h = self.ln(self.bn1d(self.fc1(h)))
        h1 = self.conv1d(h.unsqueeze(1)).flatten(1)
        out = self.fc2(h1)
        return self.softmax(out) + torch.log_softmax(out, dim=-1).exp()


class Untraceable(nn.Module):
    """A submodule with data-dependent control flow that torch.fx cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.lin(x)
        return -self.lin(x)


class WithUntraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Linear(4, 4)
        self.odd = Untraceable()
        self.post = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(torch.relu(self.odd(self.pre(x))))


class TwoInTwoOut(nn.Module):
    """Two inputs, a dict/tuple output structure."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 4)
        self.b = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        h = torch.relu(self.a(x)) + self.b(y)
        return {"sum": h.sum(dim=1), "pair": (h, torch.sigmoid(h))}
