"""Datasets, image transforms and the stored training sets.

Images travel as uint8 HxWx3 arrays and become float only on the device that uses them:
`normalize` (test) and `BatchAugment` (train) are batched tensor ops, so a GPU is not starved
by per-image PIL work. `per_image_train_transform` is the authors' torchvision pipeline,
kept as the reference the batched one is tested against and as bench.py's reference path.
`write_training_set` stores a training set as four npy files that change as one set.
"""
import functools
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import Pool

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

import data_manager
import fileio

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PAD = 10  # the authors' zero padding before the random crop, in pixels at 288x144
SYSU_NPY = ("train_rgb_resized_img.npy", "train_rgb_resized_label.npy",
            "train_ir_resized_img.npy", "train_ir_resized_label.npy")


def load_image(path, img_w, img_h):
    """An image file as uint8 [img_h, img_w, 3]: converted to 8-bit RGB (thermal JPEGs may have
    one channel, thermal PNGs 16 bits), Lanczos-resized as the authors do."""
    try:
        with Image.open(path) as img:
            return resize_image(img, img_w, img_h)
    except (OSError, ValueError, ImportError) as e:  # ImportError: a conversion needing ImageCms
        raise OSError(f"cannot read image {path}: {e}") from None


def resize_image(img, img_w, img_h):
    """A Pillow image as load_image makes it of a file (extract.py uses it for images in memory)."""
    if 0 in img.size:  # Lanczos would give a black image, and the model its features
        raise ValueError(f"it has no pixels ({img.size[1]}x{img.size[0]}, HxW)")
    return np.array(_rgb8(img).resize((img_w, img_h), Image.LANCZOS), dtype=np.uint8)


# Modes whose values are 8-bit (or palette / colour-space codes): Pillow's own convert is right.
_PILLOW_RGB_MODES = {"1", "L", "P", "PA", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}


def _rgb8(img):
    """Any Pillow image as 8-bit RGB. Pillow's convert("RGB") clips 16-bit and float grey values
    at 255 (a 16-bit thermal PNG becomes all white), so those are rescaled here."""
    mode = img.mode
    if mode in _PILLOW_RGB_MODES:
        return img.convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img).astype(np.int64)
        if mode == "I":  # 32-bit ints: 16-bit data (PNG, or values above 255) or 8-bit data
            if a.min() < 0 or a.max() > 65535:
                raise ValueError(f"mode 'I' values {a.min()}..{a.max()} are outside 0..65535")
            sixteen = img.format == "PNG" or a.max() > 255
        else:
            sixteen = True
        grey = (a + 128) // 257 if sixteen else a  # round(v / 257): 65535 -> 255
    elif mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
            raise ValueError("mode 'F' (float) images must hold values in [0, 1]")
        grey = np.rint(a * 255)
    else:
        raise ValueError(f"unsupported image mode {mode!r}")
    return Image.fromarray(np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2))


def load_images(paths, img_w, img_h, workers=8):
    """Many images into one uint8 [N, img_h, img_w, 3] array (threads: PIL releases the GIL)."""
    out = np.empty((len(paths), img_h, img_w, 3), dtype=np.uint8)

    def fill(i):
        out[i] = load_image(paths[i], img_w, img_h)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(fill, range(len(paths))))
    return out


def normalize(x):
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] (channels_last memory), scaled to [0, 1] and
    ImageNet-normalised with the same float32 operations as ToTensor + Normalize."""
    mean, std = _mean_std(x.device)
    return x.permute(0, 3, 1, 2).float().div(255).sub(mean).div(std)


@functools.lru_cache(maxsize=None)
def _mean_std(device):
    """The statistics on device, made once: a tensor built from host values each step would be a
    blocking copy in the training loop."""
    return (torch.tensor(MEAN, device=device).view(1, 3, 1, 1), torch.tensor(STD, device=device).view(1, 3, 1, 1))


def per_image_train_transform(img_h, img_w, pad=PAD):
    """The authors' per-image training augmentation (PIL + torchvision), for reference."""
    return T.Compose([
        T.ToPILImage(),
        T.Pad(pad),
        T.RandomCrop((img_h, img_w)),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])


class BatchAugment:
    """The training augmentation of a whole uint8 batch at once, on the batch's device:
    zero-pad (10 px), random crop back to HxW, horizontal flip with p = 0.5 (one gather does all
    three), normalise; then, optionally, random erasing and this project's channel augmentation on
    the visible half; or (caj) CAJ's three-stream joint batch (joint())."""

    def __init__(self, erasing_p=0.0, channel_aug=0.0, pad=PAD, caj=False, gray_p=0.0, erasing=None):
        self.pad = pad
        self.erasing_p = erasing_p
        self.channel_aug = channel_aug
        self.caj = caj
        self.gray_p = gray_p  # a method's RandomGrayscale of both modalities (DEEN's 0.5)
        self.erasing = erasing  # a method's Zhong et al. erasing, channel_random_erasing's sl, sh, mean (DEEN's)

    def crop_flip(self, x):
        b, h, w, _ = x.shape
        dev = x.device
        pad = self.pad
        padded = torch.nn.functional.pad(x, (0, 0, pad, pad, pad, pad))
        top = torch.randint(0, 2 * pad + 1, (b, 1), device=dev)
        left = torch.randint(0, 2 * pad + 1, (b, 1), device=dev)
        flip = torch.rand(b, 1, device=dev) < 0.5
        cols = torch.arange(w, device=dev).expand(b, w)
        cols = torch.where(flip, w - 1 - cols, cols) + left
        rows = torch.arange(h, device=dev).expand(b, h) + top
        return padded[torch.arange(b, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]

    def __call__(self, x_visible, x_thermal, labels):
        """uint8 [B, H, W, 3] each and their labels [visible; thermal] -> (normalised float visible
        [B', 3, H, W], thermal [B, 3, H, W], labels [visible; thermal]); B' = B, or 2B with caj."""
        if self.caj:
            return self.joint(x_visible, x_thermal, labels)
        if self.gray_p > 0:
            x_visible, x_thermal = random_grayscale(x_visible, self.gray_p), random_grayscale(x_thermal, self.gray_p)
        v, t = normalize(self.crop_flip(x_visible)), normalize(self.crop_flip(x_thermal))
        if self.channel_aug > 0:
            v = channel_augment(v, self.channel_aug)
        if self.erasing_p > 0 and self.erasing is not None:
            v, t = (channel_random_erasing(x, self.erasing_p, **self.erasing) for x in (v, t))
        elif self.erasing_p > 0:
            v, t = random_erase(v, self.erasing_p), random_erase(t, self.erasing_p)
        return v, t, labels

    def joint(self, x_visible, x_thermal, labels):
        """CAJ's batch (Ye et al., ICCV 2021; mangye16/Cross-Modal-Re-ID-baseline, ICCV21_CAJ/data_loader.py
        and train_ext.py): every visible image twice, each copy cropped, flipped and channel-erased on
        its own, the second copy then channel-exchanged; the thermal images channel-erased, then
        ChannelAdapGray'ed. Labels [visible; visible again; thermal]."""
        n = len(x_visible)
        v = channel_random_erasing(normalize(self.crop_flip(torch.cat((x_visible, x_visible)))), 0.5)
        v = torch.cat((v[:n], channel_exchange(v[n:])))
        t = channel_adap_gray(channel_random_erasing(normalize(self.crop_flip(x_thermal)), 0.5), 0.5)
        return v, t, torch.cat((labels[:n], labels[:n], labels[n:]))


def random_grayscale(x, p):
    """torchvision's RandomGrayscale(p) of uint8 images [B, H, W, 3]: with probability p, PIL's convert('L')
    (L = (19595 R + 38470 G + 7471 B + 2^15) >> 16, Pillow's rgb2l) in all three channels. It commutes
    with the zero padding, crop and flip, so it may run before them."""
    w = torch.tensor([19595, 38470, 7471], dtype=torch.int32, device=x.device)
    gray = ((x.int() * w).sum(-1, keepdim=True) + 32768).bitwise_right_shift(16).to(torch.uint8)
    apply = (torch.rand(x.shape[0], device=x.device) < p)[:, None, None, None]
    return torch.where(apply, gray.expand_as(x), x)


def pick_channel(x, choice):
    """Each image's channel choice[i] (0 R, 1 G, 2 B) copied into all three channels, or (3) its
    grayscale 0.2989 R + 0.5870 G + 0.1140 B: on the normalised values, as CAJ's code computes them."""
    gray = (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    one = x.gather(1, choice.clamp(max=2)[:, None, None, None].expand(-1, 1, *x.shape[2:]))
    return torch.where(choice[:, None, None, None] == 3, gray, one).expand_as(x)


def channel_augment(x, p):
    """This project's channel augmentation (--channel_aug p): with probability p, replace a visible
    image by its R, G or B channel or its grayscale (uniformly), so that colour stops being a shortcut."""
    b = x.shape[0]
    dev = x.device
    picked = pick_channel(x, torch.randint(0, 4, (b,), device=dev))
    apply = (torch.rand(b, device=dev) < p)[:, None, None, None]
    return torch.where(apply, picked, x)


def channel_exchange(x):
    """CAJ's ChannelExchange(gray=2): R, G or B (1/3 each) into all three channels, always."""
    return pick_channel(x, torch.randint(0, 3, (x.shape[0],), device=x.device))


def channel_adap_gray(x, p):
    """CAJ's ChannelAdapGray(p): R, G or B into all three channels (1/4 each), else (1/4) grayscale with
    probability p and the image unchanged otherwise (with p = 0.5: 1/8 each)."""
    b = x.shape[0]
    choice = torch.randint(0, 4, (b,), device=x.device)
    keep = (choice == 3) & (torch.rand(b, device=x.device) > p)
    return torch.where(keep[:, None, None, None], x, pick_channel(x, choice))


def box_at_random(h, w, eh, ew):
    """[B, h, w] masks of one eh x ew box per image (float sides, [B]) at a uniform position inside."""
    dev = eh.device
    top = (torch.rand(len(eh), device=dev) * (h - eh + 1)).floor()
    left = (torch.rand(len(eh), device=dev) * (w - ew + 1)).floor()
    ys = torch.arange(h, device=dev)[None, :, None]
    xs = torch.arange(w, device=dev)[None, None, :]
    return ((ys >= top[:, None, None]) & (ys < (top + eh)[:, None, None])
            & (xs >= left[:, None, None]) & (xs < (left + ew)[:, None, None]))


def channel_random_erasing(x, p, sl=0.02, sh=0.4, r1=0.3, mean=(0.4914, 0.4822, 0.4465), attempts=100):
    """CAJ's ChannelRandomErasing: with probability p, the first of up to 100 boxes (area uniform in
    [sl, sh] of the image, aspect uniform in [r1, 1/r1], sides rounded half to even) that fits
    strictly inside the image, at a uniform position, is filled channel by channel with mean (written
    into the normalised values, as the reference does); no box fits: unchanged."""
    b, _, h, w = x.shape
    dev = x.device
    area = torch.empty(b, attempts, device=dev).uniform_(sl, sh) * h * w
    aspect = torch.empty(b, attempts, device=dev).uniform_(r1, 1 / r1)
    eh, ew = (area * aspect).sqrt().round(), (area / aspect).sqrt().round()
    fits = (eh < h) & (ew < w)
    first = fits.int().argmax(1, keepdim=True)  # the first attempt that fits (0 where none does)
    eh, ew = eh.gather(1, first)[:, 0], ew.gather(1, first)[:, 0]
    inside = box_at_random(h, w, eh, ew)
    erase = inside & (fits.any(1) & (torch.rand(b, device=dev) <= p))[:, None, None]
    fill = torch.tensor(mean, device=dev, dtype=x.dtype)[None, :, None, None]
    return torch.where(erase[:, None], fill, x)


def random_erase(x, p, scale=(0.02, 0.4), ratio=(0.3, 3.3)):
    """Zero a random rectangle (area fraction in scale, aspect in ratio) of each image with
    probability p; the rectangle is clipped to fit instead of torchvision's retries."""
    b, _, h, w = x.shape
    dev = x.device
    area = torch.empty(b, device=dev).uniform_(*scale) * h * w
    log_r = torch.empty(b, device=dev).uniform_(float(np.log(ratio[0])), float(np.log(ratio[1])))
    eh = (area * log_r.exp()).sqrt().round().clamp(1, h)
    ew = (area / log_r.exp()).sqrt().round().clamp(1, w)
    inside = box_at_random(h, w, eh, ew)
    erase = inside & (torch.rand(b, device=dev) < p)[:, None, None]
    return x.masked_fill(erase[:, None], 0.0)


class TestData(Dataset):
    """Test images as uint8 [H, W, 3] tensors, Lanczos-resized from their files."""

    def __init__(self, paths, img_w=144, img_h=288):
        self.paths, self.img_w, self.img_h = list(paths), img_w, img_h

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return torch.from_numpy(load_image(self.paths[i], self.img_w, self.img_h))


class TrainData:
    """Visible and thermal training images (uint8 [N, H, W, 3], array-like) with int64 labels."""

    def __init__(self, visible, labels_v, thermal, labels_t):
        self.visible, self.thermal = visible, thermal
        self.labels_v = np.asarray(labels_v, dtype=np.int64)
        self.labels_t = np.asarray(labels_t, dtype=np.int64)
        if len(self.visible) != len(self.labels_v) or len(self.thermal) != len(self.labels_t):
            raise ValueError("training images and labels differ in number")

    def __getstate__(self):
        # DataLoader workers started by spawn/forkserver get the memory maps' file names, not copies
        state = dict(self.__dict__)
        for k in ("visible", "thermal"):
            if isinstance(state[k], np.memmap) and state[k].filename:
                state[k] = ("memmap", state[k].filename)
        return state

    def __setstate__(self, state):
        for k in ("visible", "thermal"):
            if isinstance(state[k], tuple):
                state[k] = np.load(state[k][1], mmap_mode="r")
        self.__dict__.update(state)

    @property
    def num_classes(self):
        return int(max(self.labels_v.max(), self.labels_t.max())) + 1

    @property
    def image_size(self):
        return tuple(self.visible.shape[1:3])


def sysu_train_data(data_path, img_w=144, img_h=288):
    """SYSU-MM01 training set from pre_process_sysu.py's npy files, memory-mapped (instant start)."""
    return npy_train_data(data_path, img_w, img_h, "pre_process_sysu.py")


def llcm_train_data(data_path, img_w=144, img_h=288):
    """LLCM training set from pre_process_llcm.py's npy files, memory-mapped (instant start)."""
    return npy_train_data(data_path, img_w, img_h, "pre_process_llcm.py")


# Heights whose stored training set lives in a folder of its own beside the root's set (DEEN's 384-high
# images, DEEN/pre_process_sysu.py): the root's set (288 high) and the runs made with it stay valid
BESIDE_HEIGHTS = (384,)


def stored_set_folder(data_path, img_h):
    """Where the training set of this image height is stored: data_path/train_h384 for 384, else the root."""
    return os.path.join(data_path, f"train_h{img_h}") if img_h in BESIDE_HEIGHTS else data_path


def npy_train_data(data_path, img_w, img_h, script):
    """A training set stored by write_training_set (the four SYSU_NPY files), memory-mapped;
    `script` is the pre-processing script that errors tell the user to run."""
    root, data_path = data_path, stored_set_folder(data_path, img_h)
    size = f" --img_h {img_h} --img_w {img_w}" if data_path != root else ""
    if os.path.isdir(data_path):
        finish_commit(data_path)  # a set whose commit was cut short is completed before it is read
        remove_killed_run_temps(data_path)  # else a killed pre-processing run's ~0.8-2.8 GB stay
    paths = [os.path.join(data_path, name) for name in SYSU_NPY]
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"missing {p}: run `python {script} --data_path {root}{size}` first")
    vis, lab_v, th, lab_t = stored_arrays(paths, f"run `python {script} --data_path {root}{size}` again")
    data = TrainData(vis, lab_v, th, lab_t)
    if data.image_size != (img_h, img_w) or th.shape[1:3] != (img_h, img_w):
        raise ValueError(f"{paths[0]} holds {data.image_size[0]}x{data.image_size[1]} (HxW) images but "
                         f"--img_h {img_h} --img_w {img_w} was asked: re-run {script} with "
                         f"--img_h {img_h} --img_w {img_w}, or pass the stored size")
    return data


def stored_arrays(paths, fix):
    """The four SYSU_NPY files (paths in that order): images memory-mapped, labels read; a file that is
    truncated, damaged or does not fit its modality's other file is one error naming it and `fix`."""
    out = []
    for images, labels in (paths[:2], paths[2:]):
        x, y = read_npy(images, fix), np.asarray(read_npy(labels, fix))
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
            raise ValueError(f"{images}: holds {x.dtype} {x.shape}, expected uint8 images [N, H, W, 3]: {fix}")
        if y.dtype.kind not in "iu" or y.shape != (len(x),):
            raise ValueError(f"{labels}: holds {y.dtype} {y.shape}, expected {len(x)} integer labels (one per image "
                             f"of {os.path.basename(images)}): {fix}")
        out += [x, y]
    return out


def read_npy(path, fix):
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:  # e.g. "mmap length is greater than file size"
        raise ValueError(f"{path}: cannot read it ({e}); is it truncated or damaged? {fix}") from None


# Storing a training set. The four SYSU_NPY files are one set: they change together or not at all.
# A run writes them under temporary names (<name>.tmp-<pid>), then commits: a journal listing
# temp -> final names is renamed into place (atomic), the temps are renamed, the journal removed.
COMMIT_JOURNAL = "train_resized_npy.commit"
_TMP = ".tmp-"


def _sync_folder(root):
    # makes finished renames durable; some platforms / file systems cannot open or sync a folder
    try:
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def finish_commit(root):
    """Complete a commit of write_training_set that was cut short between its renames, so that the
    four files are the new set as a whole (every temp a journal lists is complete). Returns whether
    there was one. Called by every run and by every load before the files are used."""
    journal = os.path.join(root, COMMIT_JOURNAL)
    try:
        with open(journal) as f:
            pairs = [line.split() for line in f if line.strip()]
    except FileNotFoundError:
        return False
    if not pairs or any(len(p) != 2 or p[1] not in SYSU_NPY or not p[0].startswith(p[1] + _TMP)
                        or not p[0][len(p[1] + _TMP):].isdigit() for p in pairs):
        raise ValueError(f"{journal}: not a commit journal of this project; remove it and re-run pre-processing")
    try:
        for tmp, final in pairs:
            try:
                os.replace(os.path.join(root, tmp), os.path.join(root, final))
            except FileNotFoundError:
                pass  # renamed before the interruption, or just now by a concurrent loader (DDP ranks)
        _sync_folder(root)
        os.remove(journal)
    except FileNotFoundError:
        pass  # journal removed by a concurrent loader
    except OSError as e:
        raise OSError(f"cannot complete the interrupted pre-processing commit recorded in {journal}: "
                      f"{e.strerror or e}") from None
    _sync_folder(root)
    return True


def remove_stale_temps(root):
    """Delete every temporary file of this project's training-set writer in root: left by runs that
    died before their commit (SIGKILL, power loss), 2.8 GB each on SYSU-MM01. All of them, not only
    those of dead pids: pids are reused (in containers a dead run's pid is often a live process's),
    and the caller holds the lock on the root, so no other run is writing there. Only files named
    <one of SYSU_NPY or COMMIT_JOURNAL>.tmp-<digits>; returns their names."""
    removed = []
    with os.scandir(root) as entries:
        for e in entries:
            final, sep, pid = e.name.rpartition(_TMP)
            if (sep and pid.isascii() and pid.isdigit() and final in SYSU_NPY + (COMMIT_JOURNAL,)
                    and not e.is_dir(follow_symlinks=False)):
                os.remove(e.path)
                removed.append(e.name)
    return sorted(removed)


def _lock_root(root):
    """Exclusive lock on the root folder for a whole run (the OS drops it even on SIGKILL), so a
    second run on the same root stops at once instead of deleting this run's temporaries. Where
    locks are unsupported the run goes on unlocked: one run at a time is then up to the user."""
    fd, state = fileio.lock_folder(root, wait=False)
    if state == "held":
        raise OSError(f"{root}: another pre-processing run is writing its training set now; "
                      f"wait for it to finish")
    return fd


def remove_killed_run_temps(root):
    """Remove the temporaries a killed pre-processing run left in root, when no run holds the root's
    lock now (a held lock may be a run writing them: then, and where locks are unsupported, all
    stay). Never fails: a read-only or unreadable root keeps them. Returns the names removed."""
    try:
        fd, state = fileio.lock_folder(root, wait=False)
    except OSError:
        return []
    try:
        if state != "locked":
            return []
        finish_commit(root)  # a journal's temps are the new set, not leftovers
        return remove_stale_temps(root)
    except OSError:
        return []
    finally:
        if fd is not None:
            os.close(fd)


def _on_sigterm(signum, frame):
    raise SystemExit("error: stopped by SIGTERM")  # unwinds through the finally blocks


def _pool_worker_init():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the parent, which ends the pool
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _load_job(job):
    return load_image(*job)


def write_training_set(root, visible, thermal, img_w, img_h, workers=None):
    """Store a training set in root as the four SYSU_NPY files: Lanczos-resized uint8
    [N, img_h, img_w, 3] images and int64 labels per modality. visible / thermal: (paths, labels).

    The previous set stays byte-identical until the new one is complete, then changes as a whole
    (see COMMIT_JOURNAL); temps of this run are removed on failure, Ctrl-C and SIGTERM, and those
    of a killed run by the next one. Images are read by `workers` processes (default: all cores)."""
    lock = _lock_root(root)
    journal = os.path.join(root, COMMIT_JOURNAL)
    temps = {}  # final name -> this run's temp path
    main_thread = threading.current_thread() is threading.main_thread()  # handlers live there only
    if main_thread:
        old_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        finish_commit(root)
        remove_stale_temps(root)
        parts = (("visible", visible, SYSU_NPY[:2]), ("thermal", thermal, SYSU_NPY[2:]))
        with Pool(max(1, workers or os.cpu_count() or 1), initializer=_pool_worker_init) as pool:
            for modality, (paths, labels), (img_name, label_name) in parts:
                labels = np.asarray(labels, dtype=np.int64)
                if labels.shape != (len(paths),):
                    raise ValueError(f"{modality}: {len(paths)} images but {labels.size} labels")
                with _TempFile(root, label_name, temps) as f:
                    np.save(f, labels)
                # rows appended in order, not a memory map: a full disk is an OSError, not a SIGBUS
                with _TempFile(root, img_name, temps) as f:
                    np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False,
                                                             "shape": (len(paths), img_h, img_w, 3)})
                    jobs = [(p, img_w, img_h) for p in paths]
                    for img in tqdm(pool.imap(_load_job, jobs, chunksize=16), total=len(jobs), desc=modality):
                        f.write(np.ascontiguousarray(img, dtype=np.uint8).tobytes())
        lines = "".join(f"{os.path.basename(tmp)} {final}\n" for final, tmp in temps.items())
        with _TempFile(root, COMMIT_JOURNAL, temps) as f:
            f.write(lines.encode())
        os.replace(temps[COMMIT_JOURNAL], journal)  # the commit point
        finish_commit(root)
    finally:
        # Once the journal is in place (any journal found at the start was completed first, so
        # it is this run's) its temps are the new set: the next run or load completes the commit.
        if not os.path.exists(journal):
            for path in temps.values():
                if os.path.exists(path):
                    os.remove(path)
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if old_sigterm is None else old_sigterm)
        if lock is not None:
            os.close(lock)


class _TempFile:
    """Binary file root/<name>.tmp-<pid> of this run, registered in `temps` before it exists (so a
    failure removes it) and on disk (fsync) when closed; errors name the file."""

    def __init__(self, root, name, temps):
        self.path = temps[name] = os.path.join(root, f"{name}{_TMP}{os.getpid()}")

    def __enter__(self):
        self.f = self._io(open, self.path, "wb")
        return self

    def write(self, data):
        self._io(self.f.write, data)

    def __exit__(self, kind, *_):
        try:
            if kind is None:
                self._io(self.f.flush)
                self._io(os.fsync, self.f.fileno())
        finally:
            self.f.close()

    def _io(self, fn, *args):
        try:
            return fn(*args)
        except OSError as e:
            raise OSError(f"cannot write {self.path}: {e.strerror or e}") from None


def regdb_train_data(data_path, split=1, img_w=144, img_h=288, workers=8):
    """Training half of a RegDB split, read and Lanczos-resized into memory."""
    files_v, labels_v = data_manager.read_regdb_list(data_path, split, "visible", "train")
    files_t, labels_t = data_manager.read_regdb_list(data_path, split, "thermal", "train")
    return TrainData(load_images(files_v, img_w, img_h, workers), labels_v,
                     load_images(files_t, img_w, img_h, workers), labels_t)


class IdentitySampler(Sampler):
    """Identity-balanced batches: P distinct identities (without replacement) x K visible and
    K thermal images each (with replacement). Yields (visible indices, thermal indices), both
    identity-contiguous in the same identity order. An epoch is max(N_visible, N_thermal) // (P*K)
    batches (extra_batch: one more, as AGW's and CAJ's code runs), drawn from (seed, epoch) alone:
    one sequence of global batches, whatever the number of processes. Process `rank` of
    `world_size` takes identities rank*P/N .. (rank+1)*P/N - 1 of each batch ([P/N*K] indices each),
    so N processes train on the 1-process batches split by identity, and a run resumed on another
    number of processes draws the batches it would have drawn anyway."""

    def __init__(self, labels_v, labels_t, num_pos, batch_size, seed=0, rank=0, extra_batch=False, world_size=1):
        labels_v, labels_t = np.asarray(labels_v), np.asarray(labels_t)
        self.ids = np.intersect1d(labels_v, labels_t)
        if batch_size > len(self.ids):
            raise ValueError(f"--batch-size {batch_size} identities per batch, but the training set has only "
                             f"{len(self.ids)} identities with both visible and thermal images")
        if num_pos < 1 or batch_size < 1:
            raise ValueError(f"--batch-size and --num_pos must be >= 1, got {batch_size} and {num_pos}")
        check_split(batch_size, world_size)
        self.P, self.K, self.seed, self.epoch = batch_size, num_pos, seed, 0
        share = batch_size // world_size
        self.mine = slice(rank * share, (rank + 1) * share)  # this process's identities of each batch
        self.num_batches = max(1, max(len(labels_v), len(labels_t)) // (batch_size * num_pos) + int(extra_batch))
        self._v = self._positions(labels_v)
        self._t = self._positions(labels_t)

    def _positions(self, labels):
        """(indices sorted by label, first position and count of each identity of self.ids)."""
        order = np.argsort(labels, kind="stable")
        starts = np.searchsorted(labels[order], self.ids, side="left")
        counts = np.searchsorted(labels[order], self.ids, side="right") - starts
        return order, starts, counts

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.num_batches

    def _draw(self, rng, chosen, positions):
        order, starts, counts = positions
        offset = (rng.random(chosen.shape + (self.K,)) * counts[chosen][..., None]).astype(np.int64)
        return order[starts[chosen][..., None] + offset].reshape(len(chosen), -1)

    def __iter__(self):
        # the 0 was the rank when every process drew batches of its own: 1-process runs keep their batches
        rng = np.random.default_rng([self.seed, self.epoch, 0])
        # P distinct identities per batch: the first P of a random permutation, for all batches at once
        chosen = rng.random((self.num_batches, len(self.ids))).argsort(1)[:, :self.P]
        idx_v = self._draw(rng, chosen, self._v)
        idx_t = self._draw(rng, chosen, self._t)
        # every process draws the whole epoch (the same numbers), then keeps its identities' images
        mine = (self.num_batches, self.P, self.K)
        yield from zip(idx_v.reshape(mine)[:, self.mine].reshape(self.num_batches, -1),
                       idx_t.reshape(mine)[:, self.mine].reshape(self.num_batches, -1))


def check_split(batch_size, world_size):
    """P identities per step must split into whole identities per process: else one line naming the
    nearest values that do."""
    if batch_size % world_size:
        below = batch_size - batch_size % world_size
        near = " or ".join(str(p) for p in (below, below + world_size) if p > 0)
        raise ValueError(f"--batch-size {batch_size}: the P identities of a step are shared out whole among the "
                         f"{world_size} processes, so P must be a multiple of {world_size}; use {near}")


class BatchData(Dataset):
    """Maps a whole batch of indices (one item of IdentitySampler) to its images.

    Returns uint8 tensors (visible [PK, H, W, 3], thermal [PK, H, W, 3]) and the labels
    [2PK] in the loss's order (visible then thermal), or, with `transform`, the authors'
    per-image float tensors (--cpu_aug, and bench.py's reference path).
    """

    def __init__(self, data, transform=None):
        self.data, self.transform = data, transform

    def __getitem__(self, batch):
        idx_v, idx_t = batch
        # sorted reads are sequential in a memory map; then restore the sampler's order
        v = torch.from_numpy(_gather(self.data.visible, idx_v))
        t = torch.from_numpy(_gather(self.data.thermal, idx_t))
        labels = torch.from_numpy(np.concatenate([self.data.labels_v[idx_v], self.data.labels_t[idx_t]]))
        if self.transform is not None:
            v = torch.stack([self.transform(img) for img in v.numpy()])
            t = torch.stack([self.transform(img) for img in t.numpy()])
        return v, t, labels


def _gather(array, idx):
    order = np.argsort(idx, kind="stable")
    out = np.empty((len(idx),) + array.shape[1:], dtype=array.dtype)
    out[order] = array[np.asarray(idx)[order]]
    return out


class ResidentBatches:
    """The whole uint8 training set on the training device, each batch gathered there from the
    sampler's indices: no loader workers and no image copies from the host in the loop (an epoch's
    indices cross once). Yields exactly what DataLoader(BatchData(data), sampler) yields, in the
    same order, already on the device."""

    def __init__(self, data, sampler, device, chunk_bytes=1 << 28):
        self.sampler, self.device = sampler, torch.device(device)
        self.visible = _to_device(data.visible, self.device, chunk_bytes)
        self.thermal = _to_device(data.thermal, self.device, chunk_bytes)
        self.labels_v = torch.from_numpy(np.asarray(data.labels_v, dtype=np.int64)).to(self.device)
        self.labels_t = torch.from_numpy(np.asarray(data.labels_t, dtype=np.int64)).to(self.device)

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        batches = list(self.sampler)
        if not batches:
            return
        idx_v = torch.from_numpy(np.stack([b[0] for b in batches]).astype(np.int64)).to(self.device)
        idx_t = torch.from_numpy(np.stack([b[1] for b in batches]).astype(np.int64)).to(self.device)
        for iv, it in zip(idx_v, idx_t):
            yield self.visible[iv], self.thermal[it], torch.cat((self.labels_v[iv], self.labels_t[it]))


def _to_device(array, device, chunk_bytes):
    """A (memory-mapped) uint8 array as a tensor on device, copied in chunks so that host memory never
    holds a second full copy."""
    out = torch.empty(array.shape, dtype=torch.uint8, device=device)
    rows = max(1, chunk_bytes // max(1, int(np.prod(array.shape[1:]))))
    for s in range(0, len(array), rows):
        out[s:s + rows].copy_(torch.from_numpy(np.array(array[s:s + rows])))  # a writable chunk
    return out
