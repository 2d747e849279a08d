"""Ranked-list pictures rank as the metric ranks: the protocol's removed gallery entries (SYSU-MM01 cam3
queries vs cam2, LLCM same identity and camera) are never drawn nor counted in the hardest-query choice;
pictures of different checkpoints go to different folders, and a re-run replaces only its own folder."""
import gc
import hashlib
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import data_loader
import eval_metrics
import test_mine
import visualize as vis
from test_test_mine import run
from test_visualize import border_pixel, make_images


def reference_removed(protocol, q_pids, g_pids, q_cams, g_cams):
    """Each protocol's rule as its evaluation code states it, written out independently."""
    q_pids, g_pids, q_cams, g_cams = map(np.asarray, (q_pids, g_pids, q_cams, g_cams))
    if protocol == "sysu":
        return (q_cams == 3)[:, None] & (g_cams == 2)[None, :]
    if protocol == "llcm":
        return (q_pids[:, None] == g_pids[None, :]) & (q_cams[:, None] == g_cams[None, :])
    return np.zeros((len(q_pids), len(g_pids)), dtype=bool)


def kept_list(d_row, removed_row):
    return [int(g) for g in np.argsort(d_row, kind="stable") if not removed_row[g]]


def metric_by_filtering(d, q_pids, g_pids, removed, max_rank=20):
    """SYSU/LLCM figures by a loop over each query's ranked list with the removed entries dropped."""
    cmc, aps, inps = [], [], []
    for q in range(len(d)):
        ids = g_pids[kept_list(d[q], removed[q])]
        hits = np.flatnonzero(ids == q_pids[q])
        if len(hits):
            aps.append(np.mean((np.arange(len(hits)) + 1) / (hits + 1)))
            inps.append(len(hits) / (hits[-1] + 1))
            cmc.append(np.arange(max_rank) >= list(dict.fromkeys(ids.tolist())).index(q_pids[q]))
    return np.mean(cmc, 0), np.mean(aps), np.mean(inps)


def hardest(d, q_pids, g_pids, removed, num):
    """The hardest queries by the metric's own ranking of each filtered list (eval_regdb on the kept
    gallery: its CMC is 0 before the first match); no match at all = hardest; ties by index."""
    first = []
    for q in range(len(d)):
        keep = ~removed[q]
        if not (g_pids[keep] == q_pids[q]).any():
            first.append(d.shape[1])
            continue
        cmc = eval_metrics.eval_regdb(d[q:q + 1, keep], q_pids[q:q + 1], g_pids[keep], max_rank=int(keep.sum()))[0]
        first.append(int((cmc == 0).sum()))
    return sorted(range(len(d)), key=lambda q: (-first[q], q))[:num]


def thumbnails(gallery_paths):
    thumbs = {vis._thumbnail(p, 64, 128).tobytes(): i for i, p in enumerate(gallery_paths)}
    assert len(thumbs) == len(gallery_paths)  # every gallery image recognisable in a picture
    return thumbs


def shown(picture, thumbs):
    """Gallery indices a ranked-list picture draws, in rank order, and their border colours."""
    with Image.open(picture) as im:
        img = im.convert("RGB")
    k = (img.width - vis.GAP) // (64 + 2 * vis.MARGIN) - 1
    assert img.size == vis.ranked_list_size(k)
    idx = [thumbs[img.crop(vis.ranked_list_cell(s)).tobytes()] for s in range(1, k + 1)]
    return idx, [border_pixel(img, s) for s in range(1, k + 1)]


def check_pictures(paths, thumbs, d, q_pids, g_pids, removed, top_k):
    """Every picture draws exactly the query's kept list (top_k of it), with the right borders."""
    for p in paths:
        q = int(re.search(r"query_(\d+)\.png$", p).group(1))
        want = kept_list(d[q], removed[q])[:top_k]
        idx, borders = shown(p, thumbs)
        assert idx == want, p
        assert borders == [vis.MATCH_COLOR if g_pids[g] == q_pids[q] else vis.MISMATCH_COLOR for g in want]


def synthetic(protocol, seed=0, nq=12, ng=14):
    """Random ids and cameras; the entries the protocol removes are the nearest, so a picture that kept
    them would show them first (and green where the identity is the query's)."""
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(0, 4, nq), rng.integers(0, 4, ng)
    if protocol == "sysu":
        q_cams, g_cams = rng.choice([3, 6], nq), rng.choice([1, 2, 4, 5], ng)
    else:
        q_cams, g_cams = rng.integers(1, 4, nq), rng.integers(1, 4, ng)
    removed = reference_removed(protocol, q_pids, g_pids, q_cams, g_cams)
    d = np.round(rng.random((nq, ng)), 1).astype(np.float32) - removed  # rounded: ties keep gallery order
    return d, q_pids, g_pids, q_cams, g_cams, removed


# ---------------------------------------------------------------- one rule, shared by metric and pictures

@pytest.mark.parametrize("protocol", ["sysu", "llcm"])
def test_the_mask_is_the_rule_the_metric_applies(protocol):
    metric = {"sysu": eval_metrics.eval_sysu, "llcm": eval_metrics.eval_llcm}[protocol]
    for seed in range(3):
        d, qp, gp, qc, gc_, want = synthetic(protocol, seed, nq=30, ng=25)
        removed = eval_metrics.removed_mask(protocol, qp, gp, qc, gc_).numpy()
        assert removed.dtype == bool and (removed == want).all()
        cmc, mAP, mINP = metric(d, qp, gp, qc, gc_)
        ref = metric_by_filtering(d, qp, gp, removed)
        assert np.allclose(cmc, ref[0]) and mAP == pytest.approx(ref[1]) and mINP == pytest.approx(ref[2])
    assert not eval_metrics.removed_mask("regdb", qp, gp).any()
    with pytest.raises(ValueError, match="protocol must be one of"):
        eval_metrics.removed_mask("market", qp, gp, qc, gc_)
    with pytest.raises(ValueError, match="camera ids"):
        eval_metrics.removed_mask(protocol, qp, gp)


@pytest.mark.parametrize("protocol", ["sysu", "llcm"])
@pytest.mark.slow
def test_pictures_leave_out_the_removed_entries_and_pick_the_hardest_on_the_kept_list(protocol, tmp_path):
    d, qp, gp, qc, gc_, removed = synthetic(protocol)
    assert (removed & (qp[:, None] == gp[None, :])).any()  # the old pictures showed same-id removed entries
    q_paths, g_paths = make_images(tmp_path / "q", len(qp), 1), make_images(tmp_path / "g", len(gp), 2)
    thumbs = thumbnails(g_paths)
    mask = eval_metrics.removed_mask(protocol, qp, gp, qc, gc_)
    for order, top_k in (("hardest", len(gp)), ("hardest", 3), ("random", len(gp))):
        paths = vis.write_ranked_lists(tmp_path / f"{order}{top_k}", q_paths, g_paths, d, qp, gp, num=len(qp),
                                       top_k=top_k, order=order, removed=mask)
        check_pictures(paths, thumbs, d, qp, gp, removed, top_k)
        if order == "hardest":
            chosen = [int(re.search(r"(\d+)\.png$", p).group(1)) for p in paths]
            assert chosen == hardest(d, qp, gp, removed, len(qp))
    # a row with fewer kept entries than top_k draws only those
    full = np.ones_like(removed)
    full[0, :2] = False
    [p] = vis.write_ranked_lists(tmp_path / "short", q_paths[:1], g_paths, d[:1], removed=full[:1], top_k=5)
    assert shown(p, thumbs)[0] == kept_list(d[0], full[0])
    with pytest.raises(ValueError, match="bool mask"):
        vis.write_ranked_lists(tmp_path / "bad", q_paths, g_paths, d, removed=removed[:, 1:])


def test_regdb_pictures_are_unchanged(tmp_path):
    d, qp, gp, qc, gc_, _ = synthetic("llcm")
    q_paths, g_paths = make_images(tmp_path / "q", len(qp), 1), make_images(tmp_path / "g", len(gp), 2)
    mask = eval_metrics.removed_mask("regdb", qp, gp)
    a = vis.write_ranked_lists(tmp_path / "a", q_paths, g_paths, d, qp, gp, num=5, top_k=4)
    b = vis.write_ranked_lists(tmp_path / "b", q_paths, g_paths, d, qp, gp, num=5, top_k=4, removed=mask)
    assert [os.path.basename(p) for p in a] == [os.path.basename(p) for p in b]
    assert all(open(x, "rb").read() == open(y, "rb").read() for x, y in zip(a, b))


# ---------------------------------------------------------------- through test_mine, every protocol

def run_spied(monkeypatch, *argv):
    """run(...) recording every picture-writing call: (positional args, keywords, final picture paths)."""
    calls, original = [], test_mine.RankedListWriter.__call__

    real = test_mine.visualize.write_ranked_lists

    def spy(self, *a, **kw):
        written = []

        def capture(*x, **y):
            written.extend(real(*x, **y))
            return written
        with monkeypatch.context() as m:
            m.setattr(test_mine.visualize, "write_ranked_lists", capture)
            original(self, *a, **kw)
        calls.append((a, kw, self, [os.path.relpath(p, self.tmp) for p in written]))
    monkeypatch.setattr(test_mine.RankedListWriter, "__call__", spy)
    run(*argv)
    return [(a, kw, [os.path.join(w.folder, f) for f in files]) for a, kw, w, files in calls if files]


def check_run(calls, protocol, top_k):
    for (setting, _round, dist, q_paths, g_paths, qp, gp), kw, paths in calls:
        assert kw["protocol"] == protocol
        d = dist.cpu().numpy()
        removed = reference_removed(protocol, qp, gp, kw["q_camids"], kw["g_camids"])
        check_pictures(paths, thumbnails(g_paths), d, qp, gp, removed, top_k)
        chosen = [int(re.search(r"(\d+)\.png$", p).group(1)) for p in paths]
        assert chosen == hardest(d, qp, gp, removed, len(paths))
    return calls


@pytest.mark.slow
def test_sysu_cam3_queries_never_show_cam2(sysu_root, checkpoint, tmp_path, monkeypatch):
    calls = check_run(run_spied(monkeypatch, "--dataset", "sysu", "--data_path", sysu_root, "--resume", checkpoint,
                                "--trials", "0", "--log_path", str(tmp_path), "--visualize", "25", "--top_k", "16"),
                      "sysu", 16)
    [((_, _, _, _, _, qp, gp), kw, paths)] = calls
    qc, gc_ = kw["q_camids"], kw["g_camids"]
    assert len(paths) == 25 and ((qc == 3)[:, None] & (gc_ == 2)[None, :] & (qp[:, None] == gp[None, :])).any()
    folder = tmp_path / "vis" / "model_trial1"
    assert sorted(os.listdir(folder)) == ["all_search_trial0", "cmc.png", "vis.json"]


@pytest.mark.slow
def test_llcm_same_identity_same_camera_never_shown_in_any_direction(llcm_root, checkpoint, tmp_path,
                                                                     monkeypatch):
    calls = check_run(run_spied(monkeypatch, "--dataset", "llcm", "--data_path", llcm_root, "--resume", checkpoint,
                                "--trials", "0", "--direction", "all", "--log_path", str(tmp_path),
                                "--visualize", "6", "--top_k", "100"), "llcm", 100)
    assert len(calls) == 3
    for (_, _, _, _, _, qp, gp), kw, _ in calls:  # each direction had something to leave out
        assert reference_removed("llcm", qp, gp, kw["q_camids"], kw["g_camids"]).any()


# ---------------------------------------------------------------- one folder per checkpoint, never mixed

def tree(folder):
    """{relative path: sha256} of every file under folder."""
    return {os.path.relpath(os.path.join(d, f), folder): hashlib.sha256(open(os.path.join(d, f), "rb").read())
            .hexdigest() for d, _, names in os.walk(folder) for f in names}


def regdb_vis(monkeypatch, root, ckpt, vis_dir, *extra):
    return run_spied(monkeypatch, "--dataset", "regdb", "--data_path", root, "--resume", ckpt, "--trials", "1",
                     "--log_path", "", "--vis_dir", str(vis_dir), *extra)


@pytest.mark.slow
def test_regdb_pictures_rank_the_whole_gallery_one_folder_per_checkpoint_and_reruns_replace_their_own(
        regdb_root, checkpoint, tmp_path, monkeypatch):
    vis_dir = tmp_path / "vis"
    other = str(tmp_path / "other_best.pth")
    shutil.copy(checkpoint, other)
    check_run(regdb_vis(monkeypatch, regdb_root, checkpoint, vis_dir, "--visualize", "5", "--top_k", "100"),
              "regdb", 100)
    regdb_vis(monkeypatch, regdb_root, other, vis_dir, "--visualize", "2", "--vis_order", "random")
    assert sorted(os.listdir(vis_dir)) == ["model_trial1", "other_best"]
    kept = tree(vis_dir / "other_best")
    for stem, count in (("model_trial1", 5), ("other_best", 2)):
        manifest = json.load(open(vis_dir / stem / "vis.json"))
        assert sorted(tree(vis_dir / stem)) == sorted(manifest["files"] + ["vis.json"])
        assert len(manifest["files"]) == count + 1 and "cmc.png" in manifest["files"]
    regdb_vis(monkeypatch, regdb_root, checkpoint, vis_dir, "--visualize", "2", "--vis_order", "random")
    pictures = sorted(os.listdir(vis_dir / "model_trial1" / "visible_to_thermal_trial1"))
    assert pictures == sorted(os.path.basename(f) for f in json.load(open(vis_dir / "model_trial1" / "vis.json"))
                              ["files"] if f != "cmc.png")
    assert len(pictures) == 2  # none of the first run's five left behind
    assert tree(vis_dir / "other_best") == kept and sorted(os.listdir(vis_dir)) == ["model_trial1", "other_best"]


def test_folder_name_is_the_checkpoint_stem():
    name = test_mine.RankedListWriter.folder_name
    assert name("save/regdb_trial{trial}_best.pth") == "regdb_trialtrial_best"
    assert name("/m/sysu_agw_p4_n8_lr_0.1_seed_0_best.t") == "sysu_agw_p4_n8_lr_0.1_seed_0_best"
    assert name("run_lr_0.1") == "run_lr_0.1" and name(".pth") == "checkpoint"


def write_folder(vis_dir, ckpt, images, num=2):
    """What an earlier run of ckpt leaves: RankedListWriter driven by hand (no model needed)."""
    q_paths, g_paths = images
    d, qp, gp, qc, gc_, _ = synthetic("regdb", nq=len(q_paths), ng=len(g_paths))
    writer = test_mine.RankedListWriter(str(vis_dir), num, "hardest", 3, ckpt)
    writer("visible->thermal", 1, torch.from_numpy(d), q_paths, g_paths, qp, gp, q_camids=qc, g_camids=gc_,
           protocol="regdb")
    return writer


@pytest.fixture
def images(tmp_path):
    return make_images(tmp_path / "q", 4, 1), make_images(tmp_path / "g", 5, 2)


def refuse_reading_images(monkeypatch):
    def read(*a, **k):
        raise AssertionError("images were read before the picture folder was checked")
    monkeypatch.setattr(data_loader, "load_images", read)


@pytest.mark.parametrize("intruder", ["user file", "no manifest", "symlink"])
def test_a_folder_with_files_of_someone_else_is_refused_untouched(regdb_root, checkpoint, tmp_path,
                                                                  monkeypatch, images, intruder):
    vis_dir = tmp_path / "vis"
    folder = vis_dir / "model_trial1"
    if intruder == "no manifest":
        folder.mkdir(parents=True)
        (folder / "query_00001.png").write_bytes(b"my own picture")
    else:
        write_folder(vis_dir, checkpoint, images).finish({"c": [0.5, 1.0]}, "CMC")
        if intruder == "user file":
            (folder / "visible_to_thermal_trial1" / "notes.txt").write_text("mine")
        else:
            os.symlink(tmp_path, folder / "link")
    before = tree(vis_dir)
    refuse_reading_images(monkeypatch)
    with pytest.raises(ValueError, match=re.escape(str(folder))) as e:
        run("--dataset", "regdb", "--data_path", regdb_root, "--resume", checkpoint, "--trials", "1",
            "--log_path", "", "--vis_dir", str(vis_dir), "--visualize", "3")
    assert "\n" not in str(e.value) and "nothing was deleted" in str(e.value)
    assert tree(vis_dir) == before and sorted(os.listdir(vis_dir)) == ["model_trial1"]


def test_a_run_that_stops_before_the_end_leaves_the_old_folder_and_no_temporary_one(tmp_path, images):
    vis_dir = tmp_path / "vis"
    write_folder(vis_dir, "m.pth", images).finish({"c": [0.5, 1.0]}, "CMC")
    before = tree(vis_dir)
    writer = write_folder(vis_dir, "m.pth", images, num=4)  # pictures written, never finished
    assert len(os.listdir(vis_dir)) == 2
    del writer
    gc.collect()
    assert tree(vis_dir) == before and os.listdir(vis_dir) == ["m"]
