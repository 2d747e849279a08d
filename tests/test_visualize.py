"""Tests for visualize: picture geometry and border colours, CMC picture, query selection,
top-k CSV. Small synthetic images (RGB PNGs and greyscale 'L' JPEGs of assorted sizes)."""
import csv
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import visualize as vis  # noqa: E402


def make_images(folder, n, seed=0):
    """n images alternating RGB PNG and 'L' JPEG, each a different size."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = 40 + 13 * i, 20 + 7 * i
        if i % 2 == 0:
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
            p = folder / f"img_{i}.png"
        else:
            img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
            p = folder / f"img_{i}.jpg"
        img.save(p)
        paths.append(str(p))
    return paths


def border_pixel(img, slot, thumb_w=64, thumb_h=128):
    """A pixel in the middle of the left border of thumbnail `slot`."""
    x0, y0, x1, y1 = vis.ranked_list_cell(slot, thumb_w, thumb_h)
    return img.getpixel((x0 - 2, (y0 + y1) // 2))


@pytest.fixture
def images(tmp_path):
    return make_images(tmp_path / "imgs", 8)


# ----------------------------------------------------------------------------- ranked list

def test_ranked_list_size_formula():
    cw = 64 + 2 * vis.MARGIN
    assert vis.ranked_list_size(10) == (11 * cw + vis.GAP, 128 + 2 * vis.MARGIN + vis.CAPTION_H)
    assert vis.ranked_list_size(3, 32, 64) == (4 * (32 + 2 * vis.MARGIN) + vis.GAP,
                                               64 + 2 * vis.MARGIN + vis.CAPTION_H)


def test_ranked_list_picture_borders(images, tmp_path):
    gallery = images[1:]
    k = len(gallery)
    matches = [True, False, True, False, False, True, False]
    out = tmp_path / "out" / "list.png"  # folder does not exist yet
    res = vis.ranked_list_picture(images[0], gallery, np.linspace(0.1, 0.7, k), matches,
                                  str(out), query_label=7)
    assert res == str(out)
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert im.size == vis.ranked_list_size(k)
        img = im.convert("RGB")
    assert border_pixel(img, 0) == vis.QUERY_COLOR
    for i, m in enumerate(matches):
        assert border_pixel(img, i + 1) == (vis.MATCH_COLOR if m else vis.MISMATCH_COLOR)
    # The top border row too, and the thumbnail itself is not border-coloured.
    x0, y0, x1, y1 = vis.ranked_list_cell(1)
    assert img.getpixel(((x0 + x1) // 2, y0 - 1)) == vis.MATCH_COLOR
    thumb = np.asarray(img.crop((x0, y0, x1, y1)))
    assert thumb.std() > 20  # noise image pasted, not a flat fill
    # Caption band contains dark text pixels under the first gallery thumbnail.
    band = np.asarray(img.crop((x0 - vis.MARGIN, y1 + vis.MARGIN, x1 + vis.MARGIN, img.height)))
    assert (band.max(axis=2) < 100).any()
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no temp left


def test_ranked_list_unlabelled_is_grey_and_custom_size(images, tmp_path):
    out = tmp_path / "u.png"
    vis.ranked_list_picture(images[1], images[2:5], torch.tensor([0.5, 1.0, 2.0]), None,
                            str(out), thumb_w=32, thumb_h=48)
    with Image.open(out) as im:
        assert im.size == vis.ranked_list_size(3, 32, 48)
        img = im.convert("RGB")
    for slot in (1, 2, 3):
        assert border_pixel(img, slot, 32, 48) == vis.UNKNOWN_COLOR


def test_ranked_list_rejects_mismatched_lengths(images, tmp_path):
    with pytest.raises(ValueError):
        vis.ranked_list_picture(images[0], images[1:4], [0.1, 0.2], None, str(tmp_path / "x.png"))
    with pytest.raises(ValueError):
        vis.ranked_list_picture(images[0], images[1:4], [0.1, 0.2, 0.3], [True],
                                str(tmp_path / "x.png"))


# ----------------------------------------------------------------------------- CMC

def test_cmc_curve_picture(tmp_path):
    ranks = np.arange(1, 21)
    curves = {"baseline": 1 - 0.6 * np.exp(-ranks / 4),      # fractions
              "ours": 100 * (1 - 0.4 * np.exp(-ranks / 3))}   # percent
    out = tmp_path / "cmc.png"
    assert vis.cmc_curve_picture(curves, str(out), title="RegDB", width=500, height=360) == str(out)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (500, 360)
        arr = np.asarray(im.convert("RGB")).astype(int)
    # Both curve colours are present.
    for color in vis.PALETTE[:2]:
        assert (np.abs(arr - np.array(color)).sum(axis=2) == 0).sum() > 50


def test_cmc_curve_single_point_and_errors(tmp_path):
    out = tmp_path / "one.png"
    vis.cmc_curve_picture({"r1": [0.5]}, str(out))
    with Image.open(out) as im:
        assert im.size == (640, 480)
    with pytest.raises(ValueError):
        vis.cmc_curve_picture({}, str(out))
    with pytest.raises(ValueError):
        vis.cmc_curve_picture({"bad": [0.1, np.nan]}, str(out))


# ----------------------------------------------------------------------------- selection

def hand_made():
    """5 queries x 6 gallery. First true-match rank (0-based) per query, worked by hand:
    q0: label 0, gallery order 0,1,... -> match at g0 -> rank 0
    q1: label 1, its match g1 is the farthest -> rank 5
    q2: label 9, no match in the gallery -> hardest
    q3: label 2, order g0, g5, g1, g3, g2, g4 -> rank 4
    q4: label 3, g3 tied at 0.5 with g0, g1, g2 -> stable order g4, g0, g1, g2, g3 -> rank 4
    """
    g_labels = np.array([0, 1, 2, 3, 4, 5])
    q_labels = np.array([0, 1, 9, 2, 3])
    d = np.array([
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
        [0.1, 0.9, 0.2, 0.3, 0.4, 0.5],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        [0.1, 0.2, 0.4, 0.3, 0.9, 0.15],
        [0.5, 0.5, 0.5, 0.5, 0.1, 0.7],
    ])
    return d, q_labels, g_labels


def test_write_ranked_lists_hardest(tmp_path):
    d, ql, gl = hand_made()
    qp = make_images(tmp_path / "q", 5, seed=1)
    gp = make_images(tmp_path / "g", 6, seed=2)
    out = tmp_path / "lists"
    paths = vis.write_ranked_lists(str(out), qp, gp, d, ql, gl, num=3, top_k=4)
    # Hardest first: q2 (no match), q1 (rank 5); q3 and q4 tie at rank 4 -> lower index q3.
    assert [os.path.basename(p) for p in paths] == ["query_00002.png", "query_00001.png",
                                                    "query_00003.png"]
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in paths)
    with Image.open(paths[0]) as im:
        assert im.size == vis.ranked_list_size(4)
        assert border_pixel(im.convert("RGB"), 1) == vis.MISMATCH_COLOR  # q2 never matches
    # q3 (label 2): top-4 by distance = g0, g5, g1, g3 -> no match among them.
    with Image.open(paths[2]) as im:
        img = im.convert("RGB")
    assert [border_pixel(img, s) for s in (1, 2, 3, 4)] == [vis.MISMATCH_COLOR] * 4


def test_write_ranked_lists_hardest_match_colours_and_torch(tmp_path):
    d, ql, gl = hand_made()
    qp = make_images(tmp_path / "q", 5, seed=1)
    gp = make_images(tmp_path / "g", 6, seed=2)
    paths = vis.write_ranked_lists(str(tmp_path / "t"), qp, gp, torch.from_numpy(d),
                                   torch.from_numpy(ql), torch.from_numpy(gl), num=5, top_k=6)
    names = [os.path.basename(p) for p in paths]
    assert names == [f"query_{i:05d}.png" for i in (2, 1, 3, 4, 0)]
    # q4 (label 3): order g4, g0, g1, g2, g3 (ties kept in gallery order), g5 -> match at #5.
    with Image.open(paths[3]) as im:
        img = im.convert("RGB")
    colours = [border_pixel(img, s) for s in range(1, 7)]
    assert colours == [vis.MISMATCH_COLOR] * 4 + [vis.MATCH_COLOR, vis.MISMATCH_COLOR]


def test_write_ranked_lists_random_deterministic(tmp_path):
    d, ql, gl = hand_made()
    qp = make_images(tmp_path / "q", 5, seed=1)
    gp = make_images(tmp_path / "g", 6, seed=2)
    a = vis.write_ranked_lists(str(tmp_path / "a"), qp, gp, d, num=3, top_k=2, seed=5)
    b = vis.write_ranked_lists(str(tmp_path / "b"), qp, gp, d, ql, gl, num=3, top_k=2,
                               order="random", seed=5)
    expected = np.random.default_rng(5).choice(5, size=3, replace=False)
    want = [f"query_{i:05d}.png" for i in expected]
    assert [os.path.basename(p) for p in a] == want
    assert [os.path.basename(p) for p in b] == want
    assert len(set(want)) == 3 and len(os.listdir(tmp_path / "a")) == 3
    # Without labels the borders are grey.
    with Image.open(a[0]) as im:
        assert border_pixel(im.convert("RGB"), 1) == vis.UNKNOWN_COLOR
    # num larger than the query set is capped.
    c = vis.write_ranked_lists(str(tmp_path / "c"), qp, gp, d, num=50, top_k=2, seed=0)
    assert len(c) == 5 and len(set(c)) == 5


def test_write_ranked_lists_errors(tmp_path):
    d, ql, gl = hand_made()
    qp, gp = ["q"] * 5, ["g"] * 6
    with pytest.raises(ValueError):
        vis.write_ranked_lists(str(tmp_path), qp, gp, d[:4], num=1)
    with pytest.raises(ValueError):
        vis.write_ranked_lists(str(tmp_path), qp, gp, d, q_labels=ql, num=1)
    with pytest.raises(ValueError):
        vis.write_ranked_lists(str(tmp_path), qp, gp, d, ql, gl, order="easiest")


# ----------------------------------------------------------------------------- CSV

def test_write_topk_csv(tmp_path):
    qp = ["q/a.jpg", "q/b.jpg"]
    gp = [f"g/{i}.jpg" for i in range(5)]
    d = np.array([[0.4, 0.2, 0.0, 0.3, 0.0],     # two zeros: g2 before g4 (stable)
                  [0.5, 0.1, 0.1, 0.9, 0.05]], dtype=np.float32)
    out = tmp_path / "sub" / "topk.csv"
    assert vis.write_topk_csv(str(out), qp, gp, torch.from_numpy(d), top_k=3) == str(out)
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["query", "rank", "gallery", "distance"]
    body = [(q, int(r), g, float(x)) for q, r, g, x in rows[1:]]
    assert [(q, r, g) for q, r, g, _ in body] == [
        ("q/a.jpg", 1, "g/2.jpg"), ("q/a.jpg", 2, "g/4.jpg"), ("q/a.jpg", 3, "g/1.jpg"),
        ("q/b.jpg", 1, "g/4.jpg"), ("q/b.jpg", 2, "g/1.jpg"), ("q/b.jpg", 3, "g/2.jpg")]
    assert body[0][3] == 0.0 and body[1][3] == 0.0
    assert body[3][3] == pytest.approx(0.05) and body[4][3] == pytest.approx(0.1)
    # top_k above the gallery size is capped.
    vis.write_topk_csv(str(out), qp, gp, d, top_k=99)
    with open(out, newline="") as f:
        assert len(list(csv.reader(f))) == 1 + 2 * 5


def test_import_has_no_side_effects(tmp_path):
    import importlib
    before = set(os.listdir(tmp_path))
    importlib.reload(vis)
    assert set(os.listdir(tmp_path)) == before
