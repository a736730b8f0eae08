"""Run one CPU training step of a unet3d and print its peak resident memory growth (bytes).

Run in a subprocess: ``python measure_step.py '{"width": 8, ...}' C K x y z B``.
"""

import json
import resource
import sys

import torch

from medseg import losses, models
from medseg.training.supervision import deep_supervision_loss


def main() -> None:
    kwargs = json.loads(sys.argv[1])
    c, k, x, y, z, b = (int(v) for v in sys.argv[2:8])
    torch.manual_seed(0)
    torch.set_num_threads(1)
    image = torch.randn(b, c, x, y, z)
    label = torch.randint(0, k, (b, x, y, z))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    net = models.create("unet3d", in_channels=c, out_channels=k, **kwargs)
    loss_fn = losses.create("dice_ce")
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss = deep_supervision_loss(loss_fn, net(image), label)
    loss.backward()
    optimizer.step()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) * 1024)  # ru_maxrss is in KiB on Linux


if __name__ == "__main__":
    main()
