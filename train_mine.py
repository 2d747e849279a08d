"""Train the two-stream network with the ID + hetero-center triplet loss (Liu et al., TMM 2021),
the authors' follow-up DGTL (Liu et al., SPL 2021), or the AGW baseline that their code extends
(Ye et al., TPAMI 2021).

    python train_mine.py --dataset sysu --data_path /data/SYSU-MM01          # the paper's SYSU setting
    python train_mine.py --dataset regdb --data_path /data/RegDB --trial 3   # the paper's RegDB setting
    python train_mine.py --dataset llcm --data_path /data/LLCM               # LLCM (the SYSU setting)
    python train_mine.py --method dgtl --dataset regdb --data_path ...       # DGTL's published setting
    python train_mine.py --method agw --dataset sysu --data_path ...         # AGW's
    python train_mine.py --dataset demo                                      # generated data, CPU, minutes
    torchrun --nproc_per_node=4 train_mine.py --dataset sysu --data_path ... # all GPUs of a node

Every flag left out takes the published value of the chosen dataset and method (settings.DATASETS,
settings.METHODS); the first log line shows every value in effect.
"""
import argparse
import datetime
import gc
import hashlib
import json
import os
import shlex
import socket
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

import checkpoints
import data_loader
import demo_data
import eval_metrics
import fileio
import flags
import settings
import utils

def get_args_parser(add_help=True):
    parser = argparse.ArgumentParser(description="Train a VT Re-ID model (HcTri / PCB / share_net, or DGTL)",
                                     add_help=add_help)
    return flags.add_groups(parser, settings.training_flags())


# ----------------------------------------------------------------------------- settings

def run_name(args):
    """A readable name plus a hash of every experiment flag: different experiments never share files."""
    # the split is in the readable name, not in the hash: one {trial} template names every split's run
    later = settings.later_flags()
    values = {k: getattr(args, k, None) for k in settings.experiment_flags() if k != "trial" and
              not (k in later and getattr(args, k, None) in (None, later[k]))}
    values["data_path"] = os.path.abspath(values["data_path"]) if values["data_path"] else None
    digest = hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]
    split = f"_trial{args.trial}" if settings.DATASETS[args.dataset].splits else ""  # the authors' file names
    arch = "" if args.arch == "resnet50" else f"_{args.arch}"
    tag = settings.METHODS[args.method].tag(args)
    return f"{args.dataset}{split}_{tag}{arch}_share{args.share_net}_p{args.batch_size}k{args.num_pos}" \
           f"_seed{args.seed}_{digest}"


def resume_flags(args, explicit, ckpt):
    """Take the experiment flags left out from the checkpoint; return notes on those given explicitly."""
    saved, notes = {**settings.later_flags(), **ckpt.get("args", {})}, []
    saved["method"], legacy = settings.recorded_method(ckpt.get("args", {}))
    if legacy:
        if "method" in explicit and args.method != saved["method"]:
            raise ValueError(f"--method {args.method}: the checkpoint {args.resume} {legacy}; it resumes only as "
                             f"it ran (leave --method out)")
        notes.append(f"resume: {args.resume} {legacy}; it resumes as --method wrt, exactly as it ran")
    locked = settings.locked_flags()
    for key in settings.experiment_flags():
        if key not in saved or saved[key] is None:
            continue
        if key not in explicit:
            setattr(args, key, saved[key])
        elif getattr(args, key) != saved[key]:
            if key in locked:
                raise ValueError(f"--{key} {getattr(args, key)}: the checkpoint {args.resume} was trained with "
                                 f"--{key} {saved[key]}, and a resumed run keeps its dataset, split and "
                                 f"architecture (leave --{key} out)")
            notes.append(f"resume: --{key} {getattr(args, key)} as given (the checkpoint's run had {saved[key]!r})")
    return notes


def prepare_run(args):
    """Resolve and check every setting before any work: (checkpoint or None, run name, notes to log)."""
    explicit = {k for k in settings.experiment_flags() if getattr(args, k, None) is not None}
    ckpt, notes = None, []
    if args.resume:
        ckpt = checkpoints.load_checkpoint(args.resume)
        if not isinstance(ckpt, dict) or "optimizer" not in ckpt or checkpoints.network_key(ckpt) is None:
            raise ValueError(f"--resume {args.resume}: not a training checkpoint of this project (checkpoints "
                             f"of the original code can be evaluated with test_mine.py, not resumed)")
        notes = resume_flags(args, explicit, ckpt)
    settings.resolve_training(args, explicit)
    notes += [line for line in [settings.combination_note(args, explicit)] if line]
    name = run_name(args)
    if ckpt is not None:
        name = ckpt.get("name") or os.path.basename(args.resume).rsplit("_", 1)[0]
        if args.model_path is None:
            args.model_path = os.path.dirname(args.resume) or "."
    args.model_path = args.model_path or "save_model/"
    for folder, flag in ((args.model_path, "--model_path"), (args.log_path, "--log_path")):
        if folder:
            fileio.check_output_dir(folder, flag)
    if args.log_path:  # the run's log (appended to) and TensorBoard folder, else they fail after the data is read
        log_file = os.path.join(args.log_path, name + ".log")
        if os.path.lexists(log_file) and not os.path.isfile(log_file):
            raise ValueError(f"--log_path: {log_file}, the run's log, exists and is not a file; choose another "
                             f"--log_path")
        fileio.check_output_dir(os.path.join(args.log_path, "tb", name), "--log_path")
    check_run_files(args, name, ckpt)
    if ckpt is not None and ckpt["epoch"] + 1 >= args.epochs:
        raise ValueError(f"--resume {args.resume}: its run has finished epoch {ckpt['epoch']} of --epochs "
                         f"{args.epochs}; pass a larger --epochs to train on")
    return ckpt, name, notes


def check_run_files(args, name, ckpt):
    """A fresh run never writes over a run's checkpoints, nor a resumed one over a later epoch of its own."""
    own = ckpt is not None and os.path.abspath(os.path.dirname(args.resume)) == os.path.abspath(args.model_path)
    taken = [p for p in checkpoint_paths(args.model_path, name).values() if os.path.exists(p)]
    if taken and not own:
        last = shlex.quote(checkpoint_paths(args.model_path, name)["last"])
        if ckpt is None:
            raise ValueError(f"{taken[0]} already holds a run with these settings: continue it with --resume "
                             f"{last}, or write elsewhere with --model_path DIR (nothing was overwritten)")
        raise ValueError(f"--model_path {args.model_path}: {taken[0]} already holds run {name}, which resuming "
                         f"{args.resume} there would write over: continue that copy with --resume {last}, or give "
                         f"another --model_path (nothing was overwritten)")
    last = checkpoint_paths(args.model_path, name)["last"]
    if own and os.path.exists(last) and not os.path.samefile(last, args.resume):  # e.g. --resume X_best.pth
        later = checkpoints.load_checkpoint(last).get("epoch", -1)
        if later > ckpt["epoch"]:
            raise ValueError(f"--resume {args.resume}: continuing from its epoch {ckpt['epoch']} would write over "
                             f"{last}, which holds epoch {later} of the same run; resume from that file, or "
                             f"give --model_path DIR to branch from epoch {ckpt['epoch']} elsewhere")


def checkpoint_paths(folder, name):
    return {k: os.path.join(folder, f"{name}_{k}.pth") for k in ("best", "last")}


# ----------------------------------------------------------------------------- schedule and optimiser

def learning_rate(epoch, lr, warmup=10, steps=(20, 50)):
    """The paper's schedule: linear warm-up over 10 epochs, then x0.1 at epoch 20 and again at 50."""
    if epoch < warmup:
        return lr * (epoch + 1) / warmup
    return lr * 0.1 ** sum(epoch >= s for s in steps)


def adjust_learning_rate(optimizer, epoch, lr, warmup=10, steps=(20, 50), backbone_mult=0.1):
    """Backbone group at backbone_mult (0.1) x, the full-rate group at 1x the scheduled rate."""
    rate = learning_rate(epoch, lr, warmup, steps)
    optimizer.param_groups[0]["lr"] = backbone_mult * rate
    for group in optimizer.param_groups[1:]:
        group["lr"] = rate
    return rate


def schedule(args):
    """adjust_learning_rate's keyword arguments from the flags."""
    return dict(warmup=args.warmup_epochs, steps=settings.parse_lr_steps(args.lr_steps),
                backbone_mult=args.backbone_lr_mult)


def build_optimizer(model, args):
    """The method's two parameter groups (backbone at --backbone_lr_mult, the full-rate group at 1x), from
    resolved settings."""
    full = [p for p in settings.METHODS[args.method].full_rate_params(model) if p.requires_grad]
    full_ids = {id(p) for p in full}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in full_ids]
    groups = [{"params": backbone, "lr": args.backbone_lr_mult * args.lr}, {"params": full, "lr": args.lr}]
    # torch's default implementation: foreach on CUDA, the per-tensor loop on the CPU. fused=True
    # (one kernel) waits for a GPU measurement: torch keeps foreach the default because fused is the
    # newer implementation (torch.optim's documentation; pytorch/pytorch#95241), and a failure of the
    # optimiser step is outside the compiled step's fall-back
    if args.optim == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay, nesterov=True)
    return torch.optim.Adam(groups, lr=args.lr, weight_decay=args.weight_decay)


def build_model(num_classes, args, pretrained):
    method = settings.METHODS[args.method]
    return method.model(num_classes, pretrained=pretrained, **method.config(args))


# ----------------------------------------------------------------------------- precision and speed

def amp_dtype(amp, device):
    """The autocast dtype for --amp, or None for full precision. auto: bf16 (fp16 where bf16 is missing)
    on GPUs; full precision on CPUs, where bf16 was seen to give NaN losses from the first steps
    (oneDNN's AMX kernels) and, without native bf16, is slower than float32 anyway."""
    if amp in ("auto", None):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    if amp == "off":
        return None
    if amp in ("bf16", "fp16"):
        return torch.bfloat16 if amp == "bf16" else torch.float16
    raise ValueError(f"--amp must be auto, bf16, fp16 or off, got {amp}")


def dtype_name(dtype):
    return str(dtype).replace("torch.", "") if dtype else "off (float32)"


def compile_mode(args, device):
    """(torch.compile mode or None for eager, a line for the log)."""
    mode, line = resolve_compile(args, device)
    if mode is None and args.compile_backend:
        raise ValueError(f"--compile_backend {args.compile_backend}: the step runs {line}; leave it out, or pass "
                         f"--compile default")
    return mode, line


def resolve_compile(args, device):
    if args.compile == "off":
        return None, "eager (--compile off)"
    if args.compile != "auto":
        return args.compile, f"torch.compile mode {args.compile}, backend {args.compile_backend or 'inductor'}"
    if device.type != "cuda":
        return None, "eager (CUDA graphs need a CUDA device)"
    if args.world_size > 1:
        return None, "eager (CUDA graphs are used in single-process runs; --compile reduce-overhead to try)"
    try:
        from torch.utils._triton import has_triton
        triton = has_triton()
    except ImportError:
        triton = False
    if not triton:
        return None, "eager (torch.compile needs Triton on CUDA, and it is not installed)"
    return "reduce-overhead", "CUDA graphs (torch.compile mode reduce-overhead)"


# --compile_backend -> torch.compile's backend: inductor (the default: generated kernels, CUDA graphs
# with mode reduce-overhead) or aot_eager (the same graph capture and autograd split, run by eager
# kernels: bit-identical to eager, no C++ compiler needed, what isolates an inductor failure)
BACKENDS = {name: name for name in flags.BY_NAME["compile_backend"].choices}
WARMUP_STEPS = 3  # compiled steps during which any failure falls back to eager (compile, capture, re-record)


def dynamo_counts():
    """{'graphs', 'cudagraph_skips'}: torch.compile's process-wide counters so far (0 where absent)."""
    try:
        from torch._dynamo.utils import counters
        return {"graphs": counters["stats"].get("unique_graphs", 0),
                "cudagraph_skips": counters["inductor"].get("cudagraph_skips", 0)}
    except (ImportError, KeyError, AttributeError):
        return {"graphs": 0, "cudagraph_skips": 0}


def recompile_reasons():
    """Why torch.compile recompiled so far: the guard failures it records, oldest first."""
    try:
        from torch._dynamo.utils import guard_failures
        return [reason for reasons in list(guard_failures.values()) for reason in reasons]
    except (ImportError, AttributeError):
        return []


def out_of_memory(e):
    """Whether e is an allocator's out-of-memory error (CUDA's class, or the CPU allocator's message)."""
    oom = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(e, MemoryError) or (oom and isinstance(e, oom)) or "out of memory" in str(e).lower() or \
        "can't allocate memory" in str(e).lower()


def memory_line(device):
    if device.type != "cuda":
        return "on the CPU"
    free, total = torch.cuda.mem_get_info(device)
    return (f"{torch.cuda.memory_allocated(device) / 2 ** 30:.2f} GiB allocated, "
            f"{torch.cuda.memory_reserved(device) / 2 ** 30:.2f} GiB reserved, {free / 2 ** 30:.2f} of "
            f"{total / 2 ** 30:.2f} GiB free on {device}")


class CompiledModel:
    """The model under torch.compile (fullgraph: a graph break is a failure, never a silent slow path),
    falling back to the eager model, with a one-line note, if any step fails during warm-up: a
    missing or broken compiler never stops a run. train()/eval() reach the eager model (evaluation
    itself runs the eager model: its batch shapes differ from training's)."""

    def __init__(self, model, mode, log=print, backend="inductor"):
        self.eager, self.mode, self.log, self.backend = model, mode, log, backend
        options = dict(mode=mode) if backend == "inductor" else {}
        self.compiled = torch.compile(model, backend=BACKENDS[backend], fullgraph=True, **options)
        self.steps, self.start, self.base, self.warm, self.warm_reasons = 0, None, dynamo_counts(), None, 0

    def run_step(self, fn, last=False):
        """fn(model): one training step's forward and backward. During the first WARMUP_STEPS
        compiled steps any exception (the forward, the backward compiled lazily after the forward
        has updated the batch-norm statistics, a CUDA-graph capture) is a compile failure: once out
        of the except block, with the failed attempt's tensors gone, the compiler is reset, the
        statistics restored and the step rerun eagerly (an error that also happens eagerly is then
        raised as itself). An out-of-memory error is reported as such and never retried."""
        if self.compiled is None or self.steps >= WARMUP_STEPS:
            return fn(self)
        self.start = self.start or time.time()
        saved, failure = self.buffers_copy(), None
        try:
            out = fn(self)
        except Exception as e:
            if out_of_memory(e):
                device = next(self.eager.parameters()).device
                raise MemoryError(f"out of memory in compiled training step {self.steps} "
                                  f"({memory_line(device)}): lower --batch-size or --num_pos, or try "
                                  f"--resident_data off or --compile off") from None
            failure = f"{type(e).__name__}: {first_line(e)}"  # a string: the traceback's frames are freed
        if failure is not None:
            self.fall_back(failure, saved)
            return fn(self)
        self.steps += 1
        if self.steps == WARMUP_STEPS or (last and self.warm is None):
            self.log_warm()
        return out

    def log_warm(self):
        """What compilation and capture cost, and the graphs they made (a short run: at its last step)."""
        if next(self.eager.parameters()).is_cuda:
            torch.cuda.synchronize()
        self.warm = self.counts()
        self.warm_reasons = len(recompile_reasons())
        self.log(f"{self.mode or self.backend} compilation and capture: {time.time() - self.start:.1f} s "
                 f"(steps 0..{self.steps - 1}, paid once per run); {self.health(self.warm)}")
        self.steps = WARMUP_STEPS

    def counts(self):
        """dynamo_counts() since this model was built."""
        return {k: v - self.base[k] for k, v in dynamo_counts().items()}

    def health(self, now):
        skips = (f"; CUDA graphs skipped for {now['cudagraph_skips']} graph(s) (TORCH_LOGS=perf_hints says why)"
                 if now["cudagraph_skips"] else "")
        return f"{now['graphs']} graph(s){skips}"

    def log_end(self):
        """The graph health at the end of the run: a recompile after warm-up is named."""
        if self.compiled is None or self.warm is None:
            return
        now = self.counts()
        again = now["graphs"] - self.warm["graphs"]
        why = "; ".join(recompile_reasons()[self.warm_reasons:][-3:]) or "TORCH_LOGS=recompiles says why"
        self.log(f"compiled step at the end: {self.health(now)}; " + (
            f"warning: {again} recompile(s) after warm-up ({why})" if again else "no recompile after warm-up"))

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            return self.eager(*args, **kwargs)
        if self.mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # a new training step: earlier outputs may be reused
        return self.compiled(*args, **kwargs)

    def buffers_copy(self):
        return {k: b.detach().clone() for k, b in self.eager.named_buffers()}

    def fall_back(self, failure, buffers=None):
        """Drop the compiled model and everything it holds (graphs, CUDA-graph memory pool), restore
        the batch-norm statistics of the failed step, note why."""
        self.compiled = None
        reset_compiler()
        if buffers:
            with torch.no_grad():
                for k, b in self.eager.named_buffers():
                    b.copy_(buffers[k])
        self.log(f"note: torch.compile failed ({failure}); training eager from here on")

    def train(self, mode=True):
        self.eager.train(mode)
        return self

    def eval(self):
        return self.train(False)


def reset_compiler():
    """A clean compiler state: compiled graphs, CUDA-graph trees and their memory pool freed."""
    torch._dynamo.reset()
    # only trees that exist need freeing: importing torch._inductor to find none costs seconds
    trees = sys.modules.get("torch._inductor.cudagraph_trees")
    if trees is not None and hasattr(trees, "reset_cudagraph_trees"):
        trees.reset_cudagraph_trees()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def first_line(e):
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""


# ----------------------------------------------------------------------------- training

def epoch_seed(*keys):
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


class TrainingStep(torch.nn.Module):
    """The step's math, the model and its loss together, so that torch.compile makes one graph of
    both (the loss is ~300 small kernels otherwise launched between two graphs): the forward under
    autocast, the losses in float32 outside it. Returns {'loss', the loss's named terms}; the loss is
    given the modality of every sample (the visible images first, then the thermal ones), which holds
    for CAJ's joint batch (two visible copies per thermal image) too. gather (several processes): the
    loss sees the whole global batch (global_batch), as one process would."""

    def __init__(self, model, criterion, dtype, looped_head=False, gather=False):
        super().__init__()
        self.model, self.criterion, self.dtype, self.looped_head = model, criterion, dtype, looped_head
        self.gather = gather

    def forward(self, v, t, labels):
        with torch.autocast(v.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            out = self.model(v, t, looped_head=True) if self.looped_head else self.model(v, t)
        modality = utils.modality_column(len(v), len(t), v.device)
        if self.gather:
            out, labels, modality = global_batch(out, labels, modality, len(t))
        loss, terms = self.criterion(out, labels, modality)
        return {"loss": loss, **terms}


def global_batch(out, labels, modality, segment):
    """The training outputs (every tensor with a batch axis), labels and modality of every process,
    as the one process of a 1-process run would have them. Each process's rows are blocks of
    `segment` rows (its P/N identities x K images: the visible block, the thermal block; CAJ's
    [visible; visible copy; thermal]; three such [visible; thermal] for a method that expands its
    batch), so block s of every process, in rank order, then block s + 1, is the 1-process order."""
    out = {k: gather_rows(x, segment, k) if torch.is_tensor(x) and x.dim() else x for k, x in out.items()}
    return out, gather_rows(labels, segment, "labels"), gather_rows(modality, segment, "modality")


def gather_rows(x, segment, name):
    """x [..., R, D] (the losses' layout: a leading strip axis is allowed) or [R] of this process ->
    [..., N*R, D] or [N*R], reordered as global_batch says, with gradients (GatherRows)."""
    axis = -2 if x.dim() >= 2 else 0
    rows = x.shape[axis]
    if rows % segment:
        raise ValueError(f"training output {name!r} has {rows} rows on its batch axis (dim {axis}), not a "
                         f"multiple of the {segment} rows of a process's thermal images: the outputs of a "
                         f"method must be [..., rows, D] with rows in blocks of the batch's images")
    y = GatherRows.apply(x.movedim(axis, 0))  # [N, R, ...]
    y = y.unflatten(1, (rows // segment, segment)).transpose(0, 1).flatten(0, 2)
    return y.movedim(0, axis)


class GatherRows(torch.autograd.Function):
    """[R, ...] of every process stacked, [N, R, ...]; backward: the sum of every process's gradient
    of this process's rows. Every process computes the same global loss, so that sum is N times the
    1-process gradient of these rows, and DDP's average over the processes makes it the 1-process
    gradient of every parameter. (torch.distributed.nn.functional.all_gather does the same, and warns
    that it is deprecated in recent torch.)"""

    @staticmethod
    def forward(ctx, y):
        parts = [torch.empty_like(y, memory_format=torch.contiguous_format) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, y.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def train_step(step, optimizer, scaler, batch, augment, device, last=False):
    """One optimisation step of a TrainingStep (or its CompiledModel); returns its named values as
    device tensors (no synchronisation; under CUDA graphs they are the graph's outputs, which
    MetricLogger.add copies before the next replay)."""
    v, t, labels = (x.to(device, non_blocking=True) for x in batch)
    if v.dtype == torch.uint8:
        v, t, labels = augment(v, t, labels)
    v = v.contiguous(memory_format=torch.channels_last)
    t = t.contiguous(memory_format=torch.channels_last)

    def forward_backward(m):
        values = m(v, t, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(values["loss"]).backward()
        return values
    values = step.run_step(forward_backward, last) if isinstance(step, CompiledModel) else forward_backward(step)
    scaler.step(optimizer)
    scaler.update()
    return values


def check_finite(names, rows, epoch, step):
    """A non-finite loss term among the last len(rows) steps stops the run, naming the step."""
    bad = (~torch.isfinite(rows)).any(1).nonzero()
    if len(bad):
        first = int(bad[0, 0])
        raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {step - len(rows) + 1 + first} "
                                 f"({names[0]} {rows[first, 0]:.4g}): lower --lr or try --amp off")


def train_one_epoch(model, optimizer, scaler, loader, augment, device, epoch, args, show=True, tb=None):
    """One epoch of model, a TrainingStep (or its CompiledModel); returns the mean of every named value
    the loss gives ('loss', 'id', 'tri', 'acc', ...), images/s and seconds. Ctrl-C comes out as
    KeyboardInterrupt('epoch E, step S')."""
    model.train()
    # augmentation randomness from (seed, epoch, rank): a resumed or distributed run draws its own
    torch.manual_seed(epoch_seed(args.seed, epoch, args.rank))
    if getattr(loader, "generator", None) is not None:  # the workers' seeds (per-image augmentation)
        loader.generator.manual_seed(epoch_seed(args.seed, epoch, args.rank, 1))
    metrics, images, start, step = utils.MetricLogger(), 0, time.time(), 0
    steps = len(loader) if not args.steps_per_epoch else min(len(loader), args.steps_per_epoch)
    bar = tqdm(total=steps, desc=f"epoch {epoch}", disable=not show, mininterval=1.0, dynamic_ncols=True)
    try:
        for step, batch in enumerate(loader):
            if step >= steps:
                break
            metrics.add(train_step(model, optimizer, scaler, batch, augment, device, last=step == steps - 1))
            images += batch[2].numel() * getattr(args, "world_size", 1)  # every process's images
            if len(metrics.pending) == args.print_freq or step == steps - 1:
                rows = metrics.flush()
                check_finite(metrics.names, rows, epoch, step)
                bar.set_postfix_str(f"{metrics.format(3)} lr {optimizer.param_groups[-1]['lr']:.2g} "
                                    f"img/s {images / (time.time() - start):.0f}")
                bar.update(len(rows))
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"epoch {epoch}, step {step}") from None
    bar.close()
    stats = metrics.averages
    stats["seconds"] = max(time.time() - start, 1e-9)
    stats["img_s"] = images / stats["seconds"]
    if tb is not None:
        for k, x in stats.items():
            tb.add_scalar(f"train/{k}", x, epoch)
        tb.add_scalar("train/lr", optimizer.param_groups[-1]["lr"], epoch)
    return stats


def build_train_data(args):
    return settings.DATASETS[args.dataset].train_data(args)


def build_batches(data, sampler, args, device):
    """(iterable of (visible, thermal, labels) batches, a line for the log): gathered on the device
    from a resident copy of the training set, or read by DataLoader workers into pinned memory."""
    size = (data.visible.nbytes + data.thermal.nbytes) / 2 ** 30
    if args.resident_data == "auto":
        resident, why = False, "the CPU gathers batches in memory itself"
        if args.cpu_aug:
            why = "--cpu_aug transforms each image in the loader's workers"
        elif device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            resident = size <= 0.25 * total / 2 ** 30 and size + 8 <= free / 2 ** 30
            why = f"rule: at most 25% of the device's {total / 2 ** 30:.0f} GiB, leaving 8 GiB free"
    else:
        resident, why = args.resident_data == "on", f"--resident_data {args.resident_data}"
    if resident:
        return data_loader.ResidentBatches(data, sampler, device), \
            f"training set resident on {device} ({size:.2f} GiB; {why})"
    transform = data_loader.per_image_train_transform(args.img_h, args.img_w, args.pad) if args.cpu_aug else None
    # its own generator (reseeded every epoch by train_one_epoch): the loader then draws nothing from the
    # global one, whose stream the device-side augmentation uses, so both data paths crop alike
    loader = DataLoader(data_loader.BatchData(data, transform), sampler=sampler, batch_size=None,
                        num_workers=args.workers, pin_memory=device.type == "cuda",
                        # workers draw their seeds when they start: with the per-image transform they must
                        # restart every epoch for its reseeding (and an exact resume) to reach them
                        persistent_workers=args.workers > 0 and transform is None,
                        prefetch_factor=4 if args.workers > 0 else None,
                        generator=torch.Generator())
    return loader, f"loader with {args.workers} worker(s) ({size:.2f} GiB of images; {why})"


def build_evaluator(args):
    """The dataset's evaluator at its test flags' defaults: the training split's, else gallery trial 0."""
    dataset = settings.DATASETS[args.dataset]
    s = settings.with_test_flags(args)
    s.workers = max(args.workers, 1)
    return dataset.evaluator(s, [args.trial] if dataset.splits else [0], args.img_w, args.img_h)


def evaluate(model, evaluator, device, args):
    """{feature: (cmc, mAP, mINP)} on the in-training search (SYSU gallery trial 0, the RegDB split's
    visible->thermal, LLCM infrared->visible trial 0); the first feature is the one that selects the
    kept checkpoint (DGTL: the coarse one)."""
    return evaluator.run_first(model, device, args.test_batch)


# How long the other processes wait for rank 0 alone (generating the demo, evaluating, saving): far
# beyond any evaluation (NCCL's default timeout, 10 minutes, is not). A process that dies ends the wait
# at once (its peers' connections close).
WAIT_TIMEOUT_HOURS = 24
_wait_group = None  # the gloo group of those waits (torchrun), made by init_distributed


def init_distributed(args):
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK (LOCAL_RANK: the device on this machine; RANK: the
    process among all machines, 0 the one that writes); a plain run is rank 0 of 1."""
    global _wait_group
    args.world_size = int(os.environ.get("WORLD_SIZE", 1))
    args.rank = int(os.environ.get("RANK", 0))
    args.local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if args.world_size > 1:
        use_cuda = str(args.gpu).lower() != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(args.local_rank)
            args.gpu = str(args.local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        # the training collectives keep the default timeout, which finds a hung process sooner
        _wait_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=WAIT_TIMEOUT_HOURS))
    return args


def agreed(args, fn):
    """fn()'s result, fn being run in every process, which then wait for each other (as long as
    rank 0 may take alone: WAIT_TIMEOUT_HOURS): an error in one process is raised in all of them,
    in one line naming the process (rank, machine) unless all had it, so none is left waiting."""
    try:
        result, error = fn(), None
    except Exception as e:  # noqa: BLE001 -- any error: the other processes must hear of it
        result, error = None, e
    if args.world_size == 1:
        if error is not None:
            raise error
        return result
    errors = [None] * args.world_size
    mine = None if error is None else (str(error).strip() or type(error).__name__)
    dist.all_gather_object(errors, (socket.gethostname(), mine), group=_wait_group)
    failed = [(rank, host, e) for rank, (host, e) in enumerate(errors) if e is not None]
    if not failed:
        return result
    if error is not None and not isinstance(error, (ValueError, OSError, KeyError)):
        raise error  # not one of the checks' errors: its traceback
    rank, host, text = failed[0]
    if len(failed) < args.world_size or len({e for _, _, e in failed}) > 1:
        error = ValueError(f"rank {rank} of {args.world_size} (on {host}): {text}")
    error.every_process = True  # every process raises it: rank 0 alone says it (__main__)
    raise error


def wait_for_rank0(args):
    """The other processes wait while rank 0 evaluates and saves (without the default timeout)."""
    if args.world_size > 1:
        dist.barrier(group=_wait_group)


def check_data(args, resuming=False):
    """Read every list the run needs (not the images) and check the stored training set and the
    initial weights (not needed to resume), so that a missing or broken dataset stops the run before
    any folder is made."""
    if not resuming and args.pretrained not in ("imagenet", "none") and not os.path.isfile(args.pretrained):
        raise FileNotFoundError(f"--pretrained: no such file: {args.pretrained} (expected 'imagenet', 'none' "
                                f"or a weights file)")
    settings.DATASETS[args.dataset].check(args)


def main(args):
    init_distributed(args)
    main_process = args.rank == 0
    device = utils.select_device(args.gpu)  # before prepare_run creates any folder
    if args.sync_bn and args.world_size > 1 and device.type != "cuda":
        raise ValueError("--sync_bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU kernel)")
    compile_mode(args, device)  # its errors before any folder is made
    ckpt, name, notes = agreed(args, lambda: prepare_run(args))  # e.g. --resume on a machine that lacks it
    if args.workers is None:
        args.workers = 4 if device.type == "cuda" else 0
    # one writer, the others waiting: made once on a file system the machines share, without a race
    agreed(args, lambda: demo_data.ensure_demo(args, notes.append) if main_process else None)  # logged first
    agreed(args, lambda: check_data(args, resuming=ckpt is not None))  # every machine reads its own copy
    lock = None
    try:
        if main_process:  # one writer per run: the lock, then the run's files checked again under it
            for folder, flag in ((args.model_path, "--model_path"), (args.log_path, "--log_path")):
                if folder:
                    fileio.make_output_dir(folder, flag)
            lock = fileio.RunLock(args.model_path, name)
            stale = lock.acquire()
            check_run_files(args, name, ckpt)
            notes = notes + ([f"note: took over the lock of run {name} from process {stale}, which is no longer "
                              f"running"] if stale else [])
            removed = [n for d in {args.model_path, args.log_path} if d for n in fileio.remove_dead_temps(d)]
            notes += [f"note: removed {len(removed)} temporary file(s) of killed runs: {', '.join(removed)}"] \
                if removed else []
        return run_logged(args, ckpt, name, notes, device)
    finally:
        if lock is not None:
            lock.release()
        if args.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def run_logged(args, ckpt, name, notes, device):
    """train() with its log: the file says why the run stopped (the screen gets it once, from the caller)."""
    log = print if args.rank == 0 else (lambda *a, **k: None)
    log_file = os.path.join(args.log_path, name + ".log") if args.log_path and args.rank == 0 else None
    if args.rank == 0:
        log = utils.get_logger(log_file).info
    try:
        return train(args, ckpt, name, notes, device, log)
    except KeyboardInterrupt as e:
        last = checkpoint_paths(args.model_path, name)["last"]
        how = (f"resume with: python train_mine.py --resume {shlex.quote(last)}" if os.path.exists(last) else
               "no checkpoint was written yet: run the command again")
        where = e.args[0] if e.args else "a point outside the training steps (loading, evaluating or saving)"
        raise Interrupted(f"interrupted at {where}; {how}") from None
    except Exception as e:
        if log_file:
            with open(log_file, "a") as f:
                f.write(f"error: {e}\n")
        raise


class Interrupted(Exception):
    """Ctrl-C, as one line saying where the run stopped and how to continue it."""


def train(args, ckpt, name, notes, device, log):
    main_process = args.rank == 0
    dtype = amp_dtype(args.amp, device)
    mode, step_line = compile_mode(args, device)
    log_settings(args, device, dtype, mode, notes, log)
    utils.set_seed(args.seed)
    data = build_train_data(args)
    sampler = data_loader.IdentitySampler(data.labels_v, data.labels_t, args.num_pos, args.batch_size,
                                          args.seed, args.rank, settings.METHODS[args.method].reproduction.extra_batch,
                                          args.world_size)
    batches, data_line = build_batches(data, sampler, args, device)
    augment = data_loader.BatchAugment(args.erasing_p, args.channel_aug, args.pad, args.caj_aug == "on",
                                       **settings.METHODS[args.method].augment(args))
    raw, optimizer, scaler, start_epoch, best = build_network(data.num_classes, args, ckpt, name, device, dtype, log)
    model = training_step(raw, args, device, dtype, mode, log)
    log(f"{args.dataset}: {data.num_classes} identities, {len(data.labels_v)} visible + {len(data.labels_t)} "
        f"thermal images of {data.image_size[0]}x{data.image_size[1]}; {len(sampler)} batches of "
        f"{args.batch_size}x{args.num_pos}x2 per epoch; {args.world_size} process(es) on {device}"
        + (f", {args.batch_size // args.world_size} identities each" if args.world_size > 1 else ""))
    log(f"step: {step_line}; data: {data_line}; amp: {dtype_name(dtype)}")
    evaluator = build_evaluator(args) if main_process else None
    # --log_path "": no files of the log, TensorBoard's included
    tb = tensorboard_writer(os.path.join(args.log_path, "tb", name)) if main_process and args.log_path else None
    paths = checkpoint_paths(args.model_path, name)
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        lr = adjust_learning_rate(optimizer, epoch, args.lr, **schedule(args))
        stats = train_one_epoch(model, optimizer, scaler, batches, augment, device, epoch, args,
                                show=main_process, tb=tb)
        terms = utils.format_values({k: v for k, v in stats.items() if k not in ("seconds", "img_s")})
        log(f"epoch {epoch}: {terms} lr {lr:.3g} {stats['img_s']:.1f} img/s {stats['seconds']:.1f} s")
        if main_process:
            metrics = evaluate_due(raw, evaluator, device, epoch, args, tb, log)
            state = {"model": raw.state_dict(), "network": raw.config, "optimizer": optimizer.state_dict(),
                     "scaler": scaler.state_dict(), "epoch": epoch, "args": vars(args),
                     "metrics": metrics, "train": stats, "best": best, "name": name}
            if metrics is not None and (metrics["rank1"] > best["rank1"] or (
                    settings.METHODS[args.method].reproduction.keep_ties and metrics["rank1"] == best["rank1"])):
                best = state["best"] = {**metrics, "epoch": epoch}
                utils.atomic_save(state, paths["best"])
                log(f"best Rank-1 so far: {metrics['rank1']:.2f}% -> {paths['best']}")
            utils.atomic_save(state, paths["last"])
        wait_for_rank0(args)
    if isinstance(model, CompiledModel):
        model.log_end()
    if main_process and best["epoch"] >= 0:
        log(f"best: epoch {best['epoch']}: {eval_metrics.format_row(best)}")
        log(f"checkpoint: {paths['best']}")
        log("re-evaluate with: " + test_command(args, paths["best"]))
    return best


def log_settings(args, device, dtype, mode, notes, log):
    """The values in effect ('auto' ones with what they resolved to on this machine), then the notes."""
    shown = dict(vars(args), gpu=f"{args.gpu or 'auto'} ({device})", amp=f"{args.amp} ({dtype_name(dtype)})",
                 compile=f"{args.compile} ({mode or 'eager'})")
    log("settings: " + " ".join(f"--{k} {v}" for k, v in sorted(shown.items()) if v is not None))
    for note in notes:
        log(note)
    torch.backends.cudnn.benchmark = True
    if device.type == "cpu" and dtype == torch.bfloat16 and utils.cpu_has_amx():
        log(f"warning: bf16 on a CPU with AMX: {utils.AMX_BF16}; --amp off is the safe choice")


def build_network(num_classes, args, ckpt, name, device, dtype, log):
    """(network on the device, optimiser, gradient scaler, first epoch, best so far), resumed from ckpt if given."""
    model = build_model(num_classes, args, "none" if ckpt else args.pretrained)
    optimizer = build_optimizer(model, args)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    start_epoch, best = 0, {"rank1": -1.0, "epoch": -1}
    if ckpt:
        checkpoints.load_weights(model, ckpt["model"], args.resume)
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt.get("scaler", {}))
        start_epoch, best = ckpt["epoch"] + 1, ckpt.get("best", best)
        log(f"resumed {name} from {args.resume} at epoch {start_epoch}")
    if args.sync_bn and args.world_size > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device).to(memory_format=torch.channels_last)
    for state in optimizer.state.values():  # resumed momentum buffers follow the model
        for k, v in state.items():
            if torch.is_tensor(v):
                state[k] = v.to(device)
    return model, optimizer, scaler, start_epoch, best


def training_step(raw, args, device, dtype, mode, log):
    """The network with the method's loss as one TrainingStep: across processes (DDP), compiled (mode)."""
    model = raw
    if args.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                          else None)
    model = TrainingStep(model, settings.METHODS[args.method].loss(args), dtype, args.looped_head,
                         gather=args.world_size > 1)
    return CompiledModel(model, mode, log, args.compile_backend or "inductor") if mode is not None else model


def evaluate_due(raw, evaluator, device, epoch, args, tb, log):
    """The reported feature's metrics where an evaluation is due at this epoch (every feature logged), else None."""
    last = epoch == args.epochs - 1
    if not ((epoch >= args.eval_start and (epoch - args.eval_start) % args.eval_every == 0) or last):
        return None
    metrics = None
    results = evaluate(raw, evaluator, device, args)
    for i, (feature, (cmc, mAP, mINP)) in enumerate(results.items()):
        row = eval_metrics.metrics_row(cmc, mAP, mINP)
        metrics = row if i == 0 else metrics
        log(f"epoch {epoch} eval{' ' + feature if len(results) > 1 else ''}: {eval_metrics.format_row(row)}")
    if tb is not None:
        for k, x in metrics.items():
            tb.add_scalar(f"eval/{k}", x, epoch)
    return metrics


def test_command(args, checkpoint):
    cmd = ["python", "test_mine.py", "--dataset", args.dataset, "--data_path", args.data_path, "--resume", checkpoint]
    if settings.DATASETS[args.dataset].splits:
        cmd += ["--trials", str(args.trial)]
    if args.gpu is not None:
        cmd += ["--gpu", str(args.gpu)]
    return shlex.join(cmd)


def tensorboard_writer(folder):
    """A SummaryWriter when the optional tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(folder)


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except (ValueError, FileNotFoundError, OSError, KeyError, FloatingPointError, MemoryError,
            Interrupted) as e:
        if getattr(e, "every_process", False) and int(os.environ.get("RANK", 0)) > 0:
            raise SystemExit(1) from None
        raise SystemExit(f"error: {e}")
    except KeyboardInterrupt:  # before training began (demo generation, the checks): nothing to resume
        raise SystemExit("error: interrupted before training began; run the command again")
