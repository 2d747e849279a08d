"""Features of your own images with a trained model, from Python or the command line.

    from extract import FeatureExtractor
    extractor = FeatureExtractor("save_model/sysu_best.pth")
    feats = extractor("my_images/", modality="thermal")     # float32 [N, D], L2-normalised

    python extract.py --resume save_model/sysu_best.pth --images my_images/ --modality thermal --out feats.npy

Any checkpoint test_mine.py evaluates: this project's carry their architecture and image size; the
original code's ({'net': ...}) take the architecture flags (share_net=..., pcb=..., method="dgtl",
bpool=..., ... as keyword arguments; --share_net ... on the command line). Images go through the
evaluation's preprocessing (8-bit RGB, Lanczos resize, ImageNet normalisation) and the model's
`features`, so the features are test_mine.py's for the same images.
"""
import argparse
import csv
import io
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

import checkpoints
import data_loader
import data_manager
import eval_metrics
import fileio
import settings
import utils

def check_dataset(dataset, info):
    """--dataset fills what a reference checkpoint does not record; one of ours records its dataset (and
    its image size, which test_mine.py keeps on any dataset too), so another --dataset would be ignored."""
    if dataset is not None and info["dataset"] is not None and dataset != info["dataset"]:
        raise ValueError(f"--dataset {dataset}: {info['checkpoint']} records --dataset {info['dataset']}, which "
                         f"sets its model and image size; leave --dataset out")


def image_list(images, flag="images"):
    """A folder path (every image file under it, sorted), one path, PIL image or array, a uint8
    [N, H, W, 3] array, or a sequence of those -> a list of items."""
    if isinstance(images, (str, os.PathLike)):
        path = os.fspath(images)
        return data_manager.images_under(path, flag) if os.path.isdir(path) else [path]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        items = list(images)
    elif isinstance(images, (Image.Image, np.ndarray)):
        items = [images]
    else:
        items = list(images)
    if not items:
        raise ValueError(f"{flag}: no images given")
    return items


def to_uint8(item, img_w, img_h, index=0):
    """One image as uint8 [img_h, img_w, 3], exactly as the evaluation reads an image file."""
    if isinstance(item, (str, os.PathLike)):
        return data_loader.load_image(os.fspath(item), img_w, img_h)  # its OSError names the file
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise ValueError(f"image {index}: expected a uint8 HxWx3 array, got {item.dtype} {item.shape}")
        item = Image.fromarray(item)
    if not isinstance(item, Image.Image):
        raise ValueError(f"image {index}: expected a file path, a PIL image or a uint8 HxWx3 array, got "
                         f"{type(item).__name__}")
    try:
        return data_loader.resize_image(item, img_w, img_h)
    except (OSError, ValueError) as e:
        raise ValueError(f"image {index}: {e}") from None


def as_device(device):
    """A torch.device as given, else utils.select_device's reading of None / 'auto' / 'cpu' / an index."""
    return device if isinstance(device, torch.device) else utils.select_device(device)


class FeatureExtractor:
    """extractor(images, modality) -> the reported feature of each image, float32 numpy [N, D]
    (L2-normalised: rank by dot product; DEEN's: float64, its six flip-summed vectors side by side, whose
    dot products are its test's similarities), or with all_features=True {name: [N, D]} of every feature
    the model evaluates (model.feature_names, reported first). Images: see image_list. flip: each
    feature averaged with its mirror image's (None: as the checkpoint's method's reference tests, CAJ's
    flip; else not)."""

    def __init__(self, checkpoint, device=None, half=False, batch_size=128, workers=4, flip=None, **arch_flags):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device, self.half, self.batch_size, self.workers = as_device(device), half, batch_size, workers
        model, self.info = checkpoints.load_model(checkpoint, **arch_flags)
        self.model = checkpoints.on_device(model, self.device).eval()
        self.img_w, self.img_h = self.info["img_w"], self.info["img_h"]
        self.feature_names = tuple(self.model.feature_names)
        self.feature = self.feature_names[0]
        self.flip = settings.flip_default(self.info["method"]) == "on" if flip is None else bool(flip)

    def features_of(self, batch, modality):
        """{name: float32 [B, D] on the CPU} of a uint8 [B, H, W, 3] batch: test_mine's extraction itself."""
        out = eval_metrics.extract_features(self.model, batch, modality, self.device, len(batch), self.half,
                                            all_features=True, flip=self.flip)
        return {name: f.cpu() for name, f in out.items()}

    def __call__(self, images, modality="visible", all_features=False):
        data_manager.check_modality(modality)
        items = image_list(images)
        parts = {name: [] for name in self.feature_names}
        with ThreadPoolExecutor(max(1, self.workers)) as pool:  # PIL releases the GIL
            for start in range(0, len(items), self.batch_size):
                chunk = range(start, min(start + self.batch_size, len(items)))
                batch = np.stack(list(pool.map(lambda i: to_uint8(items[i], self.img_w, self.img_h, i), chunk)))
                for name, f in self.features_of(batch, modality).items():
                    parts[name].append(f)
        feats = {name: torch.cat(v).numpy() for name, v in parts.items()}
        return feats if all_features else feats[self.feature]


def add_model_flags(parser):
    """--resume, and the flags of an original-code checkpoint (this project's carry their own)."""
    parser.add_argument("--resume", required=True, help="checkpoint file (test_mine.py's --resume)")
    g = parser.add_argument_group("original-code checkpoints: architecture (this project's carry theirs)")
    settings.flag("dataset").add_to(g, help="whose defaults fill what is left out (default sysu: 288x144); a "
                                            "checkpoint of this project's records its own (another is refused)",
                                    choices=None)  # checked with the checkpoint, in one line
    for name in ("img_w", "img_h"):
        settings.flag(name).add_to(g, help="default: the checkpoint's, else the dataset's")
    for flag in settings.architecture_flags():
        flag.add_to(g)


def model_flags(args):
    """The keyword arguments of checkpoints.load_model / FeatureExtractor given on the command line."""
    return {k: getattr(args, k) for k in checkpoints.MODEL_FLAGS if getattr(args, k) is not None}


def get_args_parser():
    parser = argparse.ArgumentParser(description="Features of a folder of images with a trained model")
    add_model_flags(parser)
    parser.add_argument("--images", required=True, help="folder of images (every image file under it, sorted)")
    parser.add_argument("--modality", default="visible", help="visible | thermal: the stream that runs")
    parser.add_argument("--out", required=True, help="features, float32 [N, D] .npy")
    parser.add_argument("--csv", default=None, help="image paths in row order (default: --out with .csv)")
    parser.add_argument("--batch_size", default=128, type=int)
    settings.flag("workers").add_to(parser, default=4, help="threads reading images")
    for name in ("gpu", "half", "flip_test"):
        settings.flag(name).add_to(parser)
    return parser


CSV_HEADER = ["row", "path"]


def listed_rows(path):
    """The number of images an image list of extract.py holds (header row,path, then rows 0, 1, ... in
    order), else None: how an earlier --csv is told from a user's file."""
    with open(path, newline="", encoding="utf-8") as f:
        if f.readline(16).rstrip("\r\n") != ",".join(CSV_HEADER):  # bounded: it may be a large binary file
            return None
        n = 0
        for row in csv.reader(f):
            if len(row) != 2 or row[0] != str(n):
                return None
            n += 1
    return n


def feature_rows(path):
    """N of a float32 [N, D] .npy (what --out holds), else None; read from the header alone."""
    with open(path, "rb") as f:
        major = np.lib.format.read_magic(f)[0]
        if major not in (1, 2):  # 3.0: field names in UTF-8, which np.save never needs for [N, D] float32
            return None
        shape, fortran, dtype = getattr(np.lib.format, f"read_array_header_{major}_0")(f)
    return shape[0] if dtype == np.float32 and len(shape) == 2 and not fortran else None


IMAGE_LIST = fileio.OutputKind("an image list of extract.py (row,path)", lambda p: listed_rows(p) is not None)
FEATURES = fileio.OutputKind("features of extract.py (float32 [N, D])", lambda p: feature_rows(p) is not None)


def check_outputs(args):
    """Both outputs can be written and are no input, checked before any image is read. They are one
    output: existing ones are replaced only as the pair extract.py wrote (as many features as paths)."""
    args.csv = args.csv or os.path.splitext(args.out)[0] + ".csv"
    if os.path.abspath(args.csv) == os.path.abspath(args.out):
        raise ValueError(f"--csv {args.csv}: the same file as --out; give another name")
    for flag, path, kind in (("--out", args.out, FEATURES), ("--csv", args.csv, IMAGE_LIST)):
        fileio.check_output_file(path, flag, kind, inputs=[args.resume], input_dirs=[args.images])
    if os.path.exists(args.out) and (not os.path.exists(args.csv) or
                                     feature_rows(args.out) != listed_rows(args.csv)):
        raise ValueError(f"--out {args.out}: not written with the image list {args.csv} (extract.py writes the two "
                         f"together), so it may be a file of yours; refusing to replace it: give another file name")


def write_outputs(feats, paths, out, csv_path):
    """The array and the paths (row, path): both change together or neither (fileio.write_together)."""
    def rows(f):
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(CSV_HEADER)
        writer.writerows(enumerate(paths))
        f.write(text.getvalue())
    fileio.write_together([(out, lambda f: np.save(f, feats), True), (csv_path, rows, False)])


def main(argv=None, log=print):
    args = get_args_parser().parse_args(argv)
    data_manager.check_modality(args.modality, "--modality")
    if not os.path.exists(args.images):
        raise FileNotFoundError(f"--images: no such folder or image file: {args.images}")
    check_outputs(args)
    paths = image_list(args.images, "--images")
    flip = None if args.flip_test is None else args.flip_test == "on"
    extractor = FeatureExtractor(args.resume, args.gpu, args.half, args.batch_size, args.workers, flip,
                                 **model_flags(args))
    check_dataset(args.dataset, extractor.info)
    feats = extractor(paths, args.modality)
    write_outputs(feats, paths, args.out, args.csv)
    log(f"{len(paths)} {args.modality} images -> {args.out} ({feats.shape[1]}-d {extractor.feature} feature), "
        f"paths in {args.csv}")
    return feats


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
    except KeyboardInterrupt:
        raise SystemExit("error: interrupted (nothing was written)")
