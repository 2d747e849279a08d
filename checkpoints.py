"""Checkpoint file -> network, its settings and the method it belongs to, for test_mine.py, extract.py and
export.py: this project's checkpoints ('model' + 'network' + 'args': they carry their network config, image
size and method; files written before hold the config under 'arch') and the reference codes' ({'net': ...}
of HcTri, DGTL, AGW, CAJ, DEEN), which record none and are built from --method and its published defaults,
or the architecture flags.
"""
import inspect
import math
import os
from types import SimpleNamespace

import torch

import flags
import model_mine
import settings

ARCH_FLAGS = tuple(f.name for f in settings.architecture_flags())
# flags that say how to build an original-code checkpoint, pick its dataset's defaults, or resize
MODEL_FLAGS = ("dataset", "img_w", "img_h") + ARCH_FLAGS
# the key of the network config in our checkpoints: 'network'; 'arch' in the files written before (a name it
# shared with --arch, the backbone's)
NETWORK_KEYS = ("network", "arch")


def load_checkpoint(path, flag="--resume"):
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"{flag}: no such checkpoint file: {path}")
    try:
        # weights_only=False: the authors' files hold numpy arrays, ours RNG states; both are trusted
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"{flag}: cannot read {path} as a PyTorch checkpoint ({type(e).__name__}: {e})") from None


def network_key(ckpt):
    """The key of one of our checkpoints' network config (NETWORK_KEYS), else None."""
    if isinstance(ckpt, dict) and "model" in ckpt:
        return next((key for key in NETWORK_KEYS if key in ckpt), None)
    return None


def checkpoint_weights(ckpt, path):
    """(state dict, network config or None) of one of our checkpoints ('model', 'network' or the older
    'arch'; the config in today's names) or of the authors' ('net'), with a DataParallel 'module.' prefix
    removed and their PCB keys converted."""
    key = network_key(ckpt)
    if key:
        sd, config = ckpt["model"], ckpt[key]
        if not (isinstance(sd, dict) and sd and all(torch.is_tensor(v) for v in sd.values())
                and isinstance(config, dict)):
            raise ValueError(f"{path}: a malformed checkpoint: 'model' is not a state dict of tensors or '{key}' "
                             f"not a network's settings (a damaged or hand-made file?)")
        return dict(sd), settings.network_config(config)
    if isinstance(ckpt, dict) and "net" in ckpt:
        sd = dict(ckpt["net"])
    elif isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        sd = dict(ckpt)  # a bare state dict
    else:
        raise ValueError(f"{path}: not a checkpoint of this project ('model' + 'network', or 'arch' before) nor of "
                         f"a reference code ('net')")
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


def original_config(state_dict, path, args):
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
    sd, config = checkpoint_weights(ckpt, path)
    recorded = config is not None
    if not recorded:
        like = settings.looks_like(sd)
        marks = settings.METHODS[like].reproduction.marks if like else ()
        if args is not None and like and like != args.method and \
                marks != settings.METHODS[args.method].reproduction.marks:
            raise ValueError(f"{path}: this checkpoint of a reference code looks like one of --method {like} (its "
                             f"keys {', '.join(marks)}...), not of --method {args.method}: pass --method {like}")
        config = original_config(sd, path, args)
        # the DGTL code stores its three ResNets whole: keep the stages this share point uses
        sd, _ = model_mine.drop_unused_stages(sd, settings.as_settings(config).share_net)
    try:
        build = settings.method_of(config)[1].model
        inspect.signature(build).bind(**config)
    except (TypeError, ValueError) as e:  # not a network this project builds: a damaged or hand-made file
        what = f"its '{network_key(ckpt)}'" if recorded else "the network config of its flags"
        raise ValueError(f"{path}: a malformed checkpoint: {what} does not build a network ({e})") from None
    model = build(**config)
    unused = () if recorded else getattr(model, "unused_reference_keys", ())  # held by a reference, never run
    sd = {k: v for k, v in sd.items() if not k.startswith(unused)} if unused else sd
    saved = ckpt.get("args") if recorded and isinstance(ckpt.get("args"), dict) else None
    check_arch_flags(path, model.config, args, explicit, recorded, saved)
    load_weights(model, sd, path)
    ran = settings.recorded_method(saved)[0]
    if args is not None and ran in settings.METHODS and "method" not in explicit:
        args.method = ran  # what the results record: the file's method, not the default
    return model, ckpt


def resolve_checkpoint(path, model_path):
    if not path:
        raise ValueError("--resume: give the checkpoint file to evaluate")
    if not os.path.exists(path.format(trial=1) if "{trial}" in path else path):
        alt = os.path.join(model_path, path)
        if os.path.exists(alt.format(trial=1) if "{trial}" in alt else alt):
            return alt
    return path


def image_size(args, ckpt):
    """--img_w/--img_h, else the size the checkpoint was trained at, else the dataset's."""
    saved = ckpt.get("args", {}) if isinstance(ckpt, dict) else {}
    defaults = settings.DATASETS[args.dataset].defaults
    return (args.img_w or saved.get("img_w") or defaults["img_w"],
            args.img_h or saved.get("img_h") or defaults["img_h"])


def flip_test(args, ckpt):
    """--flip_test as given, else as the reference of the checkpoint's method tests (CAJ's flips)."""
    if args.flip_test is None:
        saved = ckpt.get("args") if isinstance(ckpt, dict) else None
        method = (saved or {}).get("method")
        args.flip_test = settings.flip_default(method if method in settings.METHODS else args.method)
    return args.flip_test == "on"


def on_device(model, device):
    return model.to(device).to(memory_format=torch.channels_last)


def load_on_device(path, args, device, ckpt=None):
    """(the model of a checkpoint file on device, the file's contents): test_mine.py's loader."""
    model, ckpt = model_from_checkpoint(path, args, getattr(args, "explicit", ()), ckpt)
    return on_device(model, device), ckpt


def resolve_model_flags(args, skip=(), log=print):
    """The architecture flags (test_mine.py's, extract.py's) resolved once: those given explicitly are
    recorded (they must agree with a checkpoint of ours, which carries its own), a flag that one method
    alone reads implies that method, the dataset's defaults fill the rest, and every value is checked."""
    args.explicit = sorted(k for k in ARCH_FLAGS if getattr(args, k) is not None)
    if args.method is None:
        for name, method in settings.METHODS.items():
            own = [f"--{f}" for f in args.explicit if f in method.flags and
                   all(f not in m.flags for m in settings.METHODS.values() if m is not method)]
            if own:  # e.g. the reference DGTL code's test commands, which have no --method
                args.method = name
                log(f"note: {', '.join(own)} given without --method: evaluating as --method {name}")
                break
    settings.fill_defaults(args, skip=skip)
    check_model_flags(args)


def check_model_flags(args):
    """The values of the flags that build and size a network: choices, and the table's ranges."""
    settings.check_choices(args, settings.CHOICES)
    if args.gem_p is not None and not (math.isfinite(args.gem_p) and args.gem_p > 0):
        raise ValueError(f"--gem_p must be a finite number > 0, got {args.gem_p}")
    flags.check_ranges(args, [settings.flag(k) for k in ("img_w", "img_h")] + list(settings.architecture_flags()))


def model_settings(given):
    """The settings of a network to load from these keyword flags (some of MODEL_FLAGS), resolved as
    test_mine.py resolves its own, as far as the model and the image size need them."""
    unknown = sorted(set(given) - set(MODEL_FLAGS))
    if unknown:
        raise ValueError(f"unknown flag(s) {', '.join(unknown)}: expected some of {', '.join(MODEL_FLAGS)}")
    args = SimpleNamespace(**dict(dict.fromkeys(MODEL_FLAGS), dataset=settings.flag("dataset").default))
    for key, value in given.items():
        if value is not None:
            setattr(args, key, value)
    resolve_model_flags(args, skip=("img_w", "img_h", "trial", "data_path"), log=lambda *a: None)
    return args


def load_model(checkpoint, **given):
    """(model in eval mode on the CPU, info): the loader test_mine.py uses; info holds the image size
    (the checkpoint's, else the dataset's), the method and the checkpoint's path."""
    args = model_settings(given)
    path = os.fspath(checkpoint)
    model, ckpt = model_from_checkpoint(path, args, args.explicit)
    saved = ckpt.get("args") if isinstance(ckpt, dict) else None
    saved = saved if isinstance(saved, dict) else {}
    img_w, img_h = image_size(args, ckpt)
    method = saved.get("method") or (args.method if model.config["head"] in settings.METHODS[args.method].heads
                                     else settings.method_of(model.config)[0])
    return model.eval(), {"checkpoint": path, "img_w": img_w, "img_h": img_h, "method": method,
                          "dataset": saved.get("dataset")}
