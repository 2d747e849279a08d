"""Image lists of SYSU-MM01, RegDB and LLCM, exactly as the published protocols draw them."""
import os
import random
import re

import numpy as np

SYSU_VISIBLE = {"all": ("cam1", "cam2", "cam4", "cam5"), "indoor": ("cam1", "cam2")}
SYSU_THERMAL = ("cam3", "cam6")
SYSU_LAYOUT = "ROOT/cam1..cam6/<pid as 4 digits>/<file>.jpg and ROOT/exp/{train,val,test}_id.txt"
REGDB_LAYOUT = "ROOT/idx/{train,test}_{visible,thermal}_<trial>.txt with lines '<path under ROOT> <label>'"
# LLCM test folders: 'visible' = test_vis/cam1..cam9, 'thermal' (near-infrared) = test_nir without cam3.
LLCM_TEST = {"visible": ("test_vis", ("cam1", "cam2", "cam3", "cam4", "cam5", "cam6", "cam7", "cam8", "cam9")),
             "thermal": ("test_nir", ("cam1", "cam2", "cam4", "cam5", "cam6", "cam7", "cam8", "cam9"))}
LLCM_TRAIN = {"visible": "train_vis.txt", "thermal": "train_nir.txt"}
LLCM_LAYOUT = ("ROOT/idx/{train_vis,train_nir,test_id}.txt, ROOT/{vis,nir}/<pid>/<file>.jpg and "
               "ROOT/test_vis/cam1..cam9/<pid>/<file>.jpg, ROOT/test_nir/cam{1,2,4..9}/<pid>/<file>.jpg")
_LLCM_PATH = re.compile(r"test_(?:vis|nir)/cam(\d)/(\d{4})/[^/]+")

# What counts as an image in a dataset folder: stray files (.DS_Store, notes.txt, and macOS's
# "._name.jpg" companions, hence no hidden names) must neither crash a run nor shift a gallery draw.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(name):
    """Whether a file name is an image by this project's definition (extension, any case; not hidden)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def image_files(folder):
    """Sorted full paths of the image files directly in folder ([] when the folder is absent)."""
    if not os.path.isdir(folder):
        return []
    with os.scandir(folder) as entries:
        return sorted(os.path.join(folder, e.name) for e in entries if is_image_file(e.name) and e.is_file())


def _require(path, what, layout):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what}: missing {path} (expected layout: {layout})")


def read_id_line(path, what, layout):
    """Identities of a one-line, comma-separated id file (SYSU exp/*_id.txt, LLCM idx/test_id.txt)
    as sorted '%04d' strings; duplicates are kept, as the authors' loops keep them."""
    _require(path, what, layout)
    with open(path) as f:
        text = f.read().strip()
    try:
        ids = [int(tok) for tok in text.split(",") if tok.strip()]
    except ValueError:
        ids = None
    if not ids or not all(0 <= i <= 9999 for i in ids):
        raise ValueError(f"{path}: expected one line of comma-separated integer identities (0..9999)")
    # int() reads "0003,\n0006" too; the official readers take the first line only and drop the rest
    lines = len(text.splitlines())
    if lines > 1:
        raise ValueError(f"{path}: {lines} lines, of which the official reader takes only the first: expected "
                         f"one line of comma-separated integer identities (expected layout: {layout})")
    return sorted("%04d" % i for i in ids)


def read_sysu_ids(data_path, split):
    """Identities of exp/<split>_id.txt (one line of comma-separated ints) as sorted '%04d' strings."""
    return read_id_line(os.path.join(data_path, "exp", f"{split}_id.txt"), "SYSU-MM01", SYSU_LAYOUT)


def sysu_files(data_path, pid, cam):
    """Sorted image paths of one identity under one camera ([] when the folder is absent)."""
    return image_files(os.path.join(data_path, cam, pid))


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


def _check_modal(modal):
    if modal not in ("visible", "thermal"):
        raise ValueError(f"modal must be 'visible' or 'thermal', got {modal}")


def read_list(data_path, path, what, layout):
    """(absolute image paths, int64 labels) of a '<path under data_path> <integer label>' list file."""
    _require(path, what, layout)
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


def read_regdb_list(data_path, trial, modal, split):
    """(absolute image paths, int labels) of idx/<split>_<modal>_<trial>.txt."""
    _check_modal(modal)
    return read_list(data_path, os.path.join(data_path, "idx", f"{split}_{modal}_{trial}.txt"), "RegDB",
                     REGDB_LAYOUT)


def process_test_regdb(data_path, trial=1, modal="visible"):
    """Test split of a RegDB trial for one modality: (image paths, labels)."""
    return read_regdb_list(data_path, trial, modal, "test")


def _llcm_test_groups(data_path, modal):
    """Sorted image files of every existing (test identity, camera) folder, identities in sorted
    order and cameras in the official order: the walk of the authors' builders."""
    _check_modal(modal)
    ids = read_id_line(os.path.join(data_path, "idx", "test_id.txt"), "LLCM", LLCM_LAYOUT)
    top, cams = LLCM_TEST[modal]
    _require(os.path.join(data_path, top), "LLCM", LLCM_LAYOUT)
    groups = [image_files(os.path.join(data_path, top, cam, pid)) for pid in ids for cam in cams]
    groups = [files for files in groups if files]
    if not groups:
        raise ValueError(f"LLCM: no test images in {os.path.join(data_path, top)}/camN/<id>/ for the ids of "
                         f"idx/test_id.txt (expected layout: {LLCM_LAYOUT})")
    return groups


def _llcm_lists(data_path, paths):
    """(paths, pids, camids) with camera and identity read from the path relative to the root
    (test_vis|test_nir/camN/<pid>/file): a root whose own path contains 'cam' cannot confuse it."""
    prefix = len(os.path.join(data_path, ""))
    parsed = [_LLCM_PATH.fullmatch(p[prefix:].replace(os.sep, "/")) for p in paths]
    camids = np.array([int(m.group(1)) for m in parsed], dtype=np.int64)
    pids = np.array([int(m.group(2)) for m in parsed], dtype=np.int64)
    return list(paths), pids, camids


def process_query_llcm(data_path, modal="thermal"):
    """LLCM query set of one modality: every test image, identities sorted, cameras in order."""
    groups = _llcm_test_groups(data_path, modal)
    return _llcm_lists(data_path, [f for files in groups for f in files])


def process_gallery_llcm(data_path, modal="visible", trial=0):
    """LLCM gallery of one trial: one random image per (test identity, camera) folder.

    random.Random(trial).choice draws what the authors' random.seed(trial) + random.choice draw,
    one draw per existing folder in their walk order, without touching the global generator."""
    rng = random.Random(trial)
    return _llcm_lists(data_path, [rng.choice(files) for files in _llcm_test_groups(data_path, modal)])


def llcm_train_files(data_path):
    """LLCM training lists, labels as given (no relabelling: the official checkpoints' classifier
    rows follow them): {'visible': (paths, labels), 'thermal': (paths, labels)}."""
    _require(os.path.join(data_path, "idx"), "LLCM", LLCM_LAYOUT)
    out = {}
    for modal, name in LLCM_TRAIN.items():
        path = os.path.join(data_path, "idx", name)
        files, labels = read_list(data_path, path, "LLCM", LLCM_LAYOUT)
        if len(labels) and labels.min() < 0:
            raise ValueError(f"{path}: labels must be >= 0, found {labels.min()}")
        out[modal] = (files, labels)
    return out
