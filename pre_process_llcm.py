"""Store the LLCM training images as four npy files inside the dataset root.

    python pre_process_llcm.py --data_path /data/LLCM

Reads idx/train_vis.txt (visible) and idx/train_nir.txt (near-infrared, stored as the thermal
modality), lines '<vis|nir>/<pid>/<file>.jpg <label>', in list order with the labels as given
(the official code does not relabel; its checkpoints' classifier rows follow them), resizes every
image to 144x288 with Lanczos and writes train_{rgb,ir}_resized_{img,label}.npy like
pre_process_sysu.py. The four files change together or not at all.
"""
import argparse
import os

import data_loader
import data_manager
from pre_process_sysu import check_args


def get_args_parser():
    parser = argparse.ArgumentParser(description="Pre-process the LLCM training set into npy files")
    parser.add_argument("--data_path", required=True, help="LLCM root (holds idx/, vis/, nir/)")
    parser.add_argument("--img_w", default=144, type=int, help="stored image width")
    parser.add_argument("--img_h", default=288, type=int, help="stored image height")
    parser.add_argument("--workers", default=0, type=int,
                        help="processes reading images (default 0: one per CPU core)")
    return parser


def main(args):
    check_args(args)
    lists = data_manager.llcm_train_files(args.data_path)
    for modality, name in data_manager.LLCM_TRAIN.items():
        if not lists[modality][0]:
            raise ValueError(f"{os.path.join(args.data_path, 'idx', name)}: no training images listed")
    visible, thermal = lists["visible"], lists["thermal"]
    folder = data_loader.stored_set_folder(args.data_path, args.img_h)  # 384 high: beside the root's set
    os.makedirs(folder, exist_ok=True)
    data_loader.write_training_set(folder, visible, thermal, args.img_w, args.img_h, args.workers)
    num_ids = len(set(visible[1].tolist()) | set(thermal[1].tolist()))
    print(f"{num_ids} identities: {len(visible[0])} visible and {len(thermal[0])} near-infrared "
          f"training images ({args.img_h}x{args.img_w}) written to {folder}")


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {e}")
    except KeyboardInterrupt:
        raise SystemExit("error: interrupted")
