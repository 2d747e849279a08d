"""Train the two-stream network with the ID + hetero-center triplet loss (Liu et al., TMM 2021).

    python train_mine.py --dataset sysu --data_path /data/SYSU-MM01          # the paper's SYSU setting
    python train_mine.py --dataset regdb --data_path /data/RegDB --trial 3   # the paper's RegDB setting
    python train_mine.py --dataset demo                                      # generated data, CPU, minutes
    torchrun --nproc_per_node=4 train_mine.py --dataset sysu --data_path ... # all GPUs of a node

Every flag left out takes the published value of the chosen dataset (utils.DATASET_DEFAULTS).
"""
import argparse
import os
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

import data_loader
import loss as losses
import model_mine
import test_mine
import utils

# Flags that define the experiment: a resumed run takes them from its checkpoint.
EXPERIMENT_FLAGS = ("dataset", "trial", "img_w", "img_h", "arch", "share_net", "pcb", "local_feat_dim",
                    "num_strips", "gm_pool", "gem_p", "method", "margin", "w_center", "label_smooth", "optim",
                    "lr", "weight_decay", "backbone_lr_mult", "warmup_epochs", "lr_steps", "batch_size",
                    "num_pos", "seed", "pad", "erasing_p", "channel_aug", "eval_start", "eval_every", "mode")


def get_args_parser(add_help=True):
    parser = argparse.ArgumentParser(description="Train a VT Re-ID model (HcTri / PCB / share_net)",
                                     add_help=add_help)
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default="sysu", help="sysu | regdb | demo")
    g.add_argument("--data_path", default=None, help="dataset root (default for demo: data/demo)")
    g.add_argument("--trial", default=1, type=int, help="RegDB split 1..10")
    g.add_argument("--mode", default="all", help="SYSU evaluation during training: all | indoor")
    g.add_argument("--img_w", default=None, type=int, help="default 144 (demo 48)")
    g.add_argument("--img_h", default=None, type=int, help="default 288 (demo 96); a multiple of 16 x strips")
    g.add_argument("--workers", default=None, type=int,
                   help="data loading processes (default 4 on a GPU; 0 on the CPU, where batches are cheap)")
    g.add_argument("--pad", default=None, type=int,
                   help="zero padding before the random crop, px (default 10; demo 3: the same fraction of a "
                        "96x48 image, so that parts stay in their strips)")
    g.add_argument("--erasing_p", default=0.0, type=float, help="random erasing probability (off: 0)")
    g.add_argument("--channel_aug", default=0.0, type=float,
                   help="probability of the channel augmentation of Ye et al. ICCV 2021 (off: 0)")
    g.add_argument("--cpu_aug", action="store_true",
                   help="the authors' per-image PIL augmentation in the workers (slow; for comparisons)")
    g = parser.add_argument_group("model")
    g.add_argument("--arch", default="resnet50")
    g.add_argument("--share_net", default=2, type=int, help="0 all shared ... 5 nothing shared")
    g.add_argument("--pcb", default="on", help="on: part strips; off: global feature")
    g.add_argument("--local_feat_dim", default=256, type=int)
    g.add_argument("--num_strips", default=6, type=int)
    g.add_argument("--gm_pool", default="on", help="GeM pooling on | off")
    g.add_argument("--gem_p", default=None, type=float,
                   help="GeM power (default: PCB 10 RegDB, 3 SYSU; --pcb off 3)")
    g.add_argument("--pretrained", default=None, help="imagenet | none | PATH (default imagenet; demo none)")
    g = parser.add_argument_group("loss")
    g.add_argument("--method", default="hctri", help="hctri | batch-hard | agw | id-only")
    g.add_argument("--margin", default=0.3, type=float)
    g.add_argument("--w_center", default=None, type=float, help="weight of the strips' triplet losses")
    g.add_argument("--label_smooth", default=None, help="on | off")
    g = parser.add_argument_group("optimisation")
    g.add_argument("--optim", default=None, help="sgd | adam (default sgd; demo adam)")
    g.add_argument("--lr", default=None, type=float,
                   help="head learning rate, the backbone's is 0.1x (default 0.1 sgd, 3.5e-4 adam, demo 2e-3; "
                        "a default is multiplied by the number of processes)")
    g.add_argument("--weight_decay", default=5e-4, type=float)
    g.add_argument("--backbone_lr_mult", default=None, type=float,
                   help="backbone learning rate / head learning rate (default 0.1; demo 1, it starts from scratch)")
    g.add_argument("--warmup_epochs", default=None, type=int, help="linear warm-up epochs (default 10)")
    g.add_argument("--lr_steps", default=None, help="epochs where the rate drops x0.1 (default 20,50)")
    g.add_argument("--epochs", default=None, type=int, help="default 61 (epochs 0..60)")
    g.add_argument("--batch-size", "--batch_size", dest="batch_size", default=None, type=int,
                   help="P identities per batch")
    g.add_argument("--num_pos", default=None, type=int, help="K images per identity and modality")
    g.add_argument("--steps_per_epoch", default=0, type=int, help="cap on steps per epoch (0: a full epoch)")
    g = parser.add_argument_group("evaluation and checkpoints")
    g.add_argument("--eval_start", default=None, type=int, help="first epoch evaluated (default 10; demo 19)")
    g.add_argument("--eval_every", default=2, type=int, help="evaluate every N epochs from eval_start")
    g.add_argument("--test-batch", "--test_batch", dest="test_batch", default=128, type=int)
    g.add_argument("--model_path", default="save_model/", help="checkpoint folder")
    g.add_argument("--log_path", default="log/", help="log folder")
    g.add_argument("--resume", default="", help="continue from this checkpoint (its _last.pth)")
    g = parser.add_argument_group("speed and hardware")
    g.add_argument("--gpu", default="0", help="CUDA device index, or 'cpu'")
    g.add_argument("--amp", default="auto", help="auto | bf16 | fp16 | off (auto: bf16 on GPUs that have it, "
                                                  "else fp16; on the CPU bf16 where it is native, else off)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--looped_head", action="store_true", help="the authors' per-strip loop (for comparisons)")
    g.add_argument("--sync_bn", action="store_true", help="SyncBatchNorm across processes (torchrun)")
    g.add_argument("--seed", default=0, type=int)
    g.add_argument("--print_freq", default=10, type=int, help="steps between progress updates")
    return parser


def learning_rate(epoch, lr, warmup=10, steps=(20, 50)):
    """The paper's schedule: linear warm-up over 10 epochs, then x0.1 at epoch 20 and again at 50."""
    if epoch < warmup:
        return lr * (epoch + 1) / warmup
    return lr * 0.1 ** sum(epoch >= s for s in steps)


def adjust_learning_rate(optimizer, epoch, lr, warmup=10, steps=(20, 50), backbone_mult=0.1):
    """Backbone group at backbone_mult (0.1) x, head group at 1x the scheduled rate."""
    rate = learning_rate(epoch, lr, warmup, steps)
    optimizer.param_groups[0]["lr"] = backbone_mult * rate
    for group in optimizer.param_groups[1:]:
        group["lr"] = rate
    return rate


def schedule(args):
    """adjust_learning_rate's keyword arguments from the flags."""
    steps = tuple(int(x) for x in str(args.lr_steps).split(",") if x.strip())
    return dict(warmup=args.warmup_epochs, steps=steps, backbone_mult=args.backbone_lr_mult)


def build_optimizer(model, args):
    head = [p for p in model.head_parameters() if p.requires_grad]
    head_ids = {id(p) for p in head}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    mult = getattr(args, "backbone_lr_mult", None)
    mult = 0.1 if mult is None else mult  # an explicit 0 (a frozen backbone) stays 0
    groups = [{"params": backbone, "lr": mult * args.lr}, {"params": head, "lr": args.lr}]
    optim = args.optim or "sgd"
    if optim == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay, nesterov=True)
    if optim == "adam":
        return torch.optim.Adam(groups, lr=args.lr, weight_decay=args.weight_decay)
    raise ValueError(f"--optim must be sgd or adam, got {args.optim}")


def amp_dtype(amp, device):
    """The autocast dtype for --amp, or None for full precision."""
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # bf16 on CPUs with native bf16 arithmetic (about 1.5x faster on a Zen 4 core); elsewhere it
        # would be emulated, slower than float32
        return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None
    if amp == "off":
        return None
    if amp in ("bf16", "fp16"):
        return torch.bfloat16 if amp == "bf16" else torch.float16
    raise ValueError(f"--amp must be auto, bf16, fp16 or off, got {amp}")


def cpu_has_bf16():
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); False on torch builds that cannot tell."""
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None),
              getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(probe is not None and probe() for probe in probes)


def run_name(args):
    trial = f"_trial{args.trial}" if args.dataset != "sysu" else ""
    return (f"{args.dataset}{trial}_{args.method}_share{args.share_net}_pcb-{args.pcb}_p{args.batch_size}"
            f"k{args.num_pos}_w{args.w_center:g}_{args.optim}_lr{args.lr:g}_seed{args.seed}")


def epoch_seed(*keys):
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def train_one_epoch(model, criterion, optimizer, scaler, loader, augment, device, epoch, args, dtype,
                    show=True, tb=None):
    """One epoch; returns the mean loss, ID loss, triplet loss, triplet accuracy and images/s."""
    model.train()
    # augmentation randomness from (seed, epoch, rank): a resumed or distributed run draws its own
    torch.manual_seed(epoch_seed(args.seed, epoch, args.rank))
    meters = {k: utils.AverageMeter() for k in ("loss", "id", "tri", "acc")}
    pending, images, start = [], 0, time.time()
    steps = len(loader) if not args.steps_per_epoch else min(len(loader), args.steps_per_epoch)
    bar = tqdm(total=steps, desc=f"epoch {epoch}", disable=not show, mininterval=1.0, dynamic_ncols=True)
    for step, (v, t, labels) in enumerate(loader):
        if step >= steps:
            break
        v, t = v.to(device, non_blocking=True), t.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if v.dtype == torch.uint8:
            v, t = augment(v, t)
        v = v.contiguous(memory_format=torch.channels_last)
        t = t.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(v, t, looped_head=args.looped_head) if args.looped_head else model(v, t)
        loss, loss_id, loss_tri, acc = criterion(out, labels)  # losses in float32, outside autocast
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        pending.append(torch.stack([loss.detach(), loss_id.detach(), loss_tri.detach(), acc.detach().float()]))
        images += labels.numel()
        if len(pending) == args.print_freq or step == steps - 1:
            values = torch.stack(pending).cpu()  # the only synchronisation with the device
            bad = (~torch.isfinite(values[:, :3])).any(1).nonzero()
            if len(bad):
                raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {step - len(pending) + 1 + int(bad[0])}"
                                         f" (loss {values[bad[0, 0], 0]:.4g}): lower --lr or try --amp off")
            for row in values:
                for k, x in zip(meters, row.tolist()):
                    meters[k].update(x)
            rate = images / (time.time() - start)
            bar.set_postfix(loss=f"{meters['loss'].avg:.3f}", id=f"{meters['id'].avg:.3f}",
                            tri=f"{meters['tri'].avg:.3f}", acc=f"{100 * meters['acc'].avg:.1f}%",
                            lr=f"{optimizer.param_groups[-1]['lr']:.2g}", img_s=f"{rate:.0f}")
            bar.update(len(pending))
            pending = []
    bar.close()
    stats = {k: m.avg for k, m in meters.items()}
    stats["img_s"] = images / max(time.time() - start, 1e-9)
    if tb is not None:
        for k, x in stats.items():
            tb.add_scalar(f"train/{k}", x, epoch)
        tb.add_scalar("train/lr", optimizer.param_groups[-1]["lr"], epoch)
    return stats


def build_train_data(args):
    if args.dataset == "sysu":
        return data_loader.sysu_train_data(args.data_path, args.img_w, args.img_h)
    return data_loader.regdb_train_data(args.data_path, args.trial, args.img_w, args.img_h, max(args.workers, 1))


def build_evaluator(args):
    if args.dataset == "sysu":
        return test_mine.SYSUEval(args.data_path, args.mode, (0,), "single", args.img_w, args.img_h,
                                  max(args.workers, 1))
    return test_mine.RegDBEval(args.data_path, args.trial, args.img_w, args.img_h, max(args.workers, 1))


def evaluate(model, evaluator, device, args):
    """(cmc, mAP, mINP) on SYSU gallery trial 0 or the RegDB split's visible->thermal search."""
    if isinstance(evaluator, test_mine.SYSUEval):
        return evaluator.run(model, device, args.test_batch)[0][1:]
    return evaluator.run(model, device, args.test_batch)["visible->thermal"]


def init_distributed(args):
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; a plain run is rank 0 of 1."""
    args.world_size = int(os.environ.get("WORLD_SIZE", 1))
    args.rank = int(os.environ.get("RANK", 0))
    args.local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if args.world_size > 1:
        use_cuda = str(args.gpu).lower() != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(args.local_rank)
            args.gpu = str(args.local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return args


def resume_state(args, log):
    """Load a training checkpoint and take its experiment flags."""
    ckpt = utils.load_checkpoint(args.resume)
    if not isinstance(ckpt, dict) or "optimizer" not in ckpt or "arch" not in ckpt:
        raise ValueError(f"--resume {args.resume}: not a training checkpoint of this project (checkpoints "
                         f"of the original code can be evaluated with test_mine.py, not resumed)")
    saved = ckpt.get("args", {})
    for key in EXPERIMENT_FLAGS:
        if key in saved and getattr(args, key, None) != saved[key]:
            if getattr(args, key, None) is not None:
                log(f"resume: {key} = {saved[key]!r} from the checkpoint (not {getattr(args, key)!r})")
            setattr(args, key, saved[key])
    return ckpt


def main(args):
    init_distributed(args)
    main_process = args.rank == 0
    log = print if main_process else (lambda *a, **k: None)
    ckpt = resume_state(args, log) if args.resume else None
    lr_given = args.lr is not None
    utils.fill_dataset_defaults(args)
    if args.lr is None:
        args.lr = 0.1 if args.optim == "sgd" else 3.5e-4
    if not lr_given:
        args.lr *= args.world_size  # the linear scaling rule, for a default learning rate only
    if args.pcb == "on" and (args.img_h % 16 or args.img_h // 16 % args.num_strips):
        raise ValueError(f"--img_h {args.img_h}: the feature map (img_h/16 rows) must split into --num_strips "
                         f"{args.num_strips} strips; use a multiple of {16 * args.num_strips}")
    name = run_name(args)
    if main_process:
        logger = utils.get_logger(os.path.join(args.log_path, name + ".log"))
        log = logger.info
    log("settings: " + " ".join(f"--{k} {v}" for k, v in sorted(vars(args).items())))

    device = utils.select_device(args.gpu)
    if args.workers is None:
        args.workers = 4 if device.type == "cuda" else 0
    torch.backends.cudnn.benchmark = True
    dtype = amp_dtype(args.amp, device)
    utils.set_seed(args.seed)
    if main_process:
        test_mine.ensure_demo(args, log)
    if args.world_size > 1:
        dist.barrier()

    data = build_train_data(args)
    sampler = utils.IdentitySampler(data.labels_v, data.labels_t, args.num_pos, args.batch_size,
                                    args.seed, args.rank)
    transform = data_loader.per_image_train_transform(args.img_h, args.img_w, args.pad) if args.cpu_aug else None
    loader = DataLoader(data_loader.BatchData(data, transform), sampler=sampler, batch_size=None,
                        num_workers=args.workers, pin_memory=device.type == "cuda",
                        persistent_workers=args.workers > 0, prefetch_factor=4 if args.workers > 0 else None)
    augment = data_loader.BatchAugment(args.erasing_p, args.channel_aug, args.pad)
    log(f"{args.dataset}: {data.num_classes} identities, {len(data.labels_v)} visible + {len(data.labels_t)} "
        f"thermal images of {data.image_size[0]}x{data.image_size[1]}; {len(sampler)} batches of "
        f"{args.batch_size}x{args.num_pos}x2 per epoch; device {device}, amp {dtype}, "
        f"{args.world_size} process(es)")

    model = model_mine.embed_net(data.num_classes, gm_pool=args.gm_pool, arch=args.arch, share_net=args.share_net,
                                 pcb=args.pcb, local_feat_dim=args.local_feat_dim, num_strips=args.num_strips,
                                 gem_p=args.gem_p, pretrained="none" if ckpt else args.pretrained)
    optimizer = build_optimizer(model, args)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    start_epoch, best = 0, {"rank1": -1.0, "epoch": -1}
    if ckpt:
        utils.load_weights(model, ckpt["model"], args.resume)
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt.get("scaler", {}))
        start_epoch, best = ckpt["epoch"] + 1, ckpt.get("best", best)
        log(f"resumed from {args.resume} at epoch {start_epoch}")
    if args.sync_bn and args.world_size > 1:
        if device.type != "cuda":
            raise ValueError("--sync_bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU kernel)")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device).to(memory_format=torch.channels_last)
    for state in optimizer.state.values():  # resumed momentum buffers follow the model
        for k, v in state.items():
            if torch.is_tensor(v):
                state[k] = v.to(device)
    raw = model
    if args.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                          else None)
    if args.compile:
        model = torch.compile(model)
    criterion = losses.ReIDLoss(args.method, args.margin, args.w_center, args.label_smooth)
    evaluator = build_evaluator(args) if main_process else None
    tb = tensorboard_writer(os.path.join(args.log_path, "tb", name)) if main_process else None

    paths = {k: os.path.join(args.model_path, f"{name}_{k}.pth") for k in ("best", "last")}
    metrics = None
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        lr = adjust_learning_rate(optimizer, epoch, args.lr, **schedule(args))
        stats = train_one_epoch(model, criterion, optimizer, scaler, loader, augment, device, epoch, args,
                                dtype, show=main_process, tb=tb)
        log(f"epoch {epoch}: loss {stats['loss']:.4f} id {stats['id']:.4f} tri {stats['tri']:.4f} "
            f"acc {100 * stats['acc']:.1f}% lr {lr:.3g} {stats['img_s']:.1f} img/s")
        last = epoch == args.epochs - 1
        due = (epoch >= args.eval_start and (epoch - args.eval_start) % args.eval_every == 0) or last
        if main_process:
            metrics = None
            if due:
                cmc, mAP, mINP = evaluate(raw, evaluator, device, args)
                metrics = test_mine.metrics_row(cmc, mAP, mINP)
                log(f"epoch {epoch} eval: {test_mine.format_row(metrics)}")
                if tb is not None:
                    for k, x in metrics.items():
                        tb.add_scalar(f"eval/{k}", x, epoch)
            state = {"model": raw.state_dict(), "arch": raw.config, "optimizer": optimizer.state_dict(),
                     "scaler": scaler.state_dict(), "epoch": epoch, "rng": utils.rng_state(), "args": vars(args),
                     "metrics": metrics, "best": best}
            if metrics is not None and metrics["rank1"] > best["rank1"]:
                best = {**metrics, "epoch": epoch}
                state["best"] = best
                utils.atomic_save(state, paths["best"])
                log(f"best Rank-1 so far: {metrics['rank1']:.2f}% -> {paths['best']}")
            utils.atomic_save(state, paths["last"])
        if args.world_size > 1:
            dist.barrier()
    if main_process and best["epoch"] >= 0:
        log(f"best: epoch {best['epoch']}: {test_mine.format_row(best)}")
        log(f"checkpoint: {paths['best']}")
        log("re-evaluate with: " + test_command(args, paths["best"]))
    if args.world_size > 1:
        dist.destroy_process_group()
    return best


def test_command(args, checkpoint):
    cmd = f"python test_mine.py --dataset {args.dataset} --data_path {args.data_path} --resume {checkpoint}"
    if args.dataset != "sysu":
        cmd += f" --trials {args.trial}"
    if str(args.gpu) != "0":
        cmd += f" --gpu {args.gpu}"
    return cmd


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
    except (ValueError, FileNotFoundError, OSError, KeyError, FloatingPointError) as e:
        raise SystemExit(f"error: {e}")
