import os
import random

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

import data_loader
import data_manager
import demo_data
import pre_process_sysu


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
    files, labels = data_manager.process_test_regdb(str(tmp_path), trial=2, modal="visible")
    assert files == [os.path.join(str(tmp_path), "Visible/1/a.bmp"), os.path.join(str(tmp_path), "Visible/1/b.bmp")]
    assert labels.tolist() == [5, 5]
    with pytest.raises(FileNotFoundError, match=r"test_thermal_2.txt \(expected layout"):
        data_manager.process_test_regdb(str(tmp_path), trial=2, modal="thermal")
    (tmp_path / "idx" / "test_thermal_2.txt").write_text("Thermal/1/a.bmp five\n")
    with pytest.raises(ValueError, match=r"test_thermal_2.txt:1: expected '<image path> <integer label>'"):
        data_manager.process_test_regdb(str(tmp_path), trial=2, modal="thermal")


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


def test_interrupted_pre_processing_leaves_no_partial_file(sysu_root, monkeypatch):
    target = os.path.join(sysu_root, "train_rgb_resized_img.npy")
    before = open(target, "rb").read() if os.path.exists(target) else None

    class Broken:
        def imap(self, *a, **k):
            yield np.zeros((32, 16, 3), np.uint8)
            raise KeyboardInterrupt

    paths = data_manager.sysu_train_files(sysu_root)["visible"]
    with pytest.raises(KeyboardInterrupt):
        pre_process_sysu.write_images(paths, target, 16, 32, Broken(), "visible")
    assert not [f for f in os.listdir(sysu_root) if ".tmp-" in f]
    if before is not None:
        assert open(target, "rb").read() == before


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
    v, _ = aug(imgs, imgs)
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
