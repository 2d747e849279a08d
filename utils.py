"""Seeding, trial lists, the metric logger, logging, devices and checkpoint files."""
import inspect
import logging
import os
import random
import sys

import numpy as np
import torch

import fileio
import model_mine
import settings


def parse_trials(text):
    """'0-9', '1,3,5', '0 1 2' or '2' -> list of ints (a list of such strings is joined)."""
    if isinstance(text, (list, tuple)):
        text = ",".join(str(t) for t in text)
    trials = []
    try:
        for part in str(text).replace(" ", ",").split(","):
            if not part.strip():
                continue
            a, _, b = part.strip().partition("-")
            a, b = int(a), int(b) if b else None
            if b is not None and b < a:
                raise ValueError
            trials.extend(range(a, b + 1) if b is not None else [a])
    except ValueError:
        raise ValueError(f"--trials: expected e.g. '0-9', '1,3,5' or '0 1 2' (non-negative, ranges ascending), "
                         f"got {text!r}") from None
    if not trials or min(trials) < 0:
        raise ValueError(f"--trials: expected e.g. '0-9', '1,3,5' or '0 1 2' (non-negative), got {text!r}")
    repeated = sorted({t for t in trials if trials.count(t) > 1})
    if repeated:  # the mean would count that trial twice
        raise ValueError(f"--trials {text!r}: {', '.join(map(str, repeated))} given more than once; name each "
                         f"trial once")
    return trials


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # all devices


class MetricLogger:
    """Running means of whatever named values arrive (a smaller torchvision MetricLogger): each
    step's values stay on the device until flush(), which reads them all in one synchronisation.
    A value named 'acc' is a fraction and is shown in percent."""

    def __init__(self):
        self.names, self.pending, self.sums, self.count = None, [], {}, 0

    def add(self, values):
        """values: {name: scalar tensor}, the same names every step."""
        self.names = self.names or list(values)
        self.pending.append(torch.stack([values[k].detach().float() for k in self.names]))

    def flush(self):
        """The pending steps as a [steps, names] CPU tensor, added to the means."""
        rows = torch.stack(self.pending).cpu()  # the only synchronisation with the device
        self.pending = []
        for row in rows.tolist():
            for k, x in zip(self.names, row):
                self.sums[k] = self.sums.get(k, 0.0) + x
        self.count += len(rows)
        return rows

    @property
    def averages(self):
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}

    def format(self, digits=4):
        return format_values(self.averages, digits)


def format_values(values, digits=4):
    """'loss 1.2345 id 0.9876 acc 51.0%': named values for a log line, 'acc' in percent."""
    return " ".join(f"{k} {100 * v:.1f}%" if k == "acc" else f"{k} {v:.{digits}f}" for k, v in values.items())


def get_logger(log_file=None, name="vtreid"):
    """A logger printing to the console and, if given, appending to log_file."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    handlers = [logging.StreamHandler(sys.stdout)]
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(h)
    return logger


def select_device(gpu=None):
    """--gpu: None or 'auto' -> the first CUDA device if there is one, else the CPU; 'cpu' -> the CPU;
    an index -> that CUDA device, an error where it does not exist (never a silent fall-back)."""
    text = "auto" if gpu is None else str(gpu).strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    if text == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if "," in text:
        raise ValueError(f"--gpu {gpu}: one device per process; for several GPUs launch with torchrun "
                         f"--nproc_per_node=N (each process takes its own)")
    try:
        index = int(text)
    except ValueError:
        raise ValueError(f"--gpu must be a CUDA device index, 'cpu' or 'auto', got {gpu!r}") from None
    if not torch.cuda.is_available():
        raise ValueError(f"--gpu {gpu}: this machine has no CUDA device; use --gpu cpu (or leave --gpu out)")
    if not 0 <= index < torch.cuda.device_count():
        raise ValueError(f"--gpu {gpu}: only {torch.cuda.device_count()} CUDA device(s) visible "
                         f"(0..{torch.cuda.device_count() - 1})")
    return torch.device("cuda", index)


AMX_BF16 = "oneDNN's AMX bf16 kernels were seen to give NaN losses from the first training steps"


def cpu_has_amx():
    """Whether this CPU has AMX tiles (where oneDNN's bf16 kernels gave NaN); False where torch cannot tell."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe is not None and probe())


def atomic_save(obj, path):
    """torch.save through fileio.atomic_write."""
    return fileio.atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path, flag="--resume"):
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"{flag}: no such checkpoint file: {path}")
    try:
        # weights_only=False: the authors' files hold numpy arrays, ours RNG states; both are trusted
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"{flag}: cannot read {path} as a PyTorch checkpoint ({type(e).__name__}: {e})") from None


def checkpoint_weights(ckpt, path):
    """(state dict, architecture dict or None) of one of our checkpoints ('model', 'arch') or of the
    authors' ('net'), with a DataParallel 'module.' prefix removed and their PCB keys converted."""
    if isinstance(ckpt, dict) and "model" in ckpt and "arch" in ckpt:
        sd, arch = ckpt["model"], ckpt["arch"]
        if not (isinstance(sd, dict) and sd and all(torch.is_tensor(v) for v in sd.values())
                and isinstance(arch, dict)):
            raise ValueError(f"{path}: a malformed checkpoint: 'model' is not a state dict of tensors or 'arch' not "
                             f"a network's settings (a damaged or hand-made file?)")
        return dict(sd), dict(arch)
    if isinstance(ckpt, dict) and "net" in ckpt:
        sd = dict(ckpt["net"])
    elif isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        sd = dict(ckpt)  # a bare state dict
    else:
        raise ValueError(f"{path}: not a checkpoint of this project ('model' + 'arch') nor of a reference code "
                         f"('net')")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return model_mine.convert_original_keys(sd), None


def original_class_num(state_dict, path):
    for key in ("head.fc_weight", "classifier.weight"):
        if key in state_dict:
            return state_dict[key].shape[-2]
    raise ValueError(f"{path}: cannot tell the number of classes: no fc_list.0.weight or classifier.weight")


def load_weights(model, state_dict, path):
    """Strict load with one readable error naming what does not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        cfg = model.config
        parts = [f"{name} ({len(v)}): {', '.join(v[:6])}{' ...' if len(v) > 6 else ''}"
                 for name, v in (("missing keys", missing), ("unexpected keys", unexpected),
                                 ("shape mismatches", shapes)) if v]
        shown = ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "class_num")
        raise ValueError(f"{path} does not fit the model ({shown}): " + "; ".join(parts) + ". For checkpoints "
                         "of the original code pass the architecture flags they were trained with (--share_net, "
                         "--pcb, --local_feat_dim, --num_strips; DGTL: --method dgtl --bpool --cpool --fuse)")
    model.load_state_dict(state_dict)


def check_arch_flags(path, config, args, explicit, recorded, saved_args=None):
    """Explicit architecture flags against the model built for path: a flag its head does not read is
    an error, and so (recorded: one of our files, which carry their architecture) is one that differs.
    --method must be the method the file's run recorded (saved_args), else one that builds its head."""
    head = config["head"]
    unused = settings.unused_arch_flags(config, explicit)
    if recorded:
        ran, legacy = settings.recorded_method(saved_args)
        said = (saved_args or {}).get("method")
        # a file without non_local has none
        saved = dict(settings.LATER_FLAGS, **config, method=f"{said}{', that is wrt' if legacy else ''}"
                     if ran else f"{head} head")
        wrong = [k for k in explicit if k not in unused and k in saved and (
            (args.method not in (ran, said) if ran else head not in settings.METHODS[args.method].heads)
            if k == "method" else getattr(args, k) != saved[k])]
        shown = [f"--{k} {getattr(args, k)} (the file's {head} head does not read it)" for k in unused] + \
                [f"--{k} {getattr(args, k)} (the file: {saved[k]})" for k in wrong]
        if shown:
            raise ValueError(f"{path} is a checkpoint of this project and records its architecture, which "
                             f"differs from {', '.join(shown)}: leave those flags out")
    elif unused:
        raise ValueError(f"{', '.join('--' + f for f in unused)}: not read by the {head} head built for {path} "
                         f"(--method {args.method}); leave {'it' if len(unused) == 1 else 'them'} out")


def original_arch(state_dict, path, args):
    """embed_net's arguments for a checkpoint of the original code, which does not record them: the flags."""
    if args is None:
        raise ValueError(f"{path}: checkpoint of the original code: pass the architecture flags")
    return dict(settings.METHODS[args.method].config(args), class_num=original_class_num(state_dict, path))


def model_from_checkpoint(path, args=None, explicit=(), ckpt=None):
    """embed_net with the weights of a checkpoint file (ckpt: its contents, when already read); the
    architecture comes from the file (ours) or from args (the original code's files, which do not
    record it). An architecture flag in `explicit` that the model's head does not read, or that
    disagrees with the file, is an error."""
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    sd, arch = checkpoint_weights(ckpt, path)
    recorded = arch is not None
    if not recorded:
        like = settings.looks_like(sd)
        marks = settings.METHODS[like].reproduction.marks if like else ()
        if args is not None and like and like != args.method and \
                marks != settings.METHODS[args.method].reproduction.marks:
            raise ValueError(f"{path}: this checkpoint of a reference code looks like one of --method {like} (its "
                             f"keys {', '.join(marks)}...), not of --method {args.method}: pass --method {like}")
        arch = original_arch(sd, path, args)
        # the DGTL code stores its three ResNets whole: keep the stages this share point uses
        sd, _ = model_mine.drop_unused_stages(sd, arch["share_net"])
    try:
        build = settings.method_of(arch)[1].model
        inspect.signature(build).bind(**arch)
    except (TypeError, ValueError) as e:  # not a network this project builds: a damaged or hand-made file
        raise ValueError(f"{path}: a malformed checkpoint: its 'arch' does not build a network ({e})") from None
    model = build(**arch)
    unused = () if recorded else getattr(model, "unused_reference_keys", ())  # held by a reference, never run
    sd = {k: v for k, v in sd.items() if not k.startswith(unused)} if unused else sd
    saved = ckpt.get("args") if recorded and isinstance(ckpt.get("args"), dict) else None
    check_arch_flags(path, model.config, args, explicit, recorded, saved)
    load_weights(model, sd, path)
    ran = settings.recorded_method(saved)[0]
    if args is not None and ran in settings.METHODS and "method" not in explicit:
        args.method = ran  # what the results record: the file's method, not the default
    return model, ckpt
