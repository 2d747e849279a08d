"""Tests of the procedurally generated visible/thermal demo data (demo_data.py)."""

import itertools
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import demo_data  # noqa: E402


SMALL = dict(img_w=32, img_h=64)


def _tree_bytes(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def _read_idx(path):
    with open(path) as f:
        lines = [ln.rstrip("\n") for ln in f]
    out = []
    for ln in lines:
        rel, lab = ln.split(" ")
        out.append((rel, int(lab)))
    return out


# --------------------------------------------------------------------------
# renderer and identities
# --------------------------------------------------------------------------

def test_render_person_shapes_and_modalities():
    a = demo_data.draw_identities(1, seed=3)[0]
    vis = demo_data.render_person(a, "visible", np.random.default_rng(0), 64, 128)
    thr = demo_data.render_person(a, "thermal", np.random.default_rng(0), 64, 128)
    assert vis.shape == thr.shape == (128, 64, 3)
    assert vis.dtype == thr.dtype == np.uint8
    assert np.array_equal(thr[..., 0], thr[..., 1]) and np.array_equal(thr[..., 0], thr[..., 2])
    assert not np.array_equal(vis[..., 0], vis[..., 1])
    # warm body on a cool background: the centre column is brighter than the edges
    assert thr[20:110, 28:36].mean() > thr[:, :4].mean() + 40
    odd = demo_data.render_person(a, "visible", np.random.default_rng(0), 40, 90)
    assert odd.shape == (90, 40, 3)
    with pytest.raises(ValueError):
        demo_data.render_person(a, "depth", np.random.default_rng(0))


def test_identities_are_deterministic_and_distinct():
    ids = demo_data.draw_identities(120, seed=0)
    assert ids == demo_data.draw_identities(120, seed=0)
    assert ids != demo_data.draw_identities(120, seed=1)
    assert [a["pid"] for a in ids] == list(range(1, 121))
    json.dumps(ids)  # serialisable
    sigs = [tuple(a[k] for k in demo_data.SIGNATURE_KEYS) for a in ids]
    for s, t in itertools.combinations(sigs, 2):
        assert sum(x != y for x, y in zip(s, t)) >= 2
    # every attribute value is used
    for key, values in (("upper", demo_data.UPPER_PATTERNS), ("lower", demo_data.LOWER_TYPES),
                        ("object", demo_data.OBJECTS), ("head_style", demo_data.HEADS)):
        assert {a[key] for a in ids} == set(values)


# --------------------------------------------------------------------------
# RegDB layout
# --------------------------------------------------------------------------

def test_regdb_layout_and_idx(tmp_path):
    root = demo_data.make_regdb_demo(str(tmp_path / "regdb"), num_ids=10, imgs_per_id=3,
                                     num_splits=3, seed=5, **SMALL)
    assert os.path.samefile(root, tmp_path / "regdb")
    assert sorted(os.listdir(tmp_path)) == ["regdb"]  # no temporary folders left
    pids = list(range(1, 11))
    for folder in ("Visible", "Thermal"):
        assert sorted(os.listdir(os.path.join(root, folder))) == [f"{p:04d}" for p in pids]
    splits = []
    for t in (1, 2, 3):
        parts = {}
        for part in ("train", "test"):
            for mod, folder in (("visible", "Visible"), ("thermal", "Thermal")):
                entries = _read_idx(os.path.join(root, "idx", f"{part}_{mod}_{t}.txt"))
                assert len(entries) == 5 * 3
                for rel, _ in entries:
                    assert rel.startswith(folder + "/") and rel.endswith(".png")
                    assert os.path.isfile(os.path.join(root, rel))
                parts[part, mod] = entries
        for part in ("train", "test"):  # both modalities list the same identities
            assert ([lab for _, lab in parts[part, "visible"]]
                    == [lab for _, lab in parts[part, "thermal"]])
        train = parts["train", "visible"]
        test = parts["test", "visible"]
        train_pids = sorted({int(rel.split("/")[1]) for rel, _ in train})
        test_pids = sorted({int(rel.split("/")[1]) for rel, _ in test})
        assert not set(train_pids) & set(test_pids)
        assert sorted(train_pids + test_pids) == pids
        # train labels: 0..C-1 in sorted identity order; test labels: identity numbers
        for rel, lab in train:
            assert lab == train_pids.index(int(rel.split("/")[1]))
        assert sorted({lab for _, lab in train}) == list(range(5))
        for rel, lab in test:
            assert lab == int(rel.split("/")[1])
        splits.append(tuple(train_pids))
    assert len(set(splits)) > 1  # the splits are different random halves

    v = Image.open(os.path.join(root, "Visible", "0001", "v_0001_01.png"))
    t = Image.open(os.path.join(root, "Thermal", "0001", "t_0001_01.png"))
    assert v.size == t.size == (32, 64)
    t = np.asarray(t.convert("RGB"))
    assert np.array_equal(t[..., 0], t[..., 2])
    meta = json.load(open(os.path.join(root, "demo.json")))
    assert meta["params"]["num_ids"] == 10 and meta["params"]["layout"] == "regdb"


def test_regdb_deterministic(tmp_path):
    kw = dict(num_ids=4, imgs_per_id=2, num_splits=2, **SMALL)
    a = _tree_bytes(demo_data.make_regdb_demo(str(tmp_path / "a"), seed=1, **kw))
    b = _tree_bytes(demo_data.make_regdb_demo(str(tmp_path / "b"), seed=1, workers=2, **kw))
    c = _tree_bytes(demo_data.make_regdb_demo(str(tmp_path / "c"), seed=2, **kw))
    assert a == b
    assert a.keys() == c.keys()
    pngs = [k for k in a if k.endswith(".png")]
    assert all(a[k] != c[k] for k in pngs)


def test_idempotent_force_and_atomic(tmp_path, monkeypatch):
    root = str(tmp_path / "regdb")
    kw = dict(num_ids=4, imgs_per_id=2, num_splits=1, seed=0, **SMALL)
    demo_data.make_regdb_demo(root, **kw)
    png = os.path.join(root, "Visible", "0001", "v_0001_01.png")
    os.utime(png, (1, 1))
    before = _tree_bytes(root)

    demo_data.make_regdb_demo(root, **kw)            # up to date: untouched
    assert os.stat(png).st_mtime == 1
    # demo.json records the split count under its former name: sets made before the rename stay up to date
    assert demo_data.read_meta(root)["params"]["num_trials"] == 1
    demo_data.make_regdb_demo(root, force=True, **kw)  # forced: rewritten, same bytes
    assert os.stat(png).st_mtime != 1
    assert _tree_bytes(root) == before
    kw2 = dict(kw, imgs_per_id=3)                    # other parameters: regenerated
    demo_data.make_regdb_demo(root, **kw2)
    assert len(os.listdir(os.path.join(root, "Visible", "0001"))) == 3
    assert sorted(os.listdir(tmp_path)) == ["regdb"]

    # an interrupted run leaves the previous dataset and no temporary folder
    calls = []

    def failing(job):
        calls.append(job)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real(job)

    real = demo_data._write_image
    monkeypatch.setattr(demo_data, "_write_image", failing)
    with pytest.raises(KeyboardInterrupt):
        demo_data.make_regdb_demo(root, force=True, **kw)
    with pytest.raises(KeyboardInterrupt):
        demo_data.make_regdb_demo(str(tmp_path / "fresh"), **kw)
    assert sorted(os.listdir(tmp_path)) == ["regdb"]
    assert len(os.listdir(os.path.join(root, "Visible", "0001"))) == 3
    monkeypatch.undo()

    # a non-empty folder that is not a demo dataset is never replaced
    other = tmp_path / "real_data"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError):
        demo_data.make_regdb_demo(str(other), force=True, **kw)
    assert (other / "keep.txt").read_text() == "precious"


# --------------------------------------------------------------------------
# SYSU-MM01 layout
# --------------------------------------------------------------------------

@pytest.mark.slow
def test_sysu_layout(tmp_path):
    root = demo_data.make_sysu_demo(str(tmp_path / "sysu"), num_ids=12, n_val=2, n_test=4,
                                    seed=0, **SMALL)
    ids = {}
    for name in ("train", "val", "test"):
        with open(os.path.join(root, "exp", f"{name}_id.txt")) as f:
            lines = f.read().splitlines()
        assert len(lines) == 1
        ids[name] = [int(x) for x in lines[0].split(",")]
    assert (len(ids["train"]), len(ids["val"]), len(ids["test"])) == (6, 2, 4)
    assert sorted(ids["train"] + ids["val"] + ids["test"]) == list(range(1, 13))

    modes = {"visible": set(), "thermal": set()}
    for pid in range(1, 13):
        have = [c for c in range(1, 7) if os.path.isdir(os.path.join(root, f"cam{c}", f"{pid:04d}"))]
        assert set(have) & {1, 2, 4, 5} and set(have) & {3, 6}
        if pid in ids["test"]:
            assert set(have) & {1, 2}
        for c in have:
            d = os.path.join(root, f"cam{c}", f"{pid:04d}")
            files = sorted(os.listdir(d))
            assert 4 <= len(files) <= 6
            assert files == [f"{k:04d}.jpg" for k in range(1, len(files) + 1)]
            for f in files:
                im = Image.open(os.path.join(d, f))
                assert im.format == "JPEG"
                im.load()
                modes["thermal" if c in (3, 6) else "visible"].add(im.mode)
    assert modes["visible"] == {"RGB"}
    assert modes["thermal"] == {"L", "RGB"}
    assert sorted(os.listdir(root)) == ["cam1", "cam2", "cam3", "cam4", "cam5", "cam6",
                                        "demo.json", "exp", "identities.json"]

    # deterministic, idempotent
    again = demo_data.make_sysu_demo(str(tmp_path / "sysu2"), num_ids=12, n_val=2, n_test=4,
                                     seed=0, **SMALL)
    assert _tree_bytes(root) == _tree_bytes(again)
    stamp = os.stat(os.path.join(root, "demo.json")).st_mtime_ns
    demo_data.make_sysu_demo(root, num_ids=12, n_val=2, n_test=4, seed=0, **SMALL)
    assert os.stat(os.path.join(root, "demo.json")).st_mtime_ns == stamp


def test_cli(tmp_path, capsys):
    demo_data.main(["--root", str(tmp_path / "s"), "--layout", "sysu", "--num_ids", "8",
                    "--n_val", "1", "--n_test", "2", "--img_w", "32", "--img_h", "64"])
    assert os.path.isfile(tmp_path / "s" / "exp" / "test_id.txt")
    for flag, n in (("--num_splits", 2), ("--num_trials", 1)):  # --num_trials: the former name, still accepted
        root = tmp_path / f"r{n}"
        demo_data.main(["--root", str(root), "--num_ids", "6", "--imgs_per_id", "2",
                        flag, str(n), "--img_w", "32", "--img_h", "64", "--workers", "1"])
        assert sorted(f for f in os.listdir(root / "idx") if f.startswith("test_thermal")) == \
            [f"test_thermal_{s}.txt" for s in range(1, n + 1)]
    assert "ready" in capsys.readouterr().out


# --------------------------------------------------------------------------
# the task: colour carries no identity, modality-invariant cues do
# --------------------------------------------------------------------------

def _render_set(num_ids, per_id, seed, modality):
    ids = demo_data.draw_identities(num_ids, seed)
    code = 1 if modality == "visible" else 2
    imgs, labels = [], []
    for a in ids:
        for k in range(per_id):
            rng = demo_data._rng(99, seed, a["pid"], code, k)
            imgs.append(demo_data.render_person(a, modality, rng, 64, 128))
            labels.append(a["pid"])
    return np.stack(imgs), np.array(labels)


def _between_fraction(values, labels):
    """Share of the variance of ``values`` explained by identity (0..1)."""
    total = ((values - values.mean(0)) ** 2).sum()
    means = {lab: values[labels == lab].mean(0) for lab in np.unique(labels)}
    between = sum((labels == lab).sum() * ((m - values.mean(0)) ** 2).sum()
                  for lab, m in means.items())
    return between / total


def _hue_vectors(rgb):
    """Unit chroma direction (hue) of RGB colours, shape (..., 3)."""
    c = rgb - rgb.mean(-1, keepdims=True)
    return c / (np.linalg.norm(c, axis=-1, keepdims=True) + 1e-6)


def test_colour_carries_no_identity():
    imgs, labels = _render_set(20, 8, seed=4, modality="visible")
    # the chest window lies inside the torso in every image; garment lightness
    # follows the texture layout (an identity cue), hue must not
    chest = imgs[:, 38:50, 28:36].reshape(len(imgs), -1, 3).astype(float)
    chest_hue = _hue_vectors(chest).mean(1)
    whole = imgs.reshape(len(imgs), -1, 3).mean(1)
    # chance level of the between-identity share is (20 - 1) / (160 - 1) ~ 0.12
    assert _between_fraction(chest_hue, labels) < 0.25
    assert _between_fraction(whole, labels) < 0.3
    # hue nearest neighbour within the visible modality is near chance (1/20)
    h = _hue_vectors(chest.mean(1))
    d = ((h[:, None] - h[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(1)] == labels).mean() < 0.15
    # while each identity's hue varies a lot from image to image
    spread = [np.linalg.norm(h[labels == lab] - h[labels == lab].mean(0), axis=1).mean()
              for lab in np.unique(labels)]
    assert np.median(spread) > 0.6


def _edge_descriptor(imgs):
    grey = imgs.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    out = []
    for g in grey:
        g = np.asarray(Image.fromarray(g).resize((32, 64), Image.BILINEAR))
        e = np.hypot(ndimage.sobel(g, 1), ndimage.sobel(g, 0))
        e = ndimage.gaussian_filter(e, 1.0).ravel()
        e -= e.mean()
        out.append(e / np.linalg.norm(e))
    return np.stack(out)


@pytest.mark.slow
def test_cross_modal_task_is_learnable():
    """Edge maps of grey visible vs thermal images already match identities."""
    vis, lv = _render_set(30, 6, seed=7, modality="visible")
    thr, lt = _render_set(30, 6, seed=7, modality="thermal")
    sim = _edge_descriptor(vis) @ _edge_descriptor(thr).T
    rank1 = (lt[sim.argmax(1)] == lv).mean()
    assert rank1 > 0.15, rank1  # chance: 1/30
    # and the same descriptor on a random pairing is at chance
    rng = np.random.default_rng(0)
    assert (rng.permutation(lt)[sim.argmax(1)] == lv).mean() < 0.12
