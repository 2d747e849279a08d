"""Store the SYSU-MM01 training images as four npy files inside the dataset root.

    python pre_process_sysu.py --data_path /data/SYSU-MM01

Reads, for each training identity (train_id ∪ val_id) in sorted order, the sorted files of the
visible cameras 1, 2, 4, 5 and of the thermal cameras 3, 6, resizes them to 144x288 with Lanczos
and writes train_{rgb,ir}_resized_{img,label}.npy (labels: identities relabelled 0..C-1 in
sorted order). Each file is written under a temporary name and renamed when complete.
"""
import argparse
import os
from multiprocessing import Pool

import numpy as np
from tqdm import tqdm

import data_loader
import data_manager


def get_args_parser():
    parser = argparse.ArgumentParser(description="Pre-process the SYSU-MM01 training set into npy files")
    parser.add_argument("--data_path", required=True, help="SYSU-MM01 root (holds cam1..cam6 and exp/)")
    parser.add_argument("--img_w", default=144, type=int, help="stored image width")
    parser.add_argument("--img_h", default=288, type=int, help="stored image height")
    parser.add_argument("--workers", default=os.cpu_count(), type=int, help="processes reading images")
    return parser


def _read(job):
    path, img_w, img_h = job
    return data_loader.load_image(path, img_w, img_h)


def pid_of(path):
    return int(os.path.basename(os.path.dirname(path)))


def write_images(paths, out_path, img_w, img_h, pool, desc):
    """Resize every image into a memory-mapped npy under a temporary name, then rename it."""
    tmp = f"{out_path}.tmp-{os.getpid()}"
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), img_h, img_w, 3))
        jobs = [(p, img_w, img_h) for p in paths]
        for i, img in enumerate(tqdm(pool.imap(_read, jobs, chunksize=16), total=len(jobs), desc=desc)):
            out[i] = img
        out.flush()
        del out
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_npy(array, path):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def main(args):
    files = data_manager.sysu_train_files(args.data_path)
    if not files["visible"] or not files["thermal"]:
        raise SystemExit(f"{args.data_path}: no training images found under cam1..cam6 for exp/train_id.txt "
                         f"and exp/val_id.txt")
    pids = sorted({pid_of(p) for paths in files.values() for p in paths})
    pid2label = {pid: label for label, pid in enumerate(pids)}
    names = {"visible": ("train_rgb_resized_img.npy", "train_rgb_resized_label.npy"),
             "thermal": ("train_ir_resized_img.npy", "train_ir_resized_label.npy")}
    with Pool(max(1, args.workers)) as pool:
        for modality, (img_name, label_name) in names.items():
            paths = files[modality]
            labels = np.array([pid2label[pid_of(p)] for p in paths], dtype=np.int64)
            # labels first: the image file is the long one, and its presence marks a finished run
            save_npy(labels, os.path.join(args.data_path, label_name))
            write_images(paths, os.path.join(args.data_path, img_name), args.img_w, args.img_h, pool, modality)
    print(f"{len(pids)} identities: {len(files['visible'])} visible and {len(files['thermal'])} thermal "
          f"training images ({args.img_h}x{args.img_w}) written to {args.data_path}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
