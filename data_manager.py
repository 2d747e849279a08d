"""Image lists of SYSU-MM01, RegDB and LLCM, exactly as the published protocols draw them."""
import collections
import os
import random
import re
import warnings

import numpy as np

# The modalities, by name: every argument that picks one takes these names (the data lists', the network's,
# extract's); a per-sample modality tensor (the losses') holds each sample's index here: visible 0, thermal 1.
MODALITIES = ("visible", "thermal")


def check_modality(modality, what="modality", both=False):
    """modality if it is one of MODALITIES (or, with both, None: the two together), else a one-line ValueError
    naming what and the accepted values. Not an int: the reference codes' 0 both / 1 visible / 2 thermal
    would otherwise be read as some other stream."""
    if (modality is None and both) or (isinstance(modality, str) and modality in MODALITIES):
        return modality
    accepted = "'visible', 'thermal' or None (both)" if both else "'visible' or 'thermal'"
    raise ValueError(f"{what} must be {accepted}, got {modality!r}")


def other_modality(modality):
    """The other name of MODALITIES."""
    return MODALITIES[1 - MODALITIES.index(check_modality(modality))]


SYSU_VISIBLE = {"all": ("cam1", "cam2", "cam4", "cam5"), "indoor": ("cam1", "cam2")}
SYSU_THERMAL = ("cam3", "cam6")
SYSU_LAYOUT = "ROOT/cam1..cam6/<pid as 4 digits>/<file>.jpg and ROOT/exp/{train,val,test}_id.txt"
REGDB_LAYOUT = "ROOT/idx/{train,test}_{visible,thermal}_<split>.txt with lines '<path under ROOT> <label>'"
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


def images_under(folder, flag):
    """Every image file under folder (recursively), sorted: a folder of one's own images (folder search,
    extract.py); an error naming flag where there is none."""
    if not folder or not os.path.isdir(folder):
        raise FileNotFoundError(f"{flag}: no such folder: {folder}")
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(folder) for f in names
                   if is_image_file(f))
    if not files:
        raise FileNotFoundError(f"{flag}: no image files ({', '.join(IMAGE_EXTENSIONS)}) under "
                                f"{folder}")
    return files


def _require(path, what, layout):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what}: missing {path} (expected layout: {layout})")


def _read_text(path):
    """A list or id file's text: UTF-8, a leading byte-order mark (Windows editors write one) dropped."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}): expected a plain text file") from None


class DataWarning(UserWarning):
    """A dataset that reads, but with a part the protocol reads missing (e.g. an emptied camera)."""


_WARNED = {}  # once per message and process (test_mine reads a gallery per trial)


def camera_warnings(dataset, counts, num_ids, split, role, total):
    """One-line messages, one per camera of counts ({camera: images of the identities asked for})
    that holds none of them: the protocol then runs on fewer images without failing. Returned,
    not printed: callers log them (pre_process_sysu.py) or warn (the query and gallery readers)."""
    if not num_ids:
        return []
    out = []
    for cam in (c for c, n in counts.items() if n == 0):
        others = ", ".join(f"{c}: {n} images" for c, n in counts.items() if c != cam)
        out.append(f"{dataset} {cam} holds no images of the {num_ids} {split} identities ({others}); "
                   f"the {role} has {total} images")
    return out


def _warn(data_path, messages):
    # named after the dataset root, line 0: Python prints no source line, so each is one line
    for message in messages:
        warnings.warn_explicit(message, DataWarning, filename=data_path, lineno=0, registry=_WARNED)


def read_id_line(path, what, layout):
    """Identities of a one-line, comma-separated id file (SYSU exp/*_id.txt, LLCM idx/test_id.txt)
    as sorted '%04d' strings; duplicates are kept, as the authors' loops keep them."""
    _require(path, what, layout)
    text = _read_text(path).strip()
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


def sysu_camera_counts(paths, cameras):
    """{camera: how many of paths lie in ROOT/<camera>/<pid>/} for each of cameras, in order."""
    found = collections.Counter(os.path.basename(os.path.dirname(os.path.dirname(p))) for p in paths)
    return {cam: found.get(cam, 0) for cam in cameras}


def sysu_train_warnings(data_path, files):
    """camera_warnings of sysu_train_files' result: a camera without any training identity's image."""
    ids = set(read_sysu_ids(data_path, "train")) | set(read_sysu_ids(data_path, "val"))
    out = []
    for modality, cams in (("visible", SYSU_VISIBLE["all"]), ("thermal", SYSU_THERMAL)):
        counts = sysu_camera_counts(files[modality], cams)
        out += camera_warnings("SYSU-MM01", counts, len(ids), "training", f"{modality} training set",
                               len(files[modality]))
    return out


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
    _warn(data_path, camera_warnings("SYSU-MM01", sysu_camera_counts(files, SYSU_THERMAL), len(set(ids)),
                                     "test", "query set", len(files)))
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
    # a camera without a drawn image has no image at all: the drawn counts tell the empty ones
    counts = sysu_camera_counts(files, SYSU_VISIBLE[mode])
    _warn(data_path, camera_warnings("SYSU-MM01", counts, len(set(ids)), "test", "gallery set", len(files)))
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


_LABEL = re.compile(r"-?[0-9]+")  # ASCII digits: str.isdigit() takes '²', which int() refuses


def read_list(data_path, path, what, layout):
    """(absolute image paths, int64 labels >= 0) of a '<path under data_path> <integer label>' list
    file (a line number in every error)."""
    _require(path, what, layout)
    files, labels = [], []
    for n, line in enumerate(_read_text(path).split("\n"), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not _LABEL.fullmatch(parts[1]):
            raise ValueError(f"{path}:{n}: expected '<image path> <integer label>', got {line.strip()!r}")
        label = int(parts[1])
        if label < 0:  # a training label is a classifier row, a test label an identity number
            raise ValueError(f"{path}:{n}: label {label} is negative: expected labels >= 0")
        files.append(os.path.join(data_path, parts[0]))
        labels.append(label)
    return files, np.array(labels, dtype=np.int64)


def read_regdb_list(data_path, split, modality, part):
    """(absolute image paths, int labels) of idx/<part>_<modality>_<split>.txt (part 'train' or 'test' of the
    numbered RegDB split), which must list an image (an empty list would fail deep in training or evaluation)."""
    check_modality(modality)
    path = os.path.join(data_path, "idx", f"{part}_{modality}_{split}.txt")
    files, labels = read_list(data_path, path, "RegDB", REGDB_LAYOUT)
    if not files:
        role = "training" if part == "train" else part
        raise ValueError(f"{path}: no {role} images listed: expected lines '<image path> <integer label>' "
                         f"(expected layout: {REGDB_LAYOUT})")
    return files, labels


def process_test_regdb(data_path, split=1, modality="visible"):
    """Test half of a RegDB split for one modality: (image paths, labels)."""
    return read_regdb_list(data_path, split, modality, "test")


def _llcm_test_groups(data_path, modality):
    """Sorted image files of every existing (test identity, camera) folder, identities in sorted
    order and cameras in the official order: the walk of the authors' builders."""
    check_modality(modality)
    ids = read_id_line(os.path.join(data_path, "idx", "test_id.txt"), "LLCM", LLCM_LAYOUT)
    top, cams = LLCM_TEST[modality]
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


def process_query_llcm(data_path, modality="thermal"):
    """LLCM query set of one modality: every test image, identities sorted, cameras in order."""
    groups = _llcm_test_groups(data_path, modality)
    return _llcm_lists(data_path, [f for files in groups for f in files])


def process_gallery_llcm(data_path, modality="visible", trial=0):
    """LLCM gallery of one trial: one random image per (test identity, camera) folder.

    random.Random(trial).choice draws what the authors' random.seed(trial) + random.choice draw,
    one draw per existing folder in their walk order, without touching the global generator."""
    rng = random.Random(trial)
    return _llcm_lists(data_path, [rng.choice(files) for files in _llcm_test_groups(data_path, modality)])


def llcm_train_files(data_path):
    """LLCM training lists, labels as given (no relabelling: the official checkpoints' classifier
    rows follow them): {'visible': (paths, labels), 'thermal': (paths, labels)}."""
    _require(os.path.join(data_path, "idx"), "LLCM", LLCM_LAYOUT)
    out = {}
    for modality, name in LLCM_TRAIN.items():
        path = os.path.join(data_path, "idx", name)
        out[modality] = read_list(data_path, path, "LLCM", LLCM_LAYOUT)  # empty: pre_process_llcm says so
    return out
