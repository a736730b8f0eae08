"""Benchmark: ``medseg serve`` against a real Orthanc, with a small model on the CPU.

Measured, with the node as a real process (``python -m medseg serve``; ``OMP_NUM_THREADS=1``)
and its destination an Orthanc started here (the tests' fixture, ``tests/serve``):

1. **one series at a time** (the node idle): the latency from the last instance the node
   acknowledged to the DICOM-SEG visible in Orthanc's REST API (polled every 0.1 s), for
   ``--single`` series one after the other; it includes ``series_timeout_s`` (2 s here:
   the node cannot know a series is complete before that silence);
2. **20 series pushed at once** (20 associations, as the tests do): series per minute from
   the first C-STORE to the last SEG in Orthanc, the latencies of the 20 (a queue: the
   last waits for the 19 before it), and the node's peak memory (``VmHWM`` of
   ``/proc/PID/status``, the kernel's peak RSS of the process) against its RSS when idle;
3. **the peer**, the same series by hand: ``medseg predict -m MODEL -i SERIES -o seg.dcm``
   then dcmtk's ``storescu -R`` (it proposes only the file's SOP class: its default list
   lacks Segmentation Storage) to Orthanc, one series after the other, timed from the series
   on disk to storescu's return (the SEG stored). Its series per minute is 60 / that time.

Printed: both latencies and throughputs and their ratios (node / peer; a latency ratio
below 1 and a throughput ratio above 1 favour the node: it keeps the model loaded and
does not start Python and torch per series, at the price of ``series_timeout_s``).

The model is the tests' threshold network (a ``unet3d`` of width 1; one window over the
512 x 512 x SLICES series). The series are the shared real CT (``totalsegmentator/ct_dicom``:
20 axial 512 x 512 slices, JPEG 2000), copied under UIDs of their own, at two sizes by
default: the tests' tiny 4-slice cut (slices 8-11) and the whole 20-slice series; each size
gets a fresh node (so its peak memory is its own) and a fresh Orthanc. Skips (exit 0, with
the reason) when Orthanc, storescu or the shared series is absent.

Run (on a shared machine, ``nice -n 5``)::

    python benchmarks/bench_serve.py [--series 20] [--single 3] [--slices 4,20]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import pydicom  # noqa: E402
from predict.predict_helpers import DATA, save_threshold_checkpoint  # noqa: E402
from serve.orthanc_server import ORTHANC, Orthanc  # noqa: E402
from serve.serve_helpers import NodeProcess, copy_series, push  # noqa: E402

SERIES_TIMEOUT_S = 2.0
POLL_S = 0.1


class SegWatch(threading.Thread):
    """Polls Orthanc for SEG instances; ``seen[source series UID]`` is when the first SEG
    referencing that series became visible (each new SEG's header is read once)."""

    def __init__(self, orthanc: Orthanc) -> None:
        super().__init__(daemon=True)
        self.orthanc, self.seen, self.known = orthanc, {}, set()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(POLL_S):
            now = time.time()
            for instance in set(self.orthanc.seg_instances()) - self.known:
                self.known.add(instance)
                ds = pydicom.dcmread(io.BytesIO(self.orthanc.instance_file(instance)),
                                     stop_before_pixels=True)
                uid = str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
                self.seen.setdefault(uid, now)

    def wait_for(self, uids, timeout_s: float = 3600) -> None:
        deadline = time.time() + timeout_s
        while not all(uid in self.seen for uid in uids):
            if time.time() > deadline:
                raise TimeoutError(f"SEGs missing after {timeout_s} s")
            time.sleep(POLL_S)


def rss_kb(pid: int, field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of process ``pid`` in kB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def make_series(ct: list[Path], folder: Path, count: int, tag: str, slices: int):
    """``count`` copies of ``slices`` middle slices of the shared series (all 20 for 20; 8-11,
    the tests' cut, for 4): [(files, uid)]."""
    first = (len(ct) - slices) // 2
    return [copy_series(ct, folder / f"{tag}{k}", f"bench {tag} {slices} {k}",
                        keep=lambda i: first <= i < first + slices) for k in range(count)]


def send_series(port: int, files: list[Path]) -> float:
    """C-STORE one series in one association; the time its last instance was acknowledged."""
    statuses = push(port, [pydicom.dcmread(f) for f in files])
    if set(statuses) != {0}:
        raise RuntimeError(f"the node answered {statuses}")
    return time.time()


def bench_node(node: NodeProcess, watch: SegWatch, single, many) -> dict:
    pid = node.process.pid
    idle_kb = rss_kb(pid, "VmRSS")
    singles = []
    for files, uid in single:
        acked = send_series(node.port, files)
        watch.wait_for([uid])
        singles.append(watch.seen[uid] - acked)
    acked: dict[str, float] = {}
    barrier = threading.Barrier(len(many))

    def modality(files, uid):
        barrier.wait()
        acked[uid] = send_series(node.port, files)

    threads = [threading.Thread(target=modality, args=s) for s in many]
    start = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    watch.wait_for([uid for _, uid in many])
    end = max(watch.seen[uid] for _, uid in many)
    return {"single_s": singles,
            "queued_s": sorted(watch.seen[uid] - acked[uid] for _, uid in many),
            "per_min": 60 * len(many) / (end - start),
            "idle_mb": idle_kb / 1024, "peak_mb": rss_kb(pid, "VmHWM") / 1024}


def bench_peer(model: Path, series, orthanc: Orthanc, folder: Path) -> list[float]:
    """``medseg predict`` + ``storescu`` per series, one after the other: seconds each."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    seconds = []
    for k, (files, _) in enumerate(series):
        out = folder / f"peer{k}.dcm"
        start = time.time()
        subprocess.run([sys.executable, "-m", "medseg", "--quiet", "predict", "-m", str(model), "-i",
                        str(files[0].parent), "-o", str(out), "--device", "cpu"],
                       env=env, check=True)
        subprocess.run(["storescu", "-R", "-aec", "ORTHANC", "127.0.0.1", str(orthanc.dicom_port),
                        str(out)], check=True)
        seconds.append(time.time() - start)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=20, help="series pushed at once")
    parser.add_argument("--single", type=int, default=3,
                        help="series sent one at a time (node and peer latency)")
    parser.add_argument("--slices", default="4,20",
                        help="slices per series (<= 20), one run per comma-separated value")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the node and Orthanc too
    ct = sorted((DATA / "ct_dicom").resolve().glob("*.dcm")) if (DATA / "ct_dicom").is_dir() \
        else []
    for missing, what in ((not os.path.exists(ORTHANC), "Orthanc"),
                          (shutil.which("storescu") is None, "dcmtk's storescu"),
                          (not ct, f"the shared CT series ({DATA / 'ct_dicom'})")):
        if missing:
            print(f"skipped: {what} is absent")
            return 0
    for slices in (int(v) for v in args.slices.split(",")):
        result, peer_s = run_size(args, ct, min(slices, len(ct)))
        report(args, min(slices, len(ct)), result, peer_s)
    return 0


def run_size(args, ct: list[Path], slices: int) -> tuple[dict, list[float]]:
    """The node's and the peer's measurements for series of ``slices`` slices."""
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        folder = Path(tmp)
        model = save_threshold_checkpoint(folder / "model.safetensors",
                                          roi=(512, 512, slices))
        single = make_series(ct, folder / "series", args.single, "single", slices)
        many = make_series(ct, folder / "series", args.series, "many", slices)
        peer = make_series(ct, folder / "series", args.single, "peer", slices)
        orthanc = Orthanc(folder / "orthanc")
        node = NodeProcess(folder / "node", model, orthanc.dicom_port,
                           series_timeout_s=SERIES_TIMEOUT_S, queue_size=4)
        watch = SegWatch(orthanc)
        try:
            node.start()
            watch.start()
            result = bench_node(node, watch, single, many)
            peer_s = bench_peer(model, peer, orthanc, folder)
        finally:
            watch.stop.set()
            node.stop()
            orthanc.stop()
    return result, peer_s


def report(args, slices: int, result: dict, peer_s: list[float]) -> None:
    node_s, peer_med = statistics.median(result["single_s"]), statistics.median(peer_s)
    queued = result["queued_s"]
    peer_per_min = 60 / peer_med
    print(f"medseg serve vs medseg predict + storescu: {slices}-slice 512 x 512 CT series, "
          f"threshold unet3d, CPU ({os.cpu_count()} cores), series_timeout_s "
          f"{SERIES_TIMEOUT_S:g}")
    print(f"  one series, last instance -> SEG in Orthanc: node {node_s:.2f} s (median of "
          f"{len(result['single_s'])}: {', '.join(f'{s:.2f}' for s in result['single_s'])}), "
          f"peer {peer_med:.2f} s ({', '.join(f'{s:.2f}' for s in peer_s)}); "
          f"ratio node/peer {node_s / peer_med:.2f}")
    print(f"  {args.series} series at once: {result['per_min']:.1f} series/min, peer "
          f"{peer_per_min:.1f} series/min (one after the other); ratio node/peer "
          f"{result['per_min'] / peer_per_min:.2f}")
    print(f"    latency per series (queued): median {statistics.median(queued):.1f} s, "
          f"min {queued[0]:.1f} s, max {queued[-1]:.1f} s")
    print(f"    node memory: idle {result['idle_mb']:.0f} MB, peak {result['peak_mb']:.0f} MB "
          f"(peak/idle {result['peak_mb'] / result['idle_mb']:.2f})")


if __name__ == "__main__":
    sys.exit(main())
