"""Training and evaluation speed: the authors' released training step (reference) against this
project's (fast), in one run.

    python bench.py --device cuda           # the paper's SYSU shape: 288x144, share_net 2, PCB 6x256, P=6, K=8
    python bench.py --device cpu --quick    # a smoke run: a couple of minutes on a 2-core CPU

reference: the authors' train_mine.py step as it runs, rebuilt here with the same structure:
    data   in-memory uint8 arrays; a Dataset whose item i is (visible image, thermal image, visible
           label, thermal label) of the i-th index pair of an identity sampler, each image through
           the per-image PIL pad / crop / flip / ToTensor / Normalize; DataLoader(batch_size=P*K,
           4 workers, default collate, no pinned memory), batches copied to the device synchronously;
    model  fp32 (NCHW) two-stream ResNet with their per-strip head: local_conv_list[i] = Conv2d 1x1
           + BatchNorm2d + ReLU, fc_list[i] = Linear, a Python loop over strips, GeM by the direct
           formula (the same module and key layout as their checkpoints);
    loss   per strip: ID cross-entropy and hetero-center loss, summed in a Python loop, + the
           hetero-center loss of the concatenation; each hetero-center call takes labels.unique(),
           centers of 2P contiguous chunks, addmm distances, a Python loop over the 2P anchors with
           a boolean-masked max and min per row, MarginRankingLoss, and .item() of its accuracy;
           SGD (Nesterov, 3 parameter groups); loss.item() and loss_id.item() for the meters.
    Each of those host synchronisations is theirs; cudnn.benchmark on as they set it; PyTorch's
    default TF32 settings (left as they are, for both paths).
fast: train_mine.train_one_epoch with the project's defaults: uint8 batches augmented on the
    device, channels_last, the batched PCB head, --amp auto (bf16 on GPUs that have it), and, on a
    CUDA device, CUDA graphs (--compile auto) and the training set resident on the GPU
    (--resident_data auto), as train_mine.py decides them.

Each path is timed on synthetic batches (one batch already on the device, repeated: compute alone)
and through its real data pipeline (reference: in-memory arrays and per-image PIL in workers; fast:
memory-mapped uint8 npy files, resident on the GPU or read by BatchData workers into pinned memory).
Both start from identical weights. The last lines turn the fast path's step time into the time of a
SYSU-MM01 epoch and of the paper's 61-epoch run with its evaluations.
"""
import argparse
import itertools
import os
import resource
import shutil
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

import data_loader
import eval_metrics
import flags
import model_mine
import settings
import train_mine

MARGIN = 0.3  # the hetero-center margin of both published settings
W_CENTER = 1.0  # the SYSU-MM01 setting (RegDB: 2.0)
LR = 0.01  # the paper's rate in the first warm-up epoch: lr 0.1 x (0 + 1) / 10
REF_PREFETCH = 2  # DataLoader's default prefetch_factor, which the authors' loader uses
FAST_PREFETCH = 4  # train_mine.build_batches'


def get_args_parser():
    parser = argparse.ArgumentParser(description="Benchmark training and evaluation speed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="small batch, few steps (CPU smoke run)")
    parser.add_argument("--steps", default=None, type=int, help="timed steps per measurement (default 30; quick 3)")
    parser.add_argument("--warmup", default=None, type=int, help="untimed steps first (default 10; quick 1)")
    flag = settings.flag
    flag("batch_size").add_to(parser, help="P identities per batch (default 6, SYSU-MM01's; quick 2)")
    flag("num_pos").add_to(parser, help="K images per identity and modality (default 8, SYSU-MM01's; quick 2)")
    # the paper's SYSU-MM01 network
    for name, value in dict(img_h=288, img_w=144, gem_p=3.0).items():
        flag(name).add_to(parser, default=value, help=f"default {value} (SYSU-MM01's)")
    for declared in (flags.FLAG.arch, flags.FLAG.share_net, flags.FLAG.num_strips, flags.FLAG.local_feat_dim):
        declared.add_to(parser, default=declared.default)
    parser.add_argument("--classes", default=395, type=int, help="identities (SYSU-MM01: 395)")
    parser.add_argument("--ref_workers", default=4, type=int, help="the reference's loader workers (theirs: 4)")
    for name in ("workers", "amp", "compile", "resident_data"):  # train_mine.py's, for the fast path
        flag(name).add_to(parser, default=flag(name).default, help=f"the fast path's --{name} (as train_mine.py)")
    flag("method").add_to(parser, default=["hctri"], nargs="+",
                          help="the fast path of these methods too, beside the paper's (e.g. --method agw caj)")
    parser.add_argument("--processes", default=None, type=int, nargs="+",
                        help="the per-process share of a step with N processes (torchrun): the fast step of P/N "
                             "identities, and the N-GPU epoch it predicts (default: 2, 3 and 4 where they divide P)")
    parser.add_argument("--check", action="store_true",
                        help="a self-check of the default training path for a new machine (OK/FAIL lines, exit "
                             "status 1 on a FAIL): run it first on a new GPU")
    flag("compile_backend").add_to(parser, help="--check on a CPU: the compiled path's backend (default inductor "
                                                "where a C++ compiler is found, else aot_eager)")
    return parser


# ----------------------------------------------------------------------------- the reference

class ReferenceNet(nn.Module):
    """The authors' embed_net with --pcb on, as it runs: this project's two-stream backbone modules
    (visible_module.visible, thermal_module.thermal, base_resnet.base) under their per-strip head.
    Its state-dict keys are those of the authors' checkpoints, so
    load_state_dict(model_mine.to_original_state_dict(embed_net)) gives it an embed_net's weights."""

    def __init__(self, class_num, arch="resnet50", share_net=2, local_feat_dim=256, num_strips=6, gem_p=3.0):
        super().__init__()
        net = model_mine.embed_net(class_num, arch=arch, share_net=share_net, pcb="on",
                                   local_feat_dim=local_feat_dim, num_strips=num_strips, gem_p=gem_p)
        self.thermal_module, self.visible_module, self.base_resnet = \
            net.thermal_module, net.visible_module, net.base_resnet
        in_dim = net.head.conv_weight.shape[-1]
        self.num_strips, self.gem_p = num_strips, gem_p
        self.local_conv_list = nn.ModuleList()
        self.fc_list = nn.ModuleList()
        for _ in range(num_strips):
            conv = nn.Conv2d(in_dim, local_feat_dim, 1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_in")
            self.local_conv_list.append(nn.Sequential(conv, nn.BatchNorm2d(local_feat_dim), nn.ReLU(inplace=True)))
            fc = nn.Linear(local_feat_dim, class_num)
            nn.init.normal_(fc.weight, std=0.001)
            nn.init.zeros_(fc.bias)
            self.fc_list.append(fc)

    def forward(self, x1, x2):
        """Training output: (list of strip features, list of strip logits, their concatenation)."""
        x = torch.cat((self.visible_module.visible(x1), self.thermal_module.thermal(x2)), 0)
        x = self.base_resnet.base(x)
        b, c, h, _ = x.shape
        rows = h // self.num_strips
        feats, logits = [], []
        for i in range(self.num_strips):
            strip = x[:, :, i * rows:(i + 1) * rows, :].reshape(b, c, -1)
            pooled = (strip.pow(self.gem_p).mean(-1) + 1e-12).pow(1.0 / self.gem_p)
            f = self.local_conv_list[i](pooled.view(b, c, 1, 1)).view(b, -1)
            feats.append(f)
            logits.append(self.fc_list[i](f))
        return feats, logits, torch.cat(feats, 1)


class ReferenceCenterLoss(nn.Module):
    """The hetero-center loss computed the authors' way, for their batch layout only: the batch is
    2P contiguous chunks of K (P visible identity blocks, then the P thermal ones in the same order).
    Returns (loss, number of anchors with d_an >= d_ap as a Python int)."""

    def __init__(self, margin=MARGIN):
        super().__init__()
        self.ranking_loss = nn.MarginRankingLoss(margin=margin)

    def forward(self, feats, labels):
        ids = labels.unique()  # a host synchronisation on a GPU, as theirs
        n = 2 * len(ids)
        targets = torch.cat((ids, ids))  # chunk j and chunk j + P: one identity, two modalities
        centers = torch.cat([chunk.mean(0, keepdim=True) for chunk in feats.chunk(n, 0)])
        sq = centers.pow(2).sum(1, keepdim=True).expand(n, n)
        dist = (sq + sq.t()).addmm_(centers, centers.t(), beta=1, alpha=-2).clamp(min=1e-12).sqrt()
        same = targets[:, None] == targets[None, :]
        d_ap, d_an = [], []
        for i in range(n):  # boolean-masked rows: each one a host synchronisation on a GPU, as theirs
            d_ap.append(dist[i][same[i]].max().unsqueeze(0))
            d_an.append(dist[i][~same[i]].min().unsqueeze(0))
        d_ap, d_an = torch.cat(d_ap), torch.cat(d_an)
        loss = self.ranking_loss(d_an, d_ap, torch.ones_like(d_an))
        return loss, int((d_an >= d_ap).sum().item())


def reference_loss(out, labels, id_loss, center_loss, w_center=W_CENTER):
    """The authors' PCB loss, strip by strip: (total, ID loss, triplet loss, triplet accuracy count)."""
    feats, logits, feat_all = out
    loss_id = id_loss(logits[0], labels)
    loss_tri_l = center_loss(feats[0], labels)[0]
    for i in range(1, len(feats)):
        loss_id = loss_id + id_loss(logits[i], labels)
        loss_tri_l = loss_tri_l + center_loss(feats[i], labels)[0]
    loss_tri, correct = center_loss(feat_all, labels)
    loss_tri = loss_tri + w_center * loss_tri_l
    return loss_id + loss_tri, loss_id, loss_tri, correct


def reference_optimizer(model, lr=LR):
    """Their SGD: backbone at 0.1 x lr, then the local convs and the strip classifiers at lr."""
    full = {id(p) for p in itertools.chain(model.local_conv_list.parameters(), model.fc_list.parameters())}
    return torch.optim.SGD([{"params": [p for p in model.parameters() if id(p) not in full], "lr": 0.1 * lr},
                            {"params": model.local_conv_list.parameters(), "lr": lr},
                            {"params": model.fc_list.parameters(), "lr": lr}],
                           lr=lr, weight_decay=5e-4, momentum=0.9, nesterov=True)


class ReferenceStep:
    """One training step of the authors' train(): callable on (input1, input2, label1, label2)."""

    def __init__(self, model, device, w_center=W_CENTER):
        self.model, self.device, self.w_center = model.train(), device, w_center
        self.optimizer = reference_optimizer(model)
        self.id_loss, self.center_loss = nn.CrossEntropyLoss(), ReferenceCenterLoss()
        self.loss_sum = self.id_sum = 0.0
        self.tri_sum = torch.zeros((), device=device)
        self.correct = self.total = 0

    def __call__(self, batch):
        input1, input2, label1, label2 = batch
        labels = torch.cat((label1, label2), 0)
        # plain .to(): their loader does not pin memory, so these copies wait for the host
        input1, input2, labels = input1.to(self.device), input2.to(self.device), labels.to(self.device)
        loss, loss_id, loss_tri, correct = reference_loss(self.model(input1, input2), labels, self.id_loss,
                                                          self.center_loss, self.w_center)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        n = 2 * input1.size(0)
        value = loss.item()  # their meters: two .item() calls; the triplet one keeps a tensor
        self.loss_sum += value * n
        self.id_sum += loss_id.item() * n
        self.tri_sum = self.tri_sum + loss_tri.detach() * n
        self.correct += correct
        self.total += labels.size(0)
        return value


class ReferenceTrainSet(Dataset):
    """The authors' training set layout: in-memory arrays; item i is (visible image, thermal image,
    visible label, thermal label) of the i-th (visible index, thermal index) pair, each image
    through `transform`."""

    def __init__(self, visible, labels_v, thermal, labels_t, idx_v, idx_t, transform):
        self.visible, self.thermal = visible, thermal
        self.labels_v, self.labels_t = np.asarray(labels_v), np.asarray(labels_t)
        self.idx_v, self.idx_t = np.asarray(idx_v), np.asarray(idx_t)
        self.transform = transform

    def __len__(self):
        return len(self.idx_v)

    def __getitem__(self, i):
        a, b = self.idx_v[i], self.idx_t[i]
        return self.transform(self.visible[a]), self.transform(self.thermal[b]), self.labels_v[a], self.labels_t[b]


def index_pairs(labels_v, labels_t, batch_size, num_pos, n_batches, seed=0):
    """n_batches (visible indices, thermal indices) pairs of data_loader.IdentitySampler, over as many
    epochs as that takes."""
    sampler = data_loader.IdentitySampler(labels_v, labels_t, num_pos, batch_size, seed=seed)
    pairs = []
    for epoch in itertools.count():
        if len(pairs) >= n_batches:
            return pairs[:n_batches]
        sampler.set_epoch(epoch)
        pairs.extend(sampler)


def reference_loader(visible, labels_v, thermal, labels_t, batch_size, num_pos, n_batches, workers,
                     transform, seed=0):
    """Their DataLoader: the sampler's batches flattened per image, read in order in batches of P*K."""
    pairs = index_pairs(labels_v, labels_t, batch_size, num_pos, n_batches, seed)
    dataset = ReferenceTrainSet(visible, labels_v, thermal, labels_t, np.concatenate([p[0] for p in pairs]),
                                np.concatenate([p[1] for p in pairs]), transform)
    return DataLoader(dataset, batch_size=batch_size * num_pos, shuffle=False, num_workers=workers, drop_last=True)


def reference_model(args, device):
    """The reference network with the fast path's initial weights."""
    model = ReferenceNet(args.classes, args.arch, args.share_net, args.local_feat_dim, args.num_strips, args.gem_p)
    model.load_state_dict(model_mine.to_original_state_dict(fast_model(args, torch.device("cpu"))))
    return model.to(device)


def measure_reference(args, device, source):
    """(images/s, ms/step, peak MiB, loss) of the reference step on `source`: 'synthetic' or 'pipeline'."""
    step = ReferenceStep(reference_model(args, device), device)
    if source == "synthetic":
        v, t, labels = synthetic_batch(args)
        tf = data_loader.per_image_train_transform(args.img_h, args.img_w)
        half = len(labels) // 2
        batch = tuple(x.to(device) for x in (torch.stack([tf(x) for x in v.numpy()]),
                                             torch.stack([tf(x) for x in t.numpy()]), labels[:half], labels[half:]))
        return timed(step, itertools.repeat(batch), args, device)
    # in memory, not memory-mapped: their SYSUData np.loads the whole arrays
    arrays = [np.load(os.path.join(args.data_folder, name)) for name in data_loader.SYSU_NPY]
    drain = args.ref_workers * REF_PREFETCH
    loader = reference_loader(arrays[0], arrays[1], arrays[2], arrays[3], args.batch_size, args.num_pos,
                              args.warmup + 2 * drain + args.steps + 1, args.ref_workers,
                              data_loader.per_image_train_transform(args.img_h, args.img_w))
    it = iter(loader)
    try:
        return timed(step, it, args, device, drain)
    finally:
        del it  # stops the workers before the next measurement


# ----------------------------------------------------------------------------- the fast path

def fast_model(args, device, method="hctri"):
    """The network train_mine.py builds for the method, seeded: the reference is given the paper's."""
    torch.manual_seed(0)
    model = train_mine.build_model(args.classes, train_args(args, 0, method), "none")
    return model.to(device).to(memory_format=torch.channels_last)


def train_args(args, steps, method="hctri"):
    """train_mine.py's settings of one fast measurement, resolved as train_mine.py resolves them: the
    method's SYSU-MM01 setting at this benchmark's batch and image shape, at the rate LR; the
    network flags of this benchmark (--share_net, --num_strips, ...) where the method reads them and
    publishes none of its own (the paper's method: all of them)."""
    base = dict(dataset="sysu", data_path=".", compile=args.compile, resident_data=args.resident_data, lr=LR,
                method=method, arch=args.arch, batch_size=args.batch_size, num_pos=args.num_pos, img_h=args.img_h,
                img_w=args.img_w)
    own = settings.METHODS[method].reproduction.defaults.get("sysu", {})
    network = {k: v for k, v in dict(share_net=args.share_net, num_strips=args.num_strips, gem_p=args.gem_p,
                                     local_feat_dim=args.local_feat_dim, margin=MARGIN, w_center=W_CENTER,
                                     label_smooth="off").items() if k not in own}

    def resolved(network, explicit):
        targs = train_mine.get_args_parser().parse_args([])
        vars(targs).update(base, **network, rank=0, world_size=1)
        return settings.resolve_training(targs, explicit)
    unread = settings.unread_flags(settings.METHODS[method], resolved(network, set(base)), network)
    network = {k: v for k, v in network.items() if k not in unread}
    targs = resolved(network, set(base) | set(network))
    targs.steps_per_epoch, targs.print_freq = steps, 10
    targs.workers, targs.cpu_aug, targs.pad, targs.looped_head = args.workers, False, data_loader.PAD, False
    return targs


class Take:
    """The next n batches of a running iterator, as a loader of length n: train_one_epoch takes its
    warm-up and timed steps from one iterator, so the loader's workers never restart in between."""

    def __init__(self, it, n):
        self.it, self.n = it, n

    def __len__(self):
        return self.n

    def __iter__(self):
        return itertools.islice(self.it, self.n)


def fast_step(args, device, mode, backend="inductor", method="hctri"):
    """(network, its TrainingStep, under torch.compile for a mode, optimiser, gradient scaler) as
    train_mine.py builds them, from fast_model's seeded weights."""
    model = fast_model(args, device, method)
    targs = train_args(args, 0, method)
    optimizer = train_mine.build_optimizer(model, targs)
    dtype = train_mine.amp_dtype(args.amp, device)
    step = train_mine.TrainingStep(model, settings.METHODS[targs.method].loss(targs), dtype)
    if mode is not None:
        step = train_mine.CompiledModel(step, mode, print, backend)
    return model, step, optimizer, torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def measure_fast(args, device, source, method="hctri"):
    """(images/s, ms/step, peak MiB, loss) of train_mine.train_one_epoch on `source`: 'synthetic' or
    'pipeline', with train_mine.py's step (CUDA graphs or eager) and data path (resident or loader)
    for the method (images/s: the sampled ones; CAJ's step runs each visible image twice)."""
    targs = train_args(args, 0, method)
    mode, args.step_line = train_mine.compile_mode(targs, device)
    _, model, optimizer, scaler = fast_step(args, device, mode, method=method)
    augment = data_loader.BatchAugment(caj=targs.caj_aug == "on", **settings.METHODS[method].augment(targs))
    drain = 0
    if source == "synthetic":
        it = itertools.repeat(tuple(x.to(device) for x in synthetic_batch(args)))
    else:
        data = data_loader.sysu_train_data(args.data_folder, args.img_w, args.img_h)
        drain = args.workers * FAST_PREFETCH
        pairs = index_pairs(data.labels_v, data.labels_t, args.batch_size, args.num_pos,
                            args.warmup + 2 * drain + args.steps + 1)
        batches, args.data_line = train_mine.build_batches(data, pairs, targs, device)
        if isinstance(batches, data_loader.ResidentBatches):
            drain = 0  # no queue to fill: every batch is gathered when it is asked for
        it = iter(batches)
    out = {}

    def run(n, epoch):
        out.update(train_mine.train_one_epoch(model, optimizer, scaler, Take(it, n), augment, device,
                                              epoch, train_args(args, n, method), show=False))
        return out["loss"]

    try:
        return timed(run, it, args, device, drain, batched=True)
    finally:
        del it


# ----------------------------------------------------------------------------- measuring

def synthetic_batch(args):
    """One uint8 batch (visible [PK, H, W, 3], thermal, labels [2PK]) in the authors' layout; P is
    args.share_ids where set (a process's share of the global batch, measure_shares)."""
    p = getattr(args, "share_ids", None) or args.batch_size
    b = p * args.num_pos
    g = torch.Generator().manual_seed(0)
    v = torch.randint(0, 256, (b, args.img_h, args.img_w, 3), dtype=torch.uint8, generator=g)
    t = torch.randint(0, 256, (b, args.img_h, args.img_w, 3), dtype=torch.uint8, generator=g)
    labels = torch.arange(p).repeat_interleave(args.num_pos).repeat(2)
    return v, t, labels


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:  # Linux: restarts the peak RSS (VmHWM) from now
            f.write("5")
    except OSError:
        pass  # elsewhere the peak is the process's since its start


def peak_mib(device):
    """Peak memory since reset_peak: allocated on the GPU, or this process's resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(step, batches, args, device, drain=0, batched=False):
    """(images/s, ms/step, peak MiB, mean loss) of args.steps steps after args.warmup untimed ones.

    step(batch) runs one step on the next batch of the iterator `batches` and returns its loss; with
    batched, step(n, epoch) runs the next n steps itself, from the same iterator, and returns their
    mean loss. Between warm-up and timing, `drain` batches (what the loader's workers can hold
    ready: prefetch factor x workers) are taken without a step, so that a pipeline slower than the
    step starts the timing as it runs, not with a queue that the slow warm-up steps let fill up."""
    if batched:
        if args.warmup:  # an epoch of 0 steps has no mean loss
            step(args.warmup, 0)
    else:
        for _ in range(args.warmup):
            step(next(batches))
    for _ in range(drain):
        next(batches)
    synchronize(device)
    reset_peak(device)
    start = time.perf_counter()
    if batched:
        loss = step(args.steps, 1)
    else:
        loss = sum(step(next(batches)) for _ in range(args.steps)) / args.steps
    synchronize(device)
    elapsed = time.perf_counter() - start
    images = args.steps * 2 * args.batch_size * args.num_pos
    return images / elapsed, 1000 * elapsed / args.steps, peak_mib(device), float(loss)


# ----------------------------------------------------------------------------- evaluation

def eval_timing(args, device):
    """Seconds for the metric computation of a SYSU trial (3803 x 301) and a RegDB split (2060 x 2060),
    and feature-extraction images/s at the benchmark's image size, fp32 and bf16/fp16, per batch size."""
    rng = np.random.default_rng(0)
    out = {}
    q = torch.nn.functional.normalize(torch.randn(3803, 1536, device=device), dim=1)
    g = torch.nn.functional.normalize(torch.randn(301, 1536, device=device), dim=1)
    q_pids, g_pids = rng.integers(0, 96, 3803), rng.integers(0, 96, 301)
    q_cams, g_cams = rng.choice([3, 6], 3803), rng.choice([1, 2, 4, 5], 301)
    v = torch.nn.functional.normalize(torch.randn(2060, 1536, device=device), dim=1)
    labels = np.repeat(np.arange(206), 10)
    for name, fn in (("SYSU trial metrics (3803x301)",
                      lambda: eval_metrics.eval_sysu(-(q @ g.T), q_pids, g_pids, q_cams, g_cams)),
                     ("SYSU trial k-reciprocal re-ranking", lambda: eval_metrics.k_reciprocal(q, g)),
                     ("SYSU trial random-walk re-ranking", lambda: eval_metrics.random_walk(q, g)),
                     ("RegDB split metrics (2060x2060)", lambda: eval_metrics.eval_regdb(-(v @ v.T), labels, labels))):
        fn()
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        out[name] = time.perf_counter() - start

    model = fast_model(args, device)
    sizes, per_size = ((4, 8), 2) if args.quick else ((128, 512), 4)
    images = rng.integers(0, 256, (max(sizes) * per_size, args.img_h, args.img_w, 3), dtype=np.uint8)
    rates = {}
    for half in (False, True):
        for size in sizes:
            # one batch of this shape first: cuDNN autotunes each new shape, and that is not extraction
            eval_metrics.extract_features(model, images[:size], "visible", device, size, half)
            synchronize(device)
            start = time.perf_counter()
            eval_metrics.extract_features(model, images[:size * per_size], "visible", device, size, half)
            synchronize(device)
            rates[half, size] = size * per_size / (time.perf_counter() - start)
    return out, rates


# ----------------------------------------------------------------------------- --check

CHECK_STEPS = 4  # steps of each path on the same batches, for the agreement


def check_path(args, device):
    """train_mine.py's arguments of the default path; on a CPU (eager by default) the same compiled
    path with a CPU backend, so that the check exercises it."""
    targs = train_args(args, 0)
    mode, line = train_mine.compile_mode(targs, device)
    targs.compile_backend = args.compile_backend
    if mode is None and device.type == "cpu" and args.compile != "off":
        targs.compile = "default"
        targs.compile_backend = args.compile_backend or ("inductor" if shutil.which("g++") or shutil.which("c++")
                                                         else "aot_eager")
        mode, line = train_mine.compile_mode(targs, device)
        line += " (this CPU's default is eager: the check runs the compiled path a GPU would run)"
    return targs, mode, line


def check_step(args, device, targs, mode, batches):
    """(per-step losses, the first step's update of the weights, the step, its optimiser and scaler)
    of CHECK_STEPS steps from seeded weights on batches."""
    model, step, optimizer, scaler = fast_step(args, device, mode, targs.compile_backend or "inductor")
    start = torch.cat([p.detach().flatten().double() for p in model.parameters()])
    augment, values = data_loader.BatchAugment(), []
    torch.manual_seed(1)  # the same augmentation draws on both paths
    step.train()
    for i, batch in enumerate(batches):
        values.append(train_mine.train_step(step, optimizer, scaler, batch, augment, device,
                                            last=i == len(batches) - 1)["loss"].float().item())
        if i == 0:  # one update from the same weights: later ones drift apart by rounding alone
            update = torch.cat([p.detach().flatten().double() for p in model.parameters()]) - start
    return values, update, step, optimizer, scaler


def launches_per_step(step, optimizer, scaler, batch, device):
    """(graph launches, kernels launched outside graphs) of one CUDA step, by the profiler."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        train_mine.train_step(step, optimizer, scaler, batch, data_loader.BatchAugment(), device)
        synchronize(device)
    names = [e.name for e in prof.events()]
    return sum(n == "cudaGraphLaunch" for n in names), sum(n in ("cudaLaunchKernel", "cuLaunchKernel",
                                                                 "cudaLaunchKernelExC") for n in names)


def syncs_per_step(run, device, n):
    """Host synchronisations per step of run(n) (train_one_epoch), counted by CUDA's sync debug mode."""
    import warnings
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run(n)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught) / n


def self_check(args, device):
    """--check: the default training path beside the eager one from the same weights and batches;
    prints one OK/FAIL line per check and returns the number of FAIL lines."""
    fails = []

    def report(ok, text):
        print(f"{'OK  ' if ok else 'FAIL'} {text}", flush=True)
        fails.extend([] if ok else [text])
    targs, mode, line = check_path(args, device)
    report(mode is not None, f"path: {line}")
    folder = tempfile.mkdtemp(prefix="bench-check-")
    try:
        write_training_set(folder, args, device)
        data = data_loader.sysu_train_data(folder, args.img_w, args.img_h)
        pairs = index_pairs(data.labels_v, data.labels_t, args.batch_size, args.num_pos, 10 ** 4)
        source, data_line = train_mine.build_batches(data, pairs, targs, device)
        it = iter(source)
        batches = [tuple(x.to(device) for x in next(it)) for _ in range(CHECK_STEPS)]
        eager_loss, eager_update, _, _, _ = check_step(args, device, targs, None, batches)
        loss, update, step, optimizer, scaler = check_step(args, device, targs, mode, batches)
        compiled = isinstance(step, train_mine.CompiledModel) and step.compiled is not None
        report(compiled or mode is None, "no fall-back to eager" if compiled else "fell back to eager (the note above)")
        worst = max(abs(a - b) / max(abs(a), 1e-6) for a, b in zip(eager_loss, loss))
        report(worst <= 0.02, f"losses agree with eager over {CHECK_STEPS} steps: largest relative difference "
                              f"{worst:.2e} (at most 2e-2)")
        cos = float(torch.nn.functional.cosine_similarity(eager_update, update, dim=0))
        report(cos >= 0.99, f"the first update agrees with eager: cosine {cos:.5f} (at least 0.99)")
        check_graphs(step, report, device, optimizer, scaler, batches[0])
        check_speed(args, device, step, optimizer, scaler, it, report, data_line, source, data)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{len(fails)} check(s) failed" if fails else "all checks passed")
    return len(fails)


def check_graphs(step, report, device, optimizer, scaler, batch):
    if not isinstance(step, train_mine.CompiledModel) or step.compiled is None:
        return
    now = step.counts()
    warm = step.warm or now
    report(now["graphs"] >= 1, f"graphs: {now['graphs']}; graph breaks: 0 (compiled with fullgraph)")
    report(now["graphs"] == warm["graphs"], f"recompiles after warm-up: {now['graphs'] - warm['graphs']}")
    report(now["cudagraph_skips"] == 0, f"cudagraph skips since the start: {now['cudagraph_skips']}")
    if device.type == "cuda":
        graphs, kernels = launches_per_step(step, optimizer, scaler, batch, device)
        report(graphs >= 1 or step.mode != "reduce-overhead",
               f"per step: {graphs} graph launch(es), {kernels} kernel(s) launched outside graphs")


def check_speed(args, device, step, optimizer, scaler, it, report, data_line, source, data):
    n = max(args.steps, 2)
    augment = data_loader.BatchAugment()

    def run(k, epoch=1):
        return train_mine.train_one_epoch(step, optimizer, scaler, Take(it, k), augment, device, epoch,
                                          train_args(args, k), show=False)
    run(2)
    if device.type == "cuda":
        syncs = syncs_per_step(run, device, 10)
        report(syncs <= 0.2, f"host synchronisations per step: {syncs:.2f} (one per --print_freq 10 steps: 0.1)")
    else:
        report(True, "host synchronisations: counted on CUDA devices only")
    synchronize(device)
    reset_peak(device)
    start = time.perf_counter()
    run(n)
    synchronize(device)
    rate = n * 2 * args.batch_size * args.num_pos / (time.perf_counter() - start)
    report(rate > 0, f"{rate:.1f} img/s through the real data path ({data_line})")
    resident = (data.visible.nbytes + data.thermal.nbytes) / 2 ** 30 \
        if isinstance(source, data_loader.ResidentBatches) else 0.0
    peak = peak_mib(device) / 1024
    where = "allocated on the GPU" if device.type == "cuda" else "resident set of the process"
    report(True, f"peak memory {peak:.2f} GiB ({where}): resident data {resident:.2f} GiB, training "
                 f"{peak - resident:.2f} GiB")


# ----------------------------------------------------------------------------- main

def write_training_set(folder, args, device):
    """A stand-in training set in SYSU's files: memory-mapped uint8 npy images and int64 labels; on a
    GPU of SYSU-MM01's size (22,258 + 11,909 images), so that the resident-data rule and the peak
    memory are those of a real run."""
    sizes = (8 * args.batch_size * args.num_pos,) * 2 if args.quick else \
        (22258, 11909) if device.type == "cuda" else (4000, 4000)
    n_ids = min(args.classes, max(args.batch_size, min(sizes) // (4 * args.num_pos)))
    rng = np.random.default_rng(0)
    for mod, n in zip(("rgb", "ir"), sizes):
        arr = np.lib.format.open_memmap(os.path.join(folder, f"train_{mod}_resized_img.npy"), mode="w+",
                                        dtype=np.uint8, shape=(n, args.img_h, args.img_w, 3))
        for s in range(0, n, 256):
            arr[s:s + 256] = rng.integers(0, 256, arr[s:s + 256].shape, dtype=np.uint8)
        arr.flush()
        del arr
        np.save(os.path.join(folder, f"train_{mod}_resized_label.npy"), np.arange(n, dtype=np.int64) % n_ids)


def release(device):
    """After a measurement: its compiled graphs, graph memory pool and counters do not reach the next."""
    train_mine.reset_compiler()


def resolve(args, device):
    """bench's own defaults (--quick: a CPU smoke run) filled in and every flag checked, before any work."""
    quick = args.quick
    args.steps = args.steps if args.steps is not None else (3 if quick else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 10)
    args.batch_size = args.batch_size if args.batch_size is not None else (2 if quick else 6)  # 0 is refused
    args.num_pos = args.num_pos if args.num_pos is not None else (2 if quick else 8)
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit(f"error: --steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    args.workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)
    try:
        train_args(args, 0)  # the settings checked as train_mine.py checks them
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    for flag in ("ref_workers", "workers"):
        if getattr(args, flag) < 0:
            raise SystemExit(f"error: --{flag} must be >= 0, got {getattr(args, flag)}")
    if args.classes < args.batch_size:  # a batch holds P identities, labelled 0..P-1
        raise SystemExit(f"error: --classes must be at least --batch-size ({args.batch_size} identities a batch), "
                         f"got {args.classes}")
    if args.processes is None:
        args.processes = [n for n in (2, 3, 4) if args.batch_size % n == 0]
    for n in args.processes:
        if n < 2 or args.batch_size % n:
            raise SystemExit(f"error: --processes {n}: a share of the P={args.batch_size} identities of a step "
                             f"needs N >= 2 that divides P (torchrun refuses any other)")


def main(args):
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available")
    resolve(args, device)
    if args.check:
        if args.method != ["hctri"]:
            raise SystemExit("error: --method: --check checks the default training path with the paper's method; "
                             "leave --method out (the other methods' steps: bench.py --method ...)")
        return self_check(args, device)
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # the authors' setting, and train_mine.py's
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    amp = train_mine.amp_dtype(args.amp, device)
    print(f"device: {name}; torch {torch.__version__}; {args.img_h}x{args.img_w}, {args.arch}, share_net "
          f"{args.share_net}, PCB {args.num_strips}x{args.local_feat_dim}, GeM p={args.gem_p:g}, {args.classes} "
          f"classes, P={args.batch_size} K={args.num_pos} ({2 * args.batch_size * args.num_pos} images/step); "
          f"{args.steps} timed steps after {args.warmup}")
    print(f"reference: fp32, {args.ref_workers} loader workers; fast: amp "
          f"{str(amp).replace('torch.', '') if amp else 'off (float32)'}, "
          f"{args.workers} loader workers; TF32 (PyTorch's settings, unchanged): convolutions "
          f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'}, matmuls "
          f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}; peak memory: "
          f"{'allocated on the GPU' if device.type == 'cuda' else 'resident set of this process'}", flush=True)

    try:
        rows = measure_training(args, device)
    finally:
        torch.backends.cudnn.benchmark = benchmark
    torch.backends.cudnn.benchmark = True
    try:
        measure_shares(args, device, rows)
        times, extract = eval_timing(args, device)
    finally:
        torch.backends.cudnn.benchmark = benchmark
    print("\nevaluation:")
    for k, v in times.items():
        print(f"  {k}: {v:.3f} s")
    for (half, size), r in extract.items():
        print(f"  feature extraction {'bf16/fp16' if half else 'fp32'}, batch {size}: {r:.0f} img/s "
              f"(SYSU trial, 3803+301 images: {4104 / r:.1f} s; RegDB split, 4120 images: {4120 / r:.1f} s)")
    print_run_prediction(args, rows, times, extract)
    return rows


def measure_training(args, device):
    """{(reference|fast, synthetic|pipeline): (img/s, ms/step, peak MiB, mean loss)}, printed as measured."""
    folder = tempfile.mkdtemp(prefix="bench-")
    rows = {}
    try:
        args.data_folder = folder
        write_training_set(folder, args, device)
        configs = [("reference", measure_reference), ("fast", measure_fast)] + [
            (f"fast {m}", lambda a, d, s, m=m: measure_fast(a, d, s, m)) for m in args.method if m != "hctri"]
        for label, measure in configs:
            for source in ("synthetic", "pipeline"):
                rate, ms, peak, loss_value = rows[label, source] = measure(args, device, source)
                release(device)
                print(f"{label:12s} {source:9s}: {rate:8.1f} img/s  {ms:8.1f} ms/step  peak {peak:8.0f} MiB  "
                      f"(mean loss {loss_value:.3f})", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print("\nspeed-up, fast / reference:")
    for source in ("synthetic", "pipeline"):
        print(f"  {source:9s}: {rows['fast', source][0] / rows['reference', source][0]:.2f}x")
    for label in ("reference", "fast"):
        print(f"  {label} pipeline / synthetic: "
              f"{100 * rows[label, 'pipeline'][0] / rows[label, 'synthetic'][0]:.0f}%")
    print(f"fast path: step {args.step_line}; data {args.data_line}")
    return rows


def measure_shares(args, device, rows):
    """The per-process share of a step of N processes, for each N of --processes: the fast step of P/N
    identities (synthetic batches: compute alone), measured on this one device, and the SYSU-MM01
    epoch it predicts on N such devices. A prediction: the gathering of the outputs and the gradient
    all-reduce are not in it, and its loss is on the share's rows (the real one, on the gathered
    batch, costs a little more)."""
    if not args.processes:
        return
    steps, full = 22258 // (args.batch_size * args.num_pos), rows["fast", "synthetic"][1]
    print(f"\nper-process share of a step with N processes (fast path, synthetic batches; 1 process: {full:.1f} "
          f"ms/step, a SYSU-MM01 epoch of {steps} steps {steps * full / 1000:.0f} s):")
    for n in args.processes:
        share = argparse.Namespace(**{**vars(args), "share_ids": args.batch_size // n})
        ms = measure_fast(share, device, "synthetic")[1]
        release(device)
        print(f"  N={n}: {args.batch_size // n} identities ({2 * args.batch_size // n * args.num_pos} images) per "
              f"process: {ms:.1f} ms/step, {100 * ms / full:.0f}% of the 1-process step; predicted SYSU-MM01 epoch "
              f"on {n} devices: {steps * ms / 1000:.0f} s (a prediction: communication not included)", flush=True)


def print_run_prediction(args, rows, times, extract):
    """The fast path's figures as the time of a SYSU-MM01 epoch and of the paper's whole run: 61 epochs
    of 22,258 // (P*K) steps, evaluated (query 3803 + gallery 301 images, fp32, batch 128 as
    train_mine.py extracts) at epochs 10, 12, ..., 60."""
    steps = 22258 // (args.batch_size * args.num_pos)
    epoch = steps * rows["fast", "pipeline"][1] / 1000
    batch = min((size for half, size in extract if not half), key=lambda s: abs(s - 128))
    evaluation = 4104 / extract[False, batch] + times["SYSU trial metrics (3803x301)"]
    evals = len(range(10, 61, 2))
    print(f"\nSYSU-MM01 with the fast path through the pipeline: an epoch of {steps} steps "
          f"{epoch:.0f} s; 61 epochs + {evals} evaluations ({evaluation:.1f} s each): "
          f"{(61 * epoch + evals * evaluation) / 60:.1f} min")


if __name__ == "__main__":
    options = get_args_parser().parse_args()
    try:
        failed = main(options)
    except (ValueError, RuntimeError, OSError) as e:
        raise SystemExit(f"error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")
    if options.check and failed:
        raise SystemExit(1)
