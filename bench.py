"""Training and evaluation speed, fast path against plain path, in one run.

    python bench.py --device cuda            # the paper's shape: 288x144, share_net 2, PCB 6x256, P=8, K=4
    python bench.py --device cpu --quick     # a few minutes on a laptop CPU

fast : --amp (bf16 on GPUs that have it), channels_last, uint8 batches augmented on the device,
       the batched PCB head.
plain: fp32, the authors' per-image PIL augmentation in DataLoader workers, the per-strip loop.
Each is timed on synthetic batches already on the device (compute alone) and through the real
data pipeline (memory-mapped uint8 npy, identity sampler, workers, pinned memory).
"""
import argparse
import os
import resource
import shutil
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

import data_loader
import eval_metrics
import loss as losses
import model_mine
import train_mine
import utils


def get_args_parser():
    parser = argparse.ArgumentParser(description="Benchmark training and evaluation speed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda | cpu")
    parser.add_argument("--quick", action="store_true", help="small batch, few steps (CPU smoke run)")
    parser.add_argument("--steps", default=None, type=int, help="timed steps per measurement (default 30; quick 3)")
    parser.add_argument("--warmup", default=None, type=int, help="untimed steps first (default 10; quick 1)")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", default=None, type=int,
                        help="P (default 8; quick 4)")
    parser.add_argument("--num_pos", default=None, type=int, help="K (default 4; quick 2)")
    parser.add_argument("--img_h", default=288, type=int)
    parser.add_argument("--img_w", default=144, type=int)
    parser.add_argument("--workers", default=None, type=int, help="loader workers (default 8 cuda, 2 cpu)")
    parser.add_argument("--amp", default="auto", help="the fast path's --amp")
    parser.add_argument("--compile", action="store_true", help="also time the fast path under torch.compile")
    parser.add_argument("--classes", default=395, type=int, help="identities (SYSU-MM01: 395)")
    return parser


def train_args(args, fast, steps):
    """The train_mine.py arguments of one measurement."""
    targs = train_mine.get_args_parser().parse_args([])
    targs.seed, targs.rank, targs.steps_per_epoch, targs.print_freq = 0, 0, steps, 10
    targs.looped_head = not fast
    return targs


def make_model(args, device, fast, compile_=False):
    torch.manual_seed(0)
    model = model_mine.embed_net(args.classes, share_net=2, pcb="on", local_feat_dim=256, num_strips=6, gem_p=3.0)
    model.to(device)
    if fast:
        model.to(memory_format=torch.channels_last)
    margs = train_mine.get_args_parser().parse_args(["--lr", "0.01"])
    optimizer = train_mine.build_optimizer(model, margs)
    return (torch.compile(model) if compile_ else model), optimizer


def synthetic_batches(args, device, fast, n):
    """n copies of one batch already on the device: uint8 (fast) or normalised float (plain)."""
    b = args.batch_size * args.num_pos
    g = torch.Generator().manual_seed(0)
    v = torch.randint(0, 256, (b, args.img_h, args.img_w, 3), dtype=torch.uint8, generator=g)
    t = torch.randint(0, 256, (b, args.img_h, args.img_w, 3), dtype=torch.uint8, generator=g)
    labels = torch.arange(args.batch_size).repeat_interleave(args.num_pos).repeat(2)
    if not fast:
        tf = data_loader.per_image_train_transform(args.img_h, args.img_w)
        v = torch.stack([tf(x) for x in v.numpy()])
        t = torch.stack([tf(x) for x in t.numpy()])
    batch = (v.to(device), t.to(device), labels.to(device))
    return [batch] * n


def pipeline_loader(args, data, device, fast):
    sampler = utils.IdentitySampler(data.labels_v, data.labels_t, args.num_pos, args.batch_size, seed=0)
    transform = None if fast else data_loader.per_image_train_transform(args.img_h, args.img_w)
    return DataLoader(data_loader.BatchData(data, transform), sampler=sampler, batch_size=None,
                      num_workers=args.workers, pin_memory=device.type == "cuda",
                      persistent_workers=args.workers > 0, prefetch_factor=4 if args.workers > 0 else None)


class Repeat:
    """A loader of fixed batches with the length train_one_epoch asks for."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def measure(args, device, fast, loader_fn, compile_=False):
    """(images/s, ms/step, peak memory in MiB) of train_mine.train_one_epoch."""
    model, optimizer = make_model(args, device, fast, compile_)
    dtype = train_mine.amp_dtype(args.amp, device) if fast else None
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    criterion = losses.ReIDLoss("hctri", 0.3, 1.0, "off")
    augment = data_loader.BatchAugment()
    loader = loader_fn(max(args.warmup, args.steps))  # one loader: its workers start before the timing
    train_mine.train_one_epoch(model, criterion, optimizer, scaler, loader, augment, device, 0,
                               train_args(args, fast, args.warmup), dtype, show=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    stats = train_mine.train_one_epoch(model, criterion, optimizer, scaler, loader, augment, device,
                                       1, train_args(args, fast, args.steps), dtype, show=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak RSS so far
    images = args.steps * 2 * args.batch_size * args.num_pos
    del model, optimizer
    return images / elapsed, 1000 * elapsed / args.steps, peak, stats["loss"]


def eval_timing(args, device):
    """Seconds for the metric computation of a SYSU trial (3803 x 301) and a RegDB split (2060 x 2060),
    and feature-extraction throughput at the benchmark's image size."""
    rng = np.random.default_rng(0)
    out = {}
    q = torch.nn.functional.normalize(torch.randn(3803, 1536, device=device), dim=1)
    g = torch.nn.functional.normalize(torch.randn(301, 1536, device=device), dim=1)
    q_pids, g_pids = rng.integers(0, 96, 3803), rng.integers(0, 96, 301)
    q_cams, g_cams = rng.choice([3, 6], 3803), rng.choice([1, 2, 4, 5], 301)
    for name, fn in (("SYSU trial metrics (3803x301)", lambda: eval_metrics.eval_sysu(-(q @ g.T), q_pids, g_pids,
                                                                                      q_cams, g_cams)),
                     ("SYSU trial k-reciprocal re-ranking", lambda: eval_metrics.k_reciprocal(q, g)),
                     ("SYSU trial random-walk re-ranking", lambda: eval_metrics.random_walk(q, g))):
        fn()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[name] = time.perf_counter() - start
    v = torch.nn.functional.normalize(torch.randn(2060, 1536, device=device), dim=1)
    labels = np.repeat(np.arange(206), 10)
    eval_metrics.eval_regdb(-(v @ v.T), labels, labels)
    start = time.perf_counter()
    eval_metrics.eval_regdb(-(v @ v.T), labels, labels)
    out["RegDB split metrics (2060x2060)"] = time.perf_counter() - start

    model = model_mine.embed_net(args.classes, gem_p=3.0).to(device).to(memory_format=torch.channels_last)
    import test_mine
    n = 256 if not args.quick else 32
    images = np.random.default_rng(1).integers(0, 256, (n, args.img_h, args.img_w, 3), dtype=np.uint8)
    rates = {}
    for half in (False, True):
        test_mine.extract_features(model, images[:min(n, 64)], 1, device, 64 if not args.quick else 16, half)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        test_mine.extract_features(model, images, 1, device, 256 if not args.quick else 16, half)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates[half] = n / (time.perf_counter() - start)
    return out, rates


def main(args):
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available")
    quick = args.quick
    args.steps = args.steps or (3 if quick else 30)
    args.warmup = args.warmup or (1 if quick else 10)
    args.batch_size = args.batch_size or (4 if quick else 8)
    args.num_pos = args.num_pos or (2 if quick else 4)
    args.workers = args.workers if args.workers is not None else (8 if device.type == "cuda" else 2)
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {name}; torch {torch.__version__}; {args.img_h}x{args.img_w}, share_net 2, PCB 6x256, "
          f"P={args.batch_size} K={args.num_pos} ({2 * args.batch_size * args.num_pos} images/step), "
          f"{args.steps} timed steps after {args.warmup}; fast amp: {train_mine.amp_dtype(args.amp, device)}")

    # a SYSU-sized stand-in for the real pipeline: memory-mapped uint8 npy files on disk
    folder = tempfile.mkdtemp(prefix="bench-")
    try:
        n = max(2 * args.batch_size * args.num_pos * (args.steps + args.warmup) * 2, 400)
        n_ids = max(args.batch_size * 2, 20)
        for mod in ("rgb", "ir"):
            arr = np.lib.format.open_memmap(os.path.join(folder, f"train_{mod}_resized_img.npy"), mode="w+",
                                            dtype=np.uint8, shape=(n, args.img_h, args.img_w, 3))
            arr[:] = np.random.default_rng(0).integers(0, 256, (1, args.img_h, args.img_w, 3), dtype=np.uint8)
            arr.flush()
            np.save(os.path.join(folder, f"train_{mod}_resized_label.npy"), np.arange(n) % n_ids)
        data = data_loader.sysu_train_data(folder, args.img_w, args.img_h)

        rows = []
        configs = [("fast", True, False), ("plain", False, False)]
        if args.compile:
            configs.insert(1, ("fast+compile", True, True))
        for label, fast, comp in configs:
            for source in ("synthetic", "pipeline"):
                if source == "synthetic":
                    fn = lambda k, fast=fast: Repeat(synthetic_batches(args, device, fast, k))  # noqa: E731
                else:
                    fn = lambda k, fast=fast: pipeline_loader(args, data, device, fast)  # noqa: E731
                rate, ms, peak, loss_value = measure(args, device, fast, fn, comp)
                rows.append((label, source, rate, ms, peak))
                print(f"{label:13s} {source:9s}: {rate:8.1f} img/s  {ms:8.1f} ms/step  peak {peak:8.0f} MiB  "
                      f"(loss {loss_value:.3f})", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    rate = {(r[0], r[1]): r[2] for r in rows}
    print("\nspeed-up, fast / plain:")
    for source in ("synthetic", "pipeline"):
        print(f"  {source:9s}: {rate['fast', source] / rate['plain', source]:.2f}x")
    for label in ("fast", "plain"):
        print(f"  {label} pipeline / synthetic: {100 * rate[label, 'pipeline'] / rate[label, 'synthetic']:.0f}%")

    times, extract = eval_timing(args, device)
    print("\nevaluation:")
    for k, v in times.items():
        print(f"  {k}: {v:.3f} s")
    for half, r in extract.items():
        print(f"  feature extraction {'bf16/fp16' if half else 'fp32'}: {r:.0f} img/s "
              f"(SYSU trial, 3803+301 images: {4104 / r:.1f} s; RegDB split, 4120 images: {4120 / r:.1f} s)")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
