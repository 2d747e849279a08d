"""LLCM: query / gallery lists against a literal reading of the official builder, eval_llcm
against a per-query loop, pre-processing, bad input, and the generated demo tree."""
import os
import random
import re
import shutil

import numpy as np
import pytest

import data_loader
import data_manager
import demo_data
import pre_process_llcm
from eval_metrics import eval_llcm, eval_regdb, eval_sysu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def llcm_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("llcm") / "LLCM"
    return str(demo_data.make_llcm_demo(str(root), num_ids=24, img_w=16, img_h=32))


def copy_tree(root, dest):
    """A private copy of a dataset tree (tests that change it must not touch the shared one)."""
    shutil.copytree(root, dest, ignore=shutil.ignore_patterns("*.npy"))
    return str(dest)


# ----------------------------------------------------------------------------- oracles

def official_llcm(data_path, mode, trial=None):
    """Literal reading of the official builders (ZYK100/LLCM, DEEN/data_manager.py): mode 1 = visible, 2 = NIR; the
    query (trial None) takes every file, the gallery seeds the global random module once and
    draws one file per existing (id, camera) folder. Camera and id: the characters after the
    first 'cam' of the full path."""
    if trial is not None:
        random.seed(trial)
    if mode == 1:
        cameras = ["test_vis/cam1", "test_vis/cam2", "test_vis/cam3", "test_vis/cam4", "test_vis/cam5",
                   "test_vis/cam6", "test_vis/cam7", "test_vis/cam8", "test_vis/cam9"]
    else:
        cameras = ["test_nir/cam1", "test_nir/cam2", "test_nir/cam4", "test_nir/cam5", "test_nir/cam6",
                   "test_nir/cam7", "test_nir/cam8", "test_nir/cam9"]
    with open(os.path.join(data_path, "idx/test_id.txt")) as f:
        ids = f.read().splitlines()
        ids = [int(y) for y in ids[0].split(",")]
        ids = ["%04d" % x for x in ids]
    files = []
    for pid in sorted(ids):
        for cam in cameras:
            img_dir = os.path.join(data_path, cam, pid)
            if os.path.isdir(img_dir):
                new_files = sorted([img_dir + "/" + i for i in os.listdir(img_dir)])
                if trial is None:
                    files.extend(new_files)
                else:
                    files.append(random.choice(new_files))
    camids = [int(p.split("cam")[1][0]) for p in files]
    pids = [int(p.split("cam")[1][2:6]) for p in files]
    return files, pids, camids


def _pad(c, max_rank):
    c = np.asarray(c, dtype=np.float64)[:max_rank]
    last = c[-1] if len(c) else 0.0
    return np.concatenate([c, np.full(max_rank - len(c), last)])


def ref_llcm(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20):
    """Per-query loop reading of the official eval_llcm (ZYK100/LLCM, DEEN/eval_metrics.py; stable argsort)."""
    indices = np.argsort(distmat, axis=1, kind="stable")
    pred_label = g_pids[indices]
    matches = (pred_label == q_pids[:, None]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    num_valid = 0
    for i in range(len(q_pids)):
        order = indices[i]
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        kept = pred_label[i][keep]
        first = np.sort(np.unique(kept, return_index=True)[1])
        all_cmc.append(_pad((kept[first] == q_pids[i]).astype(np.int32).cumsum(), max_rank))
        raw = matches[i][keep]
        if not raw.any():
            continue
        num_valid += 1
        cum = raw.cumsum()
        last = np.max(np.where(raw == 1))
        all_inp.append(cum[last] / (last + 1.0))
        all_ap.append((cum / (np.arange(len(raw)) + 1.0) * raw).sum() / raw.sum())
    cmc = np.asarray(all_cmc).astype(np.float32).sum(0) / num_valid
    return cmc, np.mean(all_ap), np.mean(all_inp)


def cmc_of(prefix, max_rank=20):
    return _pad(prefix, max_rank)


def assert_same(got, want):
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-6)
    assert got[1] == pytest.approx(want[1], abs=1e-9)
    assert got[2] == pytest.approx(want[2], abs=1e-9)


# ----------------------------------------------------------------------------- query / gallery

@pytest.mark.parametrize("modality,mode", [("visible", 1), ("thermal", 2)])
def test_query_is_the_official_list(llcm_root, modality, mode):
    paths, pids, camids = data_manager.process_query_llcm(llcm_root, modality)
    want, want_pids, want_cams = official_llcm(llcm_root, mode)
    assert [os.path.normpath(p) for p in paths] == [os.path.normpath(p) for p in want]
    assert pids.dtype == camids.dtype == np.int64
    assert pids.tolist() == want_pids and camids.tolist() == want_cams
    assert len(set(camids.tolist())) > 2
    assert (3 in camids) == (modality == "visible")


@pytest.mark.parametrize("modality,mode", [("visible", 1), ("thermal", 2)])
@pytest.mark.parametrize("trial", [0, 1, 2, 9])
def test_gallery_reproduces_the_official_random_sequence(llcm_root, modality, mode, trial):
    random.seed(1234)
    before = random.getstate()
    paths, pids, camids = data_manager.process_gallery_llcm(llcm_root, modality, trial)
    assert random.getstate() == before  # the caller's random state is left alone
    want, want_pids, want_cams = official_llcm(llcm_root, mode, trial)
    assert [os.path.normpath(p) for p in paths] == [os.path.normpath(p) for p in want]
    assert pids.tolist() == want_pids and camids.tolist() == want_cams
    assert len(set(zip(pids.tolist(), camids.tolist()))) == len(paths)  # one per (id, camera)


def test_gallery_trials_differ_and_queries_cover_several_cameras(llcm_root):
    galleries = {tuple(data_manager.process_gallery_llcm(llcm_root, "visible", t)[0]) for t in range(4)}
    assert len(galleries) > 1
    q_paths, q_pids, q_cams = data_manager.process_query_llcm(llcm_root, "thermal")
    g_paths, g_pids, g_cams = data_manager.process_gallery_llcm(llcm_root, "visible", 0)
    both = set(zip(q_pids.tolist(), q_cams.tolist())) & set(zip(g_pids.tolist(), g_cams.tolist()))
    assert both  # the same-identity same-camera exclusion has work to do
    assert max(np.bincount(g_pids)) >= 2  # multi-camera galleries


def test_camera_and_id_come_from_the_path_below_the_root(llcm_root, tmp_path_factory):
    # (not tmp_path: its name, taken from this test's, holds a "cam" of its own)
    root = copy_tree(llcm_root, tmp_path_factory.mktemp("root") / "cam7_1234" / "LLCM")
    for modality, mode in (("visible", 1), ("thermal", 2)):
        ref = data_manager.process_gallery_llcm(llcm_root, modality, 3)
        paths, pids, camids = data_manager.process_gallery_llcm(root, modality, 3)
        assert [os.path.relpath(p, root) for p in paths] == [os.path.relpath(p, llcm_root) for p in ref[0]]
        assert pids.tolist() == ref[1].tolist() and camids.tolist() == ref[2].tolist()
        _, off_pids, off_cams = official_llcm(root, mode, 3)  # the official parse reads the root's "cam"
        assert set(off_pids) == {1234} and set(off_cams) == {7} != set(camids.tolist())
        q = data_manager.process_query_llcm(root, modality)
        want = data_manager.process_query_llcm(llcm_root, modality)
        assert q[1].tolist() == want[1].tolist() and q[2].tolist() == want[2].tolist()


def test_stray_files_change_neither_query_nor_gallery(llcm_root, tmp_path):
    root = copy_tree(llcm_root, tmp_path / "LLCM")
    for top in ("test_vis", "test_nir"):
        for cam in sorted(os.listdir(os.path.join(root, top))):
            for pid in sorted(os.listdir(os.path.join(root, top, cam))):
                for name in (".DS_Store", "notes.txt", "._0000_c01_s060000_f1_vis.jpg"):
                    open(os.path.join(root, top, cam, pid, name), "w").write("not an image")
        open(os.path.join(root, top, "cam1", ".DS_Store"), "w").write("x")
    for modality in ("visible", "thermal"):
        rel = lambda lists, base: ([os.path.relpath(p, base) for p in lists[0]], lists[1].tolist(),  # noqa: E731
                                   lists[2].tolist())
        assert (rel(data_manager.process_query_llcm(root, modality), root)
                == rel(data_manager.process_query_llcm(llcm_root, modality), llcm_root))
        for trial in range(4):
            assert (rel(data_manager.process_gallery_llcm(root, modality, trial), root)
                    == rel(data_manager.process_gallery_llcm(llcm_root, modality, trial), llcm_root))


# ----------------------------------------------------------------------------- eval_llcm

def test_same_identity_same_camera_is_excluded_across_modalities():
    # NIR query of id 5 from camera 9. Ranked gallery: g0 (id 5, cam 9: same camera, removed),
    # g1 (id 7, cam 9: same camera, other id, kept), g2 (id 5, cam 4, kept).
    q_pids, q_cams = np.array([5]), np.array([9])
    g_pids, g_cams = np.array([5, 7, 5]), np.array([9, 9, 4])
    dist = np.array([[0.1, 0.2, 0.3]])
    got = eval_llcm(dist, q_pids, g_pids, q_cams, g_cams)
    assert_same(got, (cmc_of([0, 1]), 1 / 2, 1 / 2))
    assert_same(got, ref_llcm(dist, q_pids, g_pids, q_cams, g_cams))
    # neither RegDB's (nothing removed) nor SYSU's rule (cam3 vs cam2) gives this
    assert_same(eval_regdb(dist, q_pids, g_pids), (cmc_of([1]), (1 + 2 / 3) / 2, 2 / 3))
    assert_same(eval_sysu(dist, q_pids, g_pids, q_cams, g_cams), (cmc_of([1]), (1 + 2 / 3) / 2, 2 / 3))


def test_dedup_cmc_differs_from_the_plain_one_at_rank_5():
    # Ranked ids 2 2 3 3 4 1: the true match is 6th, but the 4th distinct identity.
    q_pids, q_cams = np.array([1]), np.array([2])
    g_pids, g_cams = np.array([2, 2, 3, 3, 4, 1]), np.array([1, 4, 5, 6, 7, 8])
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    got = eval_llcm(dist, q_pids, g_pids, q_cams, g_cams)
    assert_same(got, (cmc_of([0, 0, 0, 1]), 1 / 6, 1 / 6))
    assert got[0][4] == 1 and eval_regdb(dist, q_pids, g_pids)[0][4] == 0
    assert_same(got, ref_llcm(dist, q_pids, g_pids, q_cams, g_cams))


def test_query_left_without_a_match_is_skipped():
    # query 1 (id 3, cam 2): its only gallery image is from its own camera, so it is skipped
    g_pids, g_cams = np.array([1, 3, 2, 1, 2]), np.array([1, 2, 4, 5, 6])
    q_pids, q_cams = np.array([1, 3, 2]), np.array([1, 2, 2])
    rng = np.random.default_rng(0)
    dist = rng.random((3, 5))
    got = eval_llcm(dist, q_pids, g_pids, q_cams, g_cams)
    assert_same(got, eval_llcm(dist[[0, 2]], q_pids[[0, 2]], g_pids, q_cams[[0, 2]], g_cams))
    assert_same(got, ref_llcm(dist, q_pids, g_pids, q_cams, g_cams))
    with pytest.raises(ValueError, match="no query has a true match"):
        eval_llcm(dist[[1]], q_pids[[1]], g_pids, q_cams[[1]], g_cams)


def test_short_gallery_repeats_the_last_value():
    q_pids, q_cams = np.array([0, 1]), np.array([1, 1])
    g_pids, g_cams = np.array([2, 0, 1]), np.array([3, 3, 4])
    dist = np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]])
    cmc, _, _ = eval_llcm(dist, q_pids, g_pids, q_cams, g_cams)
    assert cmc.shape == (20,)
    np.testing.assert_allclose(cmc, cmc_of([0, 0.5, 1.0]))
    assert eval_llcm(dist, q_pids, g_pids, q_cams, g_cams, max_rank=2)[0].shape == (2,)


@pytest.mark.parametrize("seed,nq,ng,nid,ncam,ties", [(0, 40, 60, 10, 3, False), (1, 30, 200, 4, 9, False),
                                                      (2, 7, 12, 4, 2, True), (3, 50, 80, 30, 2, True),
                                                      (4, 25, 15, 6, 3, False)])
def test_random_against_the_loop(seed, nq, ng, nid, ncam, ties):
    rng = np.random.default_rng(seed)
    dist = rng.integers(0, 4, (nq, ng)).astype(np.float32) if ties else rng.random((nq, ng))
    q_pids, g_pids = rng.integers(0, nid + 2, nq), rng.integers(0, nid, ng)
    q_cams, g_cams = rng.integers(1, ncam + 1, nq), rng.integers(1, ncam + 1, ng)
    for max_rank in (20, 5):
        assert_same(eval_llcm(dist, q_pids, g_pids, q_cams, g_cams, max_rank),
                    ref_llcm(dist, q_pids, g_pids, q_cams, g_cams, max_rank))


# ----------------------------------------------------------------------------- training set

def run_pre_process(root, *extra):
    args = pre_process_llcm.get_args_parser().parse_args(["--data_path", root, "--img_w", "8", "--img_h", "16",
                                                          "--workers", "2", *extra])
    pre_process_llcm.main(args)


def test_pre_process_stores_the_lists(llcm_root, tmp_path):
    root = copy_tree(llcm_root, tmp_path / "LLCM")
    run_pre_process(root)
    lists = data_manager.llcm_train_files(root)
    data = data_loader.llcm_train_data(root, img_w=8, img_h=16)
    for modality, images, labels in (("visible", data.visible, data.labels_v),
                                     ("thermal", data.thermal, data.labels_t)):
        paths, want = lists[modality]
        with open(os.path.join(root, "idx", data_manager.LLCM_TRAIN[modality])) as f:
            lines = f.read().splitlines()
        assert [os.path.relpath(p, root) for p in paths] == [ln.split(" ")[0] for ln in lines]
        assert labels.tolist() == [int(ln.split(" ")[1]) for ln in lines] == want.tolist()
        assert images.shape == (len(lines), 16, 8, 3) and images.dtype == np.uint8
        for i in (0, len(paths) - 1):
            assert np.array_equal(images[i], data_loader.load_image(paths[i], 8, 16))
    assert isinstance(data.visible, np.memmap)
    assert data.num_classes == len(set(data.labels_v.tolist())) == len(set(data.labels_t.tolist()))
    assert sorted(os.listdir(root)) == sorted(os.listdir(llcm_root) + list(data_loader.SYSU_NPY))
    with pytest.raises(ValueError, match=r"holds 16x8 .*re-run pre_process_llcm.py"):
        data_loader.llcm_train_data(root)
    with pytest.raises(FileNotFoundError, match=r"train_rgb_resized_img.npy: run `python pre_process_llcm.py"):
        data_loader.llcm_train_data(llcm_root)


def test_failed_re_run_keeps_the_previous_set(llcm_root, tmp_path, monkeypatch):
    root = copy_tree(llcm_root, tmp_path / "LLCM")
    run_pre_process(root)
    before = {n: open(os.path.join(root, n), "rb").read() for n in data_loader.SYSU_NPY}
    bad = data_manager.llcm_train_files(root)["thermal"][0][5]
    real = data_loader.load_image

    def failing(path, w, h):
        if path == bad:
            raise OSError(f"cannot read image {path}: broken")
        return real(path, w, h)

    monkeypatch.setattr(data_loader, "load_image", failing)  # the fork-started workers inherit it
    with pytest.raises(OSError, match="cannot read image .*broken"):
        run_pre_process(root, "--img_w", "6", "--img_h", "12")
    assert {n: open(os.path.join(root, n), "rb").read() for n in data_loader.SYSU_NPY} == before
    assert not [n for n in os.listdir(root) if ".tmp-" in n or n == data_loader.COMMIT_JOURNAL]


# ----------------------------------------------------------------------------- bad input

def test_missing_layout_parts_are_one_line_errors(llcm_root, tmp_path):
    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    for call in (lambda: data_manager.process_query_llcm(empty), lambda: data_manager.process_gallery_llcm(empty)):
        with pytest.raises(FileNotFoundError, match=r"LLCM: missing .*idx/test_id.txt \(expected layout: ROOT/idx"):
            call()
    with pytest.raises(FileNotFoundError, match=r"LLCM: missing .*empty/idx \(expected layout: ROOT/idx"):
        data_manager.llcm_train_files(empty)

    root = copy_tree(llcm_root, tmp_path / "LLCM")
    shutil.rmtree(os.path.join(root, "test_nir"))
    with pytest.raises(FileNotFoundError, match=r"missing .*LLCM/test_nir \(expected layout"):
        data_manager.process_query_llcm(root, "thermal")
    assert len(data_manager.process_query_llcm(root, "visible")[0])
    shutil.rmtree(os.path.join(root, "test_vis"))
    with pytest.raises(FileNotFoundError, match=r"missing .*LLCM/test_vis \(expected layout"):
        data_manager.process_gallery_llcm(root, "visible")
    with pytest.raises(ValueError, match="^modality must be 'visible' or 'thermal', got 'nir'$"):
        data_manager.process_query_llcm(root, "nir")

    os.remove(os.path.join(root, "idx", "train_nir.txt"))
    with pytest.raises(FileNotFoundError, match=r"missing .*idx/train_nir.txt \(expected layout"):
        data_manager.llcm_train_files(root)


@pytest.mark.parametrize("text", ["0003\n0006\n0009\n", "3;6;9", "a,b", "", "0003,-6"])
def test_test_id_in_another_format_is_a_clear_error(llcm_root, tmp_path, text):
    root = copy_tree(llcm_root, tmp_path / "LLCM")
    with open(os.path.join(root, "idx", "test_id.txt"), "w") as f:
        f.write(text)
    with pytest.raises(ValueError, match=r"test_id.txt: expected one line of comma-separated integer"):
        data_manager.process_gallery_llcm(root, "visible")


@pytest.mark.parametrize("text", ["0003,\n0006,\n0009", "0003,0006\n,0009", "0003,0006\r\n,0009\n"])
def test_test_id_on_several_lines_is_refused_naming_the_file_and_layout(tmp_path, text):
    # every token parses as an int here: only the line count tells this file from the official layout
    os.makedirs(tmp_path / "idx")
    path = tmp_path / "idx" / "test_id.txt"
    path.write_bytes(text.encode())
    with pytest.raises(ValueError, match=r"idx/test_id.txt: [23] lines, of which the official reader takes only "
                                         r"the first: .*\(expected layout: ROOT/idx/\{train_vis") as e:
        data_manager.process_query_llcm(str(tmp_path), "thermal")
    assert "\n" not in str(e.value)
    path.write_text("0003,0006,0009\n")  # one line (and its newline) is the official layout
    with pytest.raises(FileNotFoundError, match="test_nir"):
        data_manager.process_query_llcm(str(tmp_path), "thermal")


def test_malformed_list_line_names_the_file_and_line(llcm_root, tmp_path):
    root = copy_tree(llcm_root, tmp_path / "LLCM")
    path = os.path.join(root, "idx", "train_vis.txt")
    lines = open(path).read().splitlines()
    lines[2] = lines[2].replace(" ", "\t") + " extra"
    open(path, "w").write("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"train_vis.txt:3: expected '<image path> <integer label>'"):
        data_manager.llcm_train_files(root)


def test_no_test_images_is_a_clear_error(llcm_root, tmp_path):
    root = copy_tree(llcm_root, tmp_path / "LLCM")
    with open(os.path.join(root, "idx", "test_id.txt"), "w") as f:
        f.write("0001,0002")  # training ids: no test folders
    with pytest.raises(ValueError, match=r"LLCM: no test images in .*test_nir/camN/<id>/"):
        data_manager.process_query_llcm(root, "thermal")


def test_pre_process_errors_are_one_line(llcm_root, tmp_path, run_script):
    code, _, err = run_script(os.path.join(REPO, "pre_process_llcm.py"), "--data_path", tmp_path / "nowhere",
                              cwd=tmp_path)
    assert code == 1
    assert err == f"error: --data_path {tmp_path / 'nowhere'}: no such folder\n"
    root = copy_tree(llcm_root, tmp_path / "LLCM")
    open(os.path.join(root, "idx", "train_nir.txt"), "w").close()
    with pytest.raises(ValueError, match=r"idx/train_nir.txt: no training images listed") as e:
        run_pre_process(root)
    bad = data_manager.llcm_train_files(root)["visible"][0][3]
    open(bad, "w").write("not a jpeg")
    with open(os.path.join(root, "idx", "train_nir.txt"), "w") as f:
        f.write("nir/0001/missing.jpg 0\n")
    with pytest.raises(OSError, match=f"cannot read image {re.escape(bad)}") as e:
        run_pre_process(root)
    assert "\n" not in str(e.value)
    assert not [n for n in os.listdir(root) if ".tmp-" in n]


# ----------------------------------------------------------------------------- demo tree

NAME = re.compile(r"(\d{4})_c(\d{2})_s(\d{6})_f(\d+)_(vis|nir)\.jpg")


def test_demo_tree_has_the_official_layout(llcm_root):
    root = llcm_root
    assert {"idx", "vis", "nir", "test_vis", "test_nir"} <= set(os.listdir(root))
    assert sorted(os.listdir(os.path.join(root, "idx"))) == ["test_id.txt", "test_nir.txt", "test_vis.txt",
                                                             "train_nir.txt", "train_vis.txt"]
    text = open(os.path.join(root, "idx", "test_id.txt")).read()
    assert "\n" not in text and re.fullmatch(r"\d{4}(,\d{4})+", text)
    test_ids = [int(t) for t in text.split(",")]
    assert test_ids != sorted(test_ids) and len(set(test_ids)) == len(test_ids)
    pids = sorted(int(p) for p in os.listdir(os.path.join(root, "vis")))
    assert pids == sorted(int(p) for p in os.listdir(os.path.join(root, "nir")))
    assert len(pids) == 24 and pids[-1] > 23  # gaps in the id space, as in the real set
    assert sorted(test_ids) == [p for p in pids if p % 3 == 0]
    assert sorted(os.listdir(os.path.join(root, "test_vis"))) == [f"cam{c}" for c in range(1, 10)]
    assert sorted(os.listdir(os.path.join(root, "test_nir"))) == [f"cam{c}" for c in (1, 2, 4, 5, 6, 7, 8, 9)]

    for top, tag in (("vis", "vis"), ("nir", "nir")):
        for pid in os.listdir(os.path.join(root, top)):
            for name in os.listdir(os.path.join(root, top, pid)):
                m = NAME.fullmatch(name)
                assert m and m.group(1) == pid and m.group(5) == tag
                assert tag == "vis" or m.group(2) != "03"
    # the test folders hold the test ids' images again, byte for byte, under their camera
    cams = {}
    for top, src in (("test_vis", "vis"), ("test_nir", "nir")):
        for cam in os.listdir(os.path.join(root, top)):
            for pid in os.listdir(os.path.join(root, top, cam)):
                assert int(pid) in test_ids
                cams.setdefault((top, int(pid)), set()).add(int(cam[3:]))
                for name in os.listdir(os.path.join(root, top, cam, pid)):
                    assert int(NAME.fullmatch(name).group(2)) == int(cam[3:])
                    with open(os.path.join(root, top, cam, pid, name), "rb") as a, \
                            open(os.path.join(root, src, pid, name), "rb") as b:
                        assert a.read() == b.read()
        copied = sum(len(files) for d, _, files in os.walk(os.path.join(root, top)))
        originals = sum(len(os.listdir(os.path.join(root, src, "%04d" % p))) for p in test_ids)
        assert copied == originals
    assert any(len(cams.get(("test_vis", p), ())) >= 2 for p in test_ids)
    assert any(len(cams.get(("test_nir", p), ())) >= 2 for p in test_ids)
    assert any(cams.get(("test_vis", p), set()) & cams.get(("test_nir", p), set()) for p in test_ids)


def test_demo_training_lists_have_the_official_form(llcm_root):
    # training ids only, labels 0..C-1 in first-appearance order, the same in both lists
    root = llcm_root
    pids = sorted(int(p) for p in os.listdir(os.path.join(root, "vis")))
    label_of = {}
    for name, tag in (("train_vis.txt", "vis"), ("train_nir.txt", "nir")):
        text = open(os.path.join(root, "idx", name)).read()
        assert text.endswith("\n")
        entries = [ln.split(" ") for ln in text.splitlines()]
        order = []
        for rel, label in entries:
            top, pid, fname = rel.split("/")
            assert top == tag and os.path.isfile(os.path.join(root, rel)) and int(pid) % 3
            assert label_of.setdefault(int(pid), int(label)) == int(label)
            if int(label) not in order:
                order.append(int(label))
        assert order == list(range(len(order)))  # grouped by label, ascending
    assert sorted(label_of.values()) == list(range(len(label_of)))
    by_label = [p for p, _ in sorted(label_of.items(), key=lambda kv: kv[1])]
    assert by_label != sorted(by_label)
    img = data_loader.Image.open(os.path.join(root, "nir", "%04d" % pids[1], os.listdir(
        os.path.join(root, "nir", "%04d" % pids[1]))[0]))
    assert img.format == "JPEG" and img.mode == "RGB"


def test_demo_is_deterministic_and_has_a_cli(tmp_path, capsys):
    a = demo_data.make_llcm_demo(str(tmp_path / "a"), num_ids=8, img_w=16, img_h=32, seed=3)
    demo_data.main(["--root", str(tmp_path / "b"), "--layout", "llcm", "--num_ids", "8", "--img_w", "16",
                    "--img_h", "32", "--seed", "3", "--workers", "2"])
    assert "llcm demo dataset ready" in capsys.readouterr().out

    def tree(root):
        return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
                for d, _, files in os.walk(root) for f in files}

    assert tree(a) == tree(str(tmp_path / "b"))
    assert tree(a) != tree(demo_data.make_llcm_demo(str(tmp_path / "c"), num_ids=8, img_w=16, img_h=32, seed=4))
    with pytest.raises(ValueError, match="num_ids must be >= 6"):
        demo_data.make_llcm_demo(str(tmp_path / "d"), num_ids=5)
