"""A tiny CNN and its ONNX export, shared by the engine and benchmark tests."""

from __future__ import annotations

from pathlib import Path

import torch


class TinyCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def make_tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return TinyCNN().eval()


def export_tiny(path: Path) -> Path:
    torch.set_num_threads(1)
    torch.onnx.export(
        make_tiny(),
        (torch.randn(1, 3, 16, 16),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
        opset_version=17,
    )
    return path
