"""Datasets and image transforms.

Images travel as uint8 HxWx3 arrays and become float only on the device that uses them:
`normalize` (test) and `BatchAugment` (train) are batched tensor ops, so a GPU is not starved
by per-image PIL work. `per_image_train_transform` is the authors' torchvision pipeline,
kept as the reference the batched one is tested against and as bench.py's plain path.
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import Dataset

import data_manager

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PAD = 10  # the authors' zero padding before the random crop, in pixels at 288x144
SYSU_NPY = ("train_rgb_resized_img.npy", "train_rgb_resized_label.npy",
            "train_ir_resized_img.npy", "train_ir_resized_label.npy")


def load_image(path, img_w, img_h):
    """An image file as uint8 [img_h, img_w, 3]: converted to RGB (thermal JPEGs may have one
    channel), Lanczos-resized as the authors do."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB").resize((img_w, img_h), Image.LANCZOS)
    except (OSError, ValueError) as e:
        raise OSError(f"cannot read image {path}: {e}") from None
    return np.array(img, dtype=np.uint8)


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
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return x.permute(0, 3, 1, 2).float().div(255).sub(mean).div(std)


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
    three), normalise; then, optionally, random erasing and the channel augmentation of
    Ye et al. (ICCV 2021) on the visible half."""

    def __init__(self, erasing_p=0.0, channel_aug=0.0, pad=PAD):
        self.pad = pad
        self.erasing_p = erasing_p
        self.channel_aug = channel_aug

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

    def __call__(self, x_visible, x_thermal):
        """uint8 [B, H, W, 3] each -> normalised float [B, 3, H, W] each."""
        v, t = normalize(self.crop_flip(x_visible)), normalize(self.crop_flip(x_thermal))
        if self.channel_aug > 0:
            v = channel_augment(v, self.channel_aug)
        if self.erasing_p > 0:
            v, t = random_erase(v, self.erasing_p), random_erase(t, self.erasing_p)
        return v, t


def channel_augment(x, p):
    """With probability p, replace a visible image by its R, G or B channel or its grayscale
    (uniformly), so that colour stops being a shortcut (Ye et al., ICCV 2021)."""
    b = x.shape[0]
    dev = x.device
    choice = torch.randint(0, 4, (b,), device=dev)
    gray = (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    picked = torch.where(choice[:, None, None, None] == 3, gray,
                         x.gather(1, choice.clamp(max=2)[:, None, None, None].expand(-1, 1, *x.shape[2:])))
    apply = (torch.rand(b, device=dev) < p)[:, None, None, None]
    return torch.where(apply, picked.expand_as(x), x)


def random_erase(x, p, scale=(0.02, 0.4), ratio=(0.3, 3.3)):
    """Zero a random rectangle (area fraction in scale, aspect in ratio) of each image with
    probability p; the rectangle is clipped to fit instead of torchvision's retries."""
    b, _, h, w = x.shape
    dev = x.device
    area = torch.empty(b, device=dev).uniform_(*scale) * h * w
    log_r = torch.empty(b, device=dev).uniform_(float(np.log(ratio[0])), float(np.log(ratio[1])))
    eh = (area * log_r.exp()).sqrt().round().clamp(1, h)
    ew = (area / log_r.exp()).sqrt().round().clamp(1, w)
    top = (torch.rand(b, device=dev) * (h - eh + 1)).floor()
    left = (torch.rand(b, device=dev) * (w - ew + 1)).floor()
    ys = torch.arange(h, device=dev)[None, :, None]
    xs = torch.arange(w, device=dev)[None, None, :]
    inside = ((ys >= top[:, None, None]) & (ys < (top + eh)[:, None, None])
              & (xs >= left[:, None, None]) & (xs < (left + ew)[:, None, None]))
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
    paths = [os.path.join(data_path, name) for name in SYSU_NPY]
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"missing {p}: run `python pre_process_sysu.py --data_path {data_path}` first")
    vis, lab_v, th, lab_t = (np.load(p, mmap_mode="r") for p in paths)
    data = TrainData(vis, np.asarray(lab_v), th, np.asarray(lab_t))
    if data.image_size != (img_h, img_w) or th.shape[1:3] != (img_h, img_w):
        raise ValueError(f"{paths[0]} holds {data.image_size[0]}x{data.image_size[1]} (HxW) images but "
                         f"--img_h {img_h} --img_w {img_w} was asked: re-run pre_process_sysu.py with "
                         f"--img_h {img_h} --img_w {img_w}, or pass the stored size")
    return data


def regdb_train_data(data_path, trial=1, img_w=144, img_h=288, workers=8):
    """RegDB training split of a trial, read and Lanczos-resized into memory."""
    files_v, labels_v = data_manager.read_regdb_list(data_path, trial, "visible", "train")
    files_t, labels_t = data_manager.read_regdb_list(data_path, trial, "thermal", "train")
    return TrainData(load_images(files_v, img_w, img_h, workers), labels_v,
                     load_images(files_t, img_w, img_h, workers), labels_t)


class BatchData(Dataset):
    """Maps a whole batch of indices (one item of IdentitySampler) to its images.

    Returns uint8 tensors (visible [PK, H, W, 3], thermal [PK, H, W, 3]) and the labels
    [2PK] in the loss's order (visible then thermal), or, with `transform`, the authors'
    per-image float tensors (the plain path).
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
