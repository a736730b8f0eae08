"""Run one CPU training step of a unet3d and print its peak resident memory growth (bytes).

Run in a subprocess: ``python measure_step.py '{"width": 8, ...}' C K x y z B``.

The peak is this process's high-water RSS (``VmHWM`` of /proc/self/status, Linux). Not
``resource.getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries the parent's maximum over
fork + exec into it, so under a large parent (pytest) the growth would be understated.
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
    before = _peak_bytes()
    net = models.create("unet3d", in_channels=c, out_channels=k, **kwargs)
    loss_fn = losses.create("dice_ce")
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss = deep_supervision_loss(loss_fn, net(image), label)
    loss.backward()
    optimizer.step()
    print(_peak_bytes() - before)


def _peak_bytes() -> int:
    """High-water resident memory of this process (bytes)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


if __name__ == "__main__":
    main()
