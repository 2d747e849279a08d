import os
import random
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

import data_loader
import data_manager
import demo_data
import pre_process_sysu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sysu") / "SYSU-MM01"
    return str(demo_data.make_sysu_demo(str(root), num_ids=16, n_val=2, n_test=6, img_w=24, img_h=48))


def authors_gallery(data_path, mode, trial, multi=False):
    """The authors' process_gallery_sysu, global random module and all."""
    random.seed(trial)
    cams = ["cam1", "cam2", "cam4", "cam5"] if mode == "all" else ["cam1", "cam2"]
    with open(os.path.join(data_path, "exp/test_id.txt")) as f:
        ids = ["%04d" % int(y) for y in f.read().splitlines()[0].split(",")]
    files = []
    for pid in sorted(ids):
        for cam in cams:
            img_dir = os.path.join(data_path, cam, pid)
            if os.path.isdir(img_dir):
                new_files = sorted([img_dir + "/" + i for i in os.listdir(img_dir)])
                if multi:
                    files.extend(random.sample(new_files, min(10, len(new_files))))
                else:
                    files.append(random.choice(new_files))
    return files


@pytest.mark.parametrize("mode", ["all", "indoor"])
@pytest.mark.parametrize("trial", [0, 1, 7])
def test_sysu_gallery_reproduces_the_authors_random_sequence(sysu_root, mode, trial):
    paths, pids, camids = data_manager.process_gallery_sysu(sysu_root, mode, trial)
    want = authors_gallery(sysu_root, mode, trial)
    assert [os.path.normpath(p) for p in paths] == [os.path.normpath(p) for p in want]
    assert list(pids) == [int(p.split("/")[-2]) for p in want]
    assert list(camids) == [int(p.split("/")[-3][3:]) for p in want]
    assert set(camids) <= ({1, 2, 4, 5} if mode == "all" else {1, 2})


def test_sysu_multi_shot_gallery(sysu_root):
    paths, _, _ = data_manager.process_gallery_sysu(sysu_root, "all", 3, gall_mode="multi")
    want = authors_gallery(sysu_root, "all", 3, multi=True)
    assert [os.path.normpath(p) for p in paths] == [os.path.normpath(p) for p in want]


def test_gallery_leaves_the_callers_random_state_alone(sysu_root):
    random.seed(123)
    before = random.random()
    random.seed(123)
    data_manager.process_gallery_sysu(sysu_root, "all", 5)
    assert random.random() == before


def test_sysu_query_is_every_thermal_test_image(sysu_root):
    paths, pids, camids = data_manager.process_query_sysu(sysu_root, "all")
    ids = sorted(int(x) for x in open(os.path.join(sysu_root, "exp/test_id.txt")).read().strip().split(","))
    want = [os.path.join(sysu_root, cam, "%04d" % pid, name) for pid in ids for cam in ("cam3", "cam6")
            if os.path.isdir(os.path.join(sysu_root, cam, "%04d" % pid))
            for name in sorted(os.listdir(os.path.join(sysu_root, cam, "%04d" % pid)))]
    assert paths == want
    assert set(camids) <= {3, 6} and set(pids) <= set(ids)
    assert data_manager.process_query_sysu(sysu_root, "indoor")[0] == paths


def test_sysu_wrong_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing .*exp/test_id.txt \(expected layout: ROOT/cam1"):
        data_manager.process_query_sysu(str(tmp_path))
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "test_id.txt").write_text("1,2\n")
    with pytest.raises(FileNotFoundError, match="missing .*cam1"):
        data_manager.process_gallery_sysu(str(tmp_path))
    (tmp_path / "exp" / "test_id.txt").write_text("1;2\n")
    with pytest.raises(ValueError, match="comma-separated integer"):
        data_manager.process_query_sysu(str(tmp_path))


def test_regdb_lists(tmp_path):
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "test_visible_2.txt").write_text("Visible/1/a.bmp 5\nVisible/1/b.bmp 5\n")
    files, labels = data_manager.process_test_regdb(str(tmp_path), split=2, modality="visible")
    assert files == [os.path.join(str(tmp_path), "Visible/1/a.bmp"), os.path.join(str(tmp_path), "Visible/1/b.bmp")]
    assert labels.tolist() == [5, 5]
    with pytest.raises(FileNotFoundError, match=r"test_thermal_2.txt \(expected layout"):
        data_manager.process_test_regdb(str(tmp_path), split=2, modality="thermal")
    (tmp_path / "idx" / "test_thermal_2.txt").write_text("Thermal/1/a.bmp five\n")
    with pytest.raises(ValueError, match=r"test_thermal_2.txt:1: expected '<image path> <integer label>'"):
        data_manager.process_test_regdb(str(tmp_path), split=2, modality="thermal")


def test_pre_process_sysu_writes_the_four_files(sysu_root):
    args = pre_process_sysu.get_args_parser().parse_args(["--data_path", sysu_root, "--img_w", "16",
                                                          "--img_h", "32", "--workers", "2"])
    pre_process_sysu.main(args)
    files = data_manager.sysu_train_files(sysu_root)
    img = np.load(os.path.join(sysu_root, "train_rgb_resized_img.npy"))
    lab = np.load(os.path.join(sysu_root, "train_rgb_resized_label.npy"))
    ir = np.load(os.path.join(sysu_root, "train_ir_resized_img.npy"))
    ir_lab = np.load(os.path.join(sysu_root, "train_ir_resized_label.npy"))
    assert img.dtype == np.uint8 and img.shape == (len(files["visible"]), 32, 16, 3)
    assert ir.shape == (len(files["thermal"]), 32, 16, 3) and lab.dtype == np.int64
    pids = sorted({int(p.split("/")[-2]) for v in files.values() for p in v})
    assert lab.tolist() == [pids.index(int(p.split("/")[-2])) for p in files["visible"]]
    assert ir_lab.tolist() == [pids.index(int(p.split("/")[-2])) for p in files["thermal"]]
    assert np.array_equal(ir[3], data_loader.load_image(files["thermal"][3], 16, 32))
    assert not [f for f in os.listdir(sysu_root) if ".tmp-" in f]
    train = data_loader.sysu_train_data(sysu_root, img_w=16, img_h=32)
    assert train.num_classes == len(pids) and isinstance(train.visible, np.memmap)
    with pytest.raises(ValueError, match="holds 32x16.*--img_h 288"):
        data_loader.sysu_train_data(sysu_root)


# ----------------------------------------------------------------------------- the stored set is one set

def private_copy(root, dest):
    shutil.copytree(root, dest, ignore=shutil.ignore_patterns("*.npy"))
    return str(dest)


def pre_process(root, w=16, h=32, workers=2):
    pre_process_sysu.main(pre_process_sysu.get_args_parser().parse_args(
        ["--data_path", root, "--img_w", str(w), "--img_h", str(h), "--workers", str(workers)]))


def stored(root):
    return {n: open(os.path.join(root, n), "rb").read() for n in data_loader.SYSU_NPY}


def leftovers(root):
    return [n for n in os.listdir(root) if ".tmp-" in n or n == data_loader.COMMIT_JOURNAL]


@pytest.mark.parametrize("how", ["unreadable image", "ctrl-c"])
def test_failure_while_writing_the_second_modality_keeps_the_previous_set(sysu_root, tmp_path, monkeypatch, how):
    root = private_copy(sysu_root, tmp_path / "SYSU")
    pre_process(root)
    before = stored(root)
    thermal = data_manager.sysu_train_files(root)["thermal"]
    if how == "unreadable image":
        real = data_loader.load_image
        bad = thermal[len(thermal) // 2]
        monkeypatch.setattr(data_loader, "load_image", lambda p, w, h: (_ for _ in ()).throw(
            OSError(f"cannot read image {p}: broken")) if p == bad else real(p, w, h))
        expected = OSError
    else:  # Ctrl-C in the parent half-way through the thermal images
        real_write = data_loader._TempFile.write
        writes = []

        def write(self, data):
            if self.path.endswith(os.path.basename(f"train_ir_resized_img.npy.tmp-{os.getpid()}")):
                writes.append(1)
                if len(writes) == len(thermal) // 2:
                    raise KeyboardInterrupt
            real_write(self, data)

        monkeypatch.setattr(data_loader._TempFile, "write", write)
        expected = KeyboardInterrupt
    with pytest.raises(expected):
        pre_process(root, 8, 16)
    assert stored(root) == before
    assert leftovers(root) == []


@pytest.mark.slow
def test_interrupted_commit_is_completed_by_the_next_load_and_run(sysu_root, tmp_path, monkeypatch):
    new = private_copy(sysu_root, tmp_path / "new")
    pre_process(new, 8, 16)
    want = stored(new)
    real_replace = os.replace

    def interrupt_commit(root):
        """Store the 16x32 set, then cut a run writing the 8x16 one after two of its four renames."""
        pre_process(root)
        renames = []

        def replace(src, dst):
            if ".npy.tmp-" in src:
                if len(renames) == 2:
                    raise KeyboardInterrupt
                renames.append(dst)
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        try:
            with pytest.raises(KeyboardInterrupt):
                pre_process(root, 8, 16)
        finally:
            monkeypatch.setattr(os, "replace", real_replace)
        assert data_loader.COMMIT_JOURNAL in os.listdir(root) and len(leftovers(root)) == 3
        shapes = {np.load(os.path.join(root, n), mmap_mode="r").shape[1:3] for n in data_loader.SYSU_NPY[::2]}
        assert shapes == {(16, 8), (32, 16)}  # a mixed set on disk until the commit is completed

    root = private_copy(sysu_root, tmp_path / "load")
    interrupt_commit(root)
    data = data_loader.sysu_train_data(root, img_w=8, img_h=16)  # completes the commit first
    assert stored(root) == want and leftovers(root) == []
    assert data.thermal.shape[1:3] == (16, 8)

    root = private_copy(sysu_root, tmp_path / "run")
    interrupt_commit(root)
    monkeypatch.setattr(data_loader, "load_image", lambda *a: (_ for _ in ()).throw(OSError("cannot read")))
    with pytest.raises(OSError):  # a next run that fails still completed the commit before it started
        pre_process(root, 4, 8)
    assert stored(root) == want and leftovers(root) == []


@pytest.mark.slow
def test_temporaries_of_a_killed_run_are_removed_by_the_next_run(sysu_root, tmp_path):
    root = private_copy(sysu_root, tmp_path / "SYSU")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [f"train_rgb_resized_img.npy.tmp-{dead.pid}", f"train_ir_resized_label.npy.tmp-{dead.pid}",
             f"{data_loader.COMMIT_JOURNAL}.tmp-{dead.pid}", "train_ir_resized_img.npy.tmp-1"]  # pid 1 lives
    others = ["notes.tmp-12", "train_rgb_resized_img.npy.bak", "train_rgb_resized_img.npy.tmp-x"]
    for name in stale + others:
        open(os.path.join(root, name), "w").write("partial")
    pre_process(root)
    names = os.listdir(root)
    assert not set(stale) & set(names) and set(others) <= set(names)
    assert data_loader.sysu_train_data(root, 16, 32).num_classes > 1


@pytest.mark.slow
def test_sigterm_removes_the_temporaries_of_the_run(sysu_root, tmp_path):
    root = private_copy(sysu_root, tmp_path / "SYSU")
    pre_process(root)
    before = stored(root)
    script = (
        "import sys, time, data_loader, pre_process_sysu\n"
        "real = data_loader.load_image\n"
        "def slow(*a):\n"
        "    time.sleep(0.05)\n"
        "    return real(*a)\n"
        "data_loader.load_image = slow\n"
        "sys.argv = ['pre_process_sysu.py', '--data_path', sys.argv[1], '--img_w', '8', '--img_h', '16',"
        " '--workers', '1']\n"
        "pre_process_sysu.main(pre_process_sysu.get_args_parser().parse_args())\n")
    proc = subprocess.Popen([sys.executable, "-c", script, root], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not [n for n in os.listdir(root) if n.startswith("train_rgb_resized_img.npy.tmp-")]:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    time.sleep(0.2)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and err.splitlines()[-1] == "error: stopped by SIGTERM"
    assert leftovers(root) == [] and stored(root) == before


def test_a_second_run_on_the_same_root_is_refused(sysu_root, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    root = private_copy(sysu_root, tmp_path / "SYSU")
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OSError, match="another pre-processing run is writing"):
            pre_process(root)
    finally:
        os.close(fd)
    assert leftovers(root) == []


# ----------------------------------------------------------------------------- stray files

def test_only_image_files_count(tmp_path):
    for name in ("b.JPG", "a.png", "c.jpeg", "d.bmp", "e.tif", "f.TIFF", "g.webp", ".DS_Store", "notes.txt",
                 "._a.jpg", "h.jpg.part"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.jpg").mkdir()
    assert [os.path.basename(p) for p in data_manager.image_files(str(tmp_path))] == [
        "a.png", "b.JPG", "c.jpeg", "d.bmp", "e.tif", "f.TIFF", "g.webp"]
    assert data_manager.image_files(str(tmp_path / "absent")) == []


def test_stray_files_change_no_list_and_no_stored_set(sysu_root, tmp_path):
    clean = private_copy(sysu_root, tmp_path / "clean")
    dirty = private_copy(sysu_root, tmp_path / "dirty")
    for cam in ("cam1", "cam2", "cam3", "cam4", "cam5", "cam6"):
        (tmp_path / "dirty" / cam / ".DS_Store").write_text("x")
        for pid in os.listdir(os.path.join(dirty, cam)):
            if os.path.isdir(os.path.join(dirty, cam, pid)):
                (tmp_path / "dirty" / cam / pid / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
                (tmp_path / "dirty" / cam / pid / "notes.txt").write_text("checked by hand")

    def rel(lists, root):
        return [os.path.relpath(p, root) for p in lists[0]], lists[1].tolist(), lists[2].tolist()

    for mode in ("all", "indoor"):
        assert rel(data_manager.process_query_sysu(dirty, mode), dirty) == rel(
            data_manager.process_query_sysu(clean, mode), clean)
        for trial in range(4):
            for gall in ("single", "multi"):
                assert rel(data_manager.process_gallery_sysu(dirty, mode, trial, gall), dirty) == rel(
                    data_manager.process_gallery_sysu(clean, mode, trial, gall), clean)
    pre_process(clean, 8, 16)
    pre_process(dirty, 8, 16)
    assert stored(dirty) == stored(clean)


# ----------------------------------------------------------------------------- one-line errors

def test_pre_process_sysu_errors_are_one_line(sysu_root, tmp_path, monkeypatch, run_script):
    code, _, err = run_script(os.path.join(REPO, "pre_process_sysu.py"), "--data_path", tmp_path / "nowhere",
                              cwd=tmp_path)
    assert code == 1 and err == f"error: --data_path {tmp_path / 'nowhere'}: no such folder\n"

    def message(root, exc=(ValueError, OSError)):
        with pytest.raises(exc) as e:
            pre_process(root)
        assert "\n" not in str(e.value)
        return str(e.value)

    root = private_copy(sysu_root, tmp_path / "SYSU")
    os.remove(os.path.join(root, "exp", "val_id.txt"))
    assert re.fullmatch(r"SYSU-MM01: missing .*exp/val_id.txt \(expected layout: .*\)", message(root))
    (tmp_path / "SYSU" / "exp" / "val_id.txt").write_text("1\n2\n")
    assert message(root).endswith("val_id.txt: expected one line of comma-separated integer identities (0..9999)")
    (tmp_path / "SYSU" / "exp" / "val_id.txt").write_text("9998")
    (tmp_path / "SYSU" / "exp" / "train_id.txt").write_text("9999")
    assert "no training images found under cam1..cam6" in message(root)

    root = private_copy(sysu_root, tmp_path / "SYSU2")
    bad = data_manager.sysu_train_files(root)["thermal"][2]
    open(bad, "wb").write(b"\xff\xd8 truncated")
    assert message(root).startswith(f"cannot read image {bad}: ")
    os.remove(bad)

    real_open = open

    def refuse(path, mode="r", *a, **k):
        if "w" in mode:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(data_loader, "open", refuse, raising=False)  # an unwritable root (tests run as root)
    assert re.fullmatch(f"cannot write {re.escape(root)}/train_rgb_resized_label.npy.tmp-\\d+: Permission denied",
                        message(root))
    assert leftovers(root) == []


# ----------------------------------------------------------------------------- image modes

def saved(tmp_path, img, name):
    path = str(tmp_path / name)
    img.save(path)
    return path


def test_16_bit_grey_png_keeps_its_gradient(tmp_path):
    values = np.array([[0, 1, 128, 129, 257, 1000, 32767, 40000, 65407, 65535]] * 3, dtype=np.uint16)
    path = saved(tmp_path, Image.fromarray(values), "g16.png")
    assert Image.open(path).mode in ("I;16", "I")
    out = data_loader.load_image(path, values.shape[1], values.shape[0])  # same size: no resampling
    want = np.rint(values / 257).astype(np.uint8)
    assert np.array_equal(out, np.repeat(want[..., None], 3, 2))
    assert want.tolist()[0] == [0, 0, 0, 1, 1, 4, 127, 156, 255, 255]
    ramp = np.tile((np.arange(64) * 1040).astype(np.uint16), (32, 1))  # resized: still a gradient
    small = data_loader.load_image(saved(tmp_path, Image.fromarray(ramp), "ramp.png"), 32, 16)[..., 0].astype(int)
    assert small[:, 0].max() < 10 and small[:, -1].min() > 245 and (np.diff(small[8]) >= 0).all()
    for mode, dtype in (("I;16B", ">u2"), ("I;16L", "<u2")):
        img = Image.frombytes(mode, (10, 3), values.astype(dtype).tobytes())
        assert np.array_equal(data_loader._rgb8(img), np.repeat(want[..., None], 3, 2))


def test_32_bit_int_images(tmp_path):
    small = np.array([[0, 7, 255]], dtype=np.int32)
    assert np.array_equal(np.asarray(data_loader._rgb8(Image.fromarray(small)))[..., 0], [[0, 7, 255]])
    big = np.array([[0, 256, 65535]], dtype=np.int32)
    assert np.array_equal(np.asarray(data_loader._rgb8(Image.fromarray(big)))[..., 0], [[0, 1, 255]])
    path = saved(tmp_path, Image.fromarray(np.array([[0, 300, 70000]], dtype=np.int32)), "i.tif")
    with pytest.raises(OSError, match=f"cannot read image {re.escape(path)}: mode 'I' values 0..70000 are outside"):
        data_loader.load_image(path, 3, 1)
    path = saved(tmp_path, Image.fromarray(np.array([[-1, 3]], dtype=np.int32)), "neg.tif")
    with pytest.raises(OSError, match="outside 0..65535"):
        data_loader.load_image(path, 2, 1)


def test_other_modes_convert_like_pillow(tmp_path):
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (20, 10, 4), dtype=np.uint8), "RGBA")
    pal = Image.fromarray(rng.integers(0, 256, (20, 10, 3), dtype=np.uint8)).convert("P")
    bits = Image.fromarray(rng.integers(0, 2, (20, 10), dtype=np.uint8) * 255).convert("1")
    for img, name in ((rgba, "a.png"), (pal, "p.png"), (bits, "b.png"), (bits, "b.bmp")):
        path = saved(tmp_path, img, name)
        assert Image.open(path).mode == img.mode
        want = np.asarray(Image.open(path).convert("RGB").resize((5, 9), Image.LANCZOS))
        assert np.array_equal(data_loader.load_image(path, 5, 9), want)
    assert set(np.unique(data_loader.load_image(saved(tmp_path, bits, "c.png"), 10, 20))) == {0, 255}


def test_float_images(tmp_path):
    values = np.array([[0.0, 0.2, 0.5, 1.0]], dtype=np.float32)
    path = saved(tmp_path, Image.fromarray(values), "f.tif")
    assert Image.open(path).mode == "F"
    assert data_loader.load_image(path, 4, 1)[..., 0].tolist() == [[0, 51, 128, 255]]
    path = saved(tmp_path, Image.fromarray(values * 300), "f300.tif")
    with pytest.raises(OSError, match=r"f300.tif: mode 'F' \(float\) images must hold values in \[0, 1\]"):
        data_loader.load_image(path, 4, 1)


def test_test_preprocessing_equals_the_torchvision_recipe(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "t.jpg"
    Image.fromarray(rng.integers(0, 256, (70, 33), dtype=np.uint8), "L").save(path)
    arr = data_loader.load_image(str(path), 144, 288)
    assert arr.shape == (288, 144, 3)
    ours = data_loader.normalize(torch.from_numpy(arr)[None])[0]
    ref_img = Image.open(path).convert("RGB").resize((144, 288), Image.LANCZOS)
    ref = T.Compose([T.ToTensor(), T.Normalize(data_loader.MEAN, data_loader.STD)])(ref_img)
    assert torch.equal(ours, ref)


def coordinate_images(n, h=32, w=16):
    """uint8 images whose pixels name their own row (R) and column (G); B = 255 marks real pixels."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.arange(h)[:, None]
    img[..., 1] = np.arange(w)[None, :]
    img[..., 2] = 255
    return np.repeat(img[None], n, 0)


def crop_params(out, h=32, w=16, pad=10):
    """(top offset, left offset, flipped) of each augmented coordinate image."""
    res = []
    for img in out:
        ys, xs = np.nonzero(img[..., 2] == 255)
        y, x = ys[0], xs[0]
        row = img[y, x, 0]
        flipped = x + 1 < w and img[y, x + 1, 2] == 255 and img[y, x + 1, 1] < img[y, x, 1]
        col = img[y, x, 1]
        top = int(y) - int(row) + pad
        left = (int(x) + int(col) - (w - 1) + pad) if flipped else (int(x) - int(col) + pad)
        res.append((top, left, bool(flipped)))
    return res


@pytest.mark.parametrize("pad", [10, 3])
@pytest.mark.slow
def test_batched_augmentation_matches_the_per_image_distribution(pad):
    n = 3000
    torch.manual_seed(0)
    ours = crop_params(data_loader.BatchAugment(pad=pad).crop_flip(torch.from_numpy(coordinate_images(n))).numpy(),
                       pad=pad)
    pad_crop_flip = data_loader.per_image_train_transform(32, 16, pad).transforms[:-2]  # before ToTensor
    ref = crop_params([np.asarray(T.Compose(pad_crop_flip)(img)) for img in coordinate_images(n)], pad=pad)
    offsets = 2 * pad + 1
    for params in (ours, ref):
        tops = np.array([p[0] for p in params])
        lefts = np.array([p[1] for p in params])
        flips = np.array([p[2] for p in params])
        assert set(tops) == set(range(offsets)) and set(lefts) == set(range(offsets))
        for values in (tops, lefts):  # uniform over 0..2 pad: each about n / (2 pad + 1)
            counts = np.bincount(values, minlength=offsets)
            assert counts.min() > 0.66 * n / offsets and counts.max() < 1.36 * n / offsets
        assert abs(flips.mean() - 0.5) < 0.04


def test_batched_augmentation_normalises_exactly():
    torch.manual_seed(1)
    imgs = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 32, 16, 3), dtype=np.uint8))
    aug = data_loader.BatchAugment()
    torch.manual_seed(5)
    v, _, labels = aug(imgs, imgs, torch.arange(8))
    assert torch.equal(labels, torch.arange(8))
    torch.manual_seed(5)
    cropped = aug.crop_flip(imgs)
    ref = torch.stack([T.Normalize(data_loader.MEAN, data_loader.STD)(T.ToTensor()(c.numpy())) for c in cropped])
    assert torch.equal(v, ref)


def test_optional_augmentations_change_only_what_they_should():
    torch.manual_seed(2)
    x = torch.randn(64, 3, 32, 16)
    out = data_loader.channel_augment(x, 1.0)
    same_channels = (out[:, 0] == out[:, 1]).all((1, 2)) & (out[:, 1] == out[:, 2]).all((1, 2))
    assert same_channels.all()
    assert torch.equal(data_loader.channel_augment(x, 0.0), x)
    erased = data_loader.random_erase(x, 1.0)
    zeros = (erased == 0).all(1).flatten(1).sum(1)
    assert (zeros > 0).all() and (zeros < 32 * 16).all()


def test_batch_data_returns_images_in_sampler_order():
    vis = np.arange(6, dtype=np.uint8).reshape(6, 1, 1, 1).repeat(3, -1)
    th = (10 + np.arange(4, dtype=np.uint8)).reshape(4, 1, 1, 1).repeat(3, -1)
    data = data_loader.TrainData(vis, [0, 0, 1, 1, 2, 2], th, [0, 1, 2, 2])
    v, t, labels = data_loader.BatchData(data)[(np.array([5, 1, 0, 4]), np.array([3, 0, 0, 2]))]
    assert v[:, 0, 0, 0].tolist() == [5, 1, 0, 4] and t[:, 0, 0, 0].tolist() == [13, 10, 10, 12]
    assert labels.tolist() == [2, 0, 0, 2, 2, 0, 0, 2]
