"""Store the SYSU-MM01 training images as four npy files inside the dataset root.

    python pre_process_sysu.py --data_path /data/SYSU-MM01

Reads, for each training identity (train_id ∪ val_id) in sorted order, the sorted image files of
the visible cameras 1, 2, 4, 5 and of the thermal cameras 3, 6, resizes them to 144x288 with
Lanczos and writes train_{rgb,ir}_resized_{img,label}.npy (labels: identities relabelled 0..C-1
in sorted order). The four files change together or not at all (data_loader.write_training_set).
"""
import argparse
import os

import numpy as np

import data_loader
import data_manager


def get_args_parser():
    parser = argparse.ArgumentParser(description="Pre-process the SYSU-MM01 training set into npy files")
    parser.add_argument("--data_path", required=True, help="SYSU-MM01 root (holds cam1..cam6 and exp/)")
    parser.add_argument("--img_w", default=144, type=int, help="stored image width")
    parser.add_argument("--img_h", default=288, type=int, help="stored image height")
    parser.add_argument("--workers", default=0, type=int,
                        help="processes reading images (default 0: one per CPU core)")
    return parser


def check_args(args):
    """Flags every pre_process script shares: an existing root, a positive image size, --workers >= 0."""
    if not os.path.isdir(args.data_path):
        raise FileNotFoundError(f"--data_path {args.data_path}: no such folder")
    if args.img_w < 1 or args.img_h < 1:
        raise ValueError(f"--img_w and --img_h must be positive, got {args.img_w}x{args.img_h}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0 (0: one per CPU core), got {args.workers}")


def pid_of(path):
    return int(os.path.basename(os.path.dirname(path)))


def main(args):
    check_args(args)
    files = data_manager.sysu_train_files(args.data_path)
    if not files["visible"] or not files["thermal"]:
        raise ValueError(f"{args.data_path}: no training images found under cam1..cam6 for exp/train_id.txt "
                         f"and exp/val_id.txt")
    for line in data_manager.sysu_train_warnings(args.data_path, files):  # e.g. an emptied camera
        print(f"warning: {line}")
    pids = sorted({pid_of(p) for paths in files.values() for p in paths})
    pid2label = {pid: label for label, pid in enumerate(pids)}
    visible, thermal = ((paths, np.array([pid2label[pid_of(p)] for p in paths], dtype=np.int64))
                        for paths in (files["visible"], files["thermal"]))
    folder = data_loader.stored_set_folder(args.data_path, args.img_h)  # 384 high: beside the root's set
    os.makedirs(folder, exist_ok=True)
    data_loader.write_training_set(folder, visible, thermal, args.img_w, args.img_h, args.workers)
    print(f"{len(pids)} identities: {len(files['visible'])} visible and {len(files['thermal'])} thermal "
          f"training images ({args.img_h}x{args.img_w}) written to {folder}")


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {e}")
    except KeyboardInterrupt:
        raise SystemExit("error: interrupted")
