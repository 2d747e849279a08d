"""Image lists of SYSU-MM01 and RegDB, exactly as the published protocols draw them."""
import os
import random

import numpy as np

SYSU_VISIBLE = {"all": ("cam1", "cam2", "cam4", "cam5"), "indoor": ("cam1", "cam2")}
SYSU_THERMAL = ("cam3", "cam6")
SYSU_LAYOUT = "ROOT/cam1..cam6/<pid as 4 digits>/<file>.jpg and ROOT/exp/{train,val,test}_id.txt"
REGDB_LAYOUT = "ROOT/idx/{train,test}_{visible,thermal}_<trial>.txt with lines '<path under ROOT> <label>'"


def _require(path, what, layout):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what}: missing {path} (expected layout: {layout})")


def read_sysu_ids(data_path, split):
    """Identities of exp/<split>_id.txt (one line of comma-separated ints) as sorted '%04d' strings."""
    path = os.path.join(data_path, "exp", f"{split}_id.txt")
    _require(path, "SYSU-MM01", SYSU_LAYOUT)
    with open(path) as f:
        text = f.read().strip()
    try:
        ids = [int(tok) for tok in text.split(",") if tok.strip()]
    except ValueError:
        raise ValueError(f"{path}: expected one line of comma-separated integer identities") from None
    return sorted("%04d" % i for i in ids)


def sysu_files(data_path, pid, cam):
    """Sorted image paths of one identity under one camera ([] when the folder is absent)."""
    folder = os.path.join(data_path, cam, pid)
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, name) for name in os.listdir(folder))


def _check_sysu_cameras(data_path, cameras):
    for cam in cameras:
        _require(os.path.join(data_path, cam), "SYSU-MM01", SYSU_LAYOUT)


def _sysu_lists(paths):
    """(paths, pids, camids) with pid and camera read from each path's .../camN/<pid>/file."""
    pids = np.array([int(os.path.basename(os.path.dirname(p))) for p in paths], dtype=np.int64)
    camids = np.array([int(os.path.basename(os.path.dirname(os.path.dirname(p)))[3:]) for p in paths],
                      dtype=np.int64)
    return list(paths), pids, camids


def process_query_sysu(data_path, mode="all"):
    """Query set, both modes: every thermal image (cam3, cam6) of the test identities."""
    if mode not in SYSU_VISIBLE:
        raise ValueError(f"--mode must be 'all' or 'indoor', got {mode}")
    ids = read_sysu_ids(data_path, "test")
    _check_sysu_cameras(data_path, SYSU_THERMAL)
    files = [f for pid in ids for cam in SYSU_THERMAL for f in sysu_files(data_path, pid, cam)]
    return _sysu_lists(files)


def process_gallery_sysu(data_path, mode="all", trial=0, gall_mode="single"):
    """Gallery of one trial: per test identity and visible camera, one random image (single-shot)
    or up to 10 (multi-shot), drawn with Python's random seeded by the trial number.

    A private random.Random(trial) draws the same sequence as the authors' random.seed(trial) +
    random.choice on the global generator, without disturbing the caller's random state.
    """
    if mode not in SYSU_VISIBLE:
        raise ValueError(f"--mode must be 'all' or 'indoor', got {mode}")
    if gall_mode not in ("single", "multi"):
        raise ValueError(f"--gall_mode must be 'single' or 'multi', got {gall_mode}")
    ids = read_sysu_ids(data_path, "test")
    _check_sysu_cameras(data_path, SYSU_VISIBLE[mode])
    rng = random.Random(trial)
    files = []
    for pid in ids:
        for cam in SYSU_VISIBLE[mode]:
            candidates = sysu_files(data_path, pid, cam)
            if not candidates:
                continue
            if gall_mode == "single":
                files.append(rng.choice(candidates))
            else:
                files.extend(rng.sample(candidates, min(10, len(candidates))))
    return _sysu_lists(files)


def sysu_train_files(data_path):
    """Training images (train_id ∪ val_id): {'visible': [paths], 'thermal': [paths]}, identities in
    sorted order, cameras in order, files sorted (the order pre_process_sysu.py stores them in)."""
    ids = sorted(set(read_sysu_ids(data_path, "train")) | set(read_sysu_ids(data_path, "val")))
    _check_sysu_cameras(data_path, SYSU_VISIBLE["all"] + SYSU_THERMAL)
    return {
        "visible": [f for pid in ids for cam in SYSU_VISIBLE["all"] for f in sysu_files(data_path, pid, cam)],
        "thermal": [f for pid in ids for cam in SYSU_THERMAL for f in sysu_files(data_path, pid, cam)],
    }


def read_regdb_list(data_path, trial, modal, split):
    """(absolute image paths, int labels) of idx/<split>_<modal>_<trial>.txt."""
    if modal not in ("visible", "thermal"):
        raise ValueError(f"modal must be 'visible' or 'thermal', got {modal}")
    path = os.path.join(data_path, "idx", f"{split}_{modal}_{trial}.txt")
    _require(path, "RegDB", REGDB_LAYOUT)
    files, labels = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{path}:{n}: expected '<image path> <integer label>', got {line.strip()!r}")
            files.append(os.path.join(data_path, parts[0]))
            labels.append(int(parts[1]))
    return files, np.array(labels, dtype=np.int64)


def process_test_regdb(data_path, trial=1, modal="visible"):
    """Test split of a RegDB trial for one modality: (image paths, labels)."""
    return read_regdb_list(data_path, trial, modal, "test")
