"""Seeding, trial lists, the metric logger, logging, devices and atomic torch.save."""
import logging
import os
import random
import sys

import numpy as np
import torch

import data_manager
import fileio


def modality_column(n_visible, n_thermal, device=None):
    """The per-sample modality tensor (int64) of n_visible visible then n_thermal thermal samples."""
    return torch.cat([torch.full((n,), data_manager.MODALITIES.index(m), dtype=torch.long, device=device)
                      for m, n in (("visible", n_visible), ("thermal", n_thermal))])


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
