"""Each model overfits one phantom patch (liver against background) to Dice >= 0.95."""

import numpy as np
import pytest
import torch

from medseg import losses, models
from medseg.data.phantom import make_phantom


@pytest.fixture(scope="module")
def patch():
    case = make_phantom(shape=(96, 96, 48), spacing_mm=(4, 4, 5), seed=0, noise_hu=10)
    region = (slice(56, 88), slice(40, 72), slice(16, 32))  # 32 x 32 x 16 across the liver border
    image = np.clip(case.image.array[region].astype(np.float32), -200, 400) / 200.0
    label = case.label.array[region].astype(np.int64)
    assert set(np.unique(label)) == {0, 1} and 0.3 < label.mean() < 0.7
    return torch.from_numpy(image)[None, None], torch.from_numpy(label)[None]


def _dice(pred, target):
    inter = ((pred == 1) & (target == 1)).sum().item()
    return 2 * inter / ((pred == 1).sum().item() + (target == 1).sum().item())


@pytest.mark.parametrize(
    ("name", "kwargs", "steps"),
    [
        ("unet3d", {"depth": 3, "width": 8}, 40),
        ("deeplab3d", {"width": 8, "blocks_per_stage": 1}, 40),
        ("fcn3d", {"width": 4}, 60),
    ],
)
def test_overfits_one_patch(patch, name, kwargs, steps):
    x, y = patch
    model = models.create(name, 1, 2, seed=0, **kwargs)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = losses.create("dice_ce")
    for _ in range(steps):
        optimiser.zero_grad()
        loss_fn(model(x), y).backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert _dice(pred, y) >= 0.95
