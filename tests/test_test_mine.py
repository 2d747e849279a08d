"""test_mine.py as users run it: SYSU trials, RegDB per-trial checkpoints, JSON, CSV, pictures, search."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import data_manager
import demo_data
import eval_metrics
import model_mine
import test_mine
import utils


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """One of our checkpoints of an untrained small model (what matters here is the plumbing)."""
    torch.manual_seed(0)
    model = model_mine.embed_net(5, share_net=2, pcb="on", local_feat_dim=16, num_strips=2, gem_p=3.0)
    path = str(tmp_path_factory.mktemp("ckpt") / "model_trial1.pth")
    utils.atomic_save({"model": model.state_dict(), "arch": model.config, "args": {"img_w": 16, "img_h": 32}}, path)
    return path


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sysu") / "SYSU"
    return str(demo_data.make_sysu_demo(str(root), num_ids=14, n_val=2, n_test=5, img_w=24, img_h=48))


@pytest.fixture(scope="module")
def regdb_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("regdb") / "RegDB"
    return str(demo_data.make_regdb_demo(str(root), num_ids=10, imgs_per_id=3, img_w=16, img_h=32, num_trials=2))


def run(*argv):
    return test_mine.main(test_mine.get_args_parser().parse_args(["--gpu", "cpu", "--workers", "1", *argv]))


def test_sysu_trials_json_csv_and_pictures(sysu_root, checkpoint, tmp_path):
    out = tmp_path / "r.json"
    results = run("--dataset", "sysu", "--data_path", sysu_root, "--resume", checkpoint, "--trials", "0-2",
                  "--json", str(out), "--log_path", str(tmp_path), "--visualize", "2")
    saved = json.load(open(out))
    assert [t["trial"] for t in saved["trials"]] == [0, 1, 2]
    for k in test_mine.METRICS:
        values = [t[k] for t in saved["trials"]]
        assert saved["mean"][k] == pytest.approx(np.mean(values)) and saved["std"][k] == pytest.approx(np.std(values))
        assert all(0 <= v <= 100 for v in values)
    assert saved["args"]["resume"] == checkpoint and results["all search"]["trials"][0]["rank20"] >= 0
    rows = open(tmp_path / "results.csv").read().splitlines()
    assert rows[0].startswith("time,dataset") and len(rows) == 2 and ",sysu," in rows[1]
    pictures = sorted(os.listdir(tmp_path / "vis" / "all_search_trial0"))
    assert len(pictures) == 2
    assert Image.open(tmp_path / "vis" / "all_search_trial0" / pictures[0]).format == "PNG"
    assert Image.open(tmp_path / "vis" / "cmc.png").size == (640, 480)


def test_regdb_per_trial_checkpoints_and_both_directions(regdb_root, checkpoint, tmp_path):
    template = checkpoint.replace("trial1", "trial{trial}")
    shutil.copy(checkpoint, template.format(trial=2))
    results = run("--dataset", "regdb", "--data_path", regdb_root, "--resume", template, "--trials", "1-2",
                  "--tvsearch", "both", "--log_path", str(tmp_path))
    assert set(results) == {"visible->thermal", "thermal->visible"}
    assert [r["trial"] for r in results["thermal->visible"]["trials"]] == [1, 2]


def test_regdb_one_checkpoint_for_several_trials_is_refused(regdb_root, checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"put \{trial\} in --resume"):
        run("--dataset", "regdb", "--data_path", regdb_root, "--resume", checkpoint, "--trials", "1-2",
            "--log_path", str(tmp_path))


def test_regdb_checkpoint_without_its_split_is_tested_on_split_1_with_a_note(regdb_root, checkpoint, tmp_path,
                                                                             capsys):
    results = run("--dataset", "regdb", "--data_path", regdb_root, "--resume", checkpoint,
                  "--log_path", str(tmp_path))
    assert [r["trial"] for r in results["visible->thermal"]["trials"]] == [1]
    assert "does not record its RegDB split" in capsys.readouterr().out
    run("--dataset", "regdb", "--data_path", regdb_root, "--resume", checkpoint, "--trials", "2",
        "--log_path", str(tmp_path))
    assert "does not record" not in capsys.readouterr().out


def test_missing_checkpoint_is_an_error_not_random_weights(regdb_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        run("--dataset", "regdb", "--data_path", regdb_root, "--resume", str(tmp_path / "none.pth"),
            "--log_path", str(tmp_path))


def test_re_ranking_options_run(regdb_root, checkpoint, tmp_path):
    for method in ("k_reciprocal", "random_walk"):
        res = run("--dataset", "regdb", "--data_path", regdb_root, "--resume", checkpoint, "--trials", "1",
                  "--re_rank", method, "--log_path", "")
        assert 0 <= res["visible->thermal"]["mean"]["mAP"] <= 100
    with pytest.raises(ValueError, match="--re_rank"):
        run("--dataset", "regdb", "--data_path", regdb_root, "--resume", checkpoint, "--trials", "1",
            "--re_rank", "magic", "--log_path", "")


def test_folder_search_ranks_a_planted_duplicate_first(regdb_root, checkpoint, tmp_path):
    q, g = tmp_path / "q", tmp_path / "g" / "sub"
    q.mkdir()
    g.mkdir(parents=True)
    thermal = sorted((p for p in os.listdir(os.path.join(regdb_root, "Thermal", "0001"))))
    shutil.copy(os.path.join(regdb_root, "Thermal", "0001", thermal[0]), q / "who.png")
    rng = np.random.default_rng(0)
    for i in range(6):  # visible images of other sizes and names
        Image.fromarray(rng.integers(0, 256, (40 + i, 20, 3), dtype=np.uint8)).save(g / f"img {i}.jpg")
    shutil.copy(os.path.join(regdb_root, "Thermal", "0001", thermal[0]), g / "planted.png")
    csv_path = run("--resume", checkpoint, "--query_dir", str(q), "--gallery_dir", str(tmp_path / "g"),
                   "--query_modal", "visible", "--log_path", str(tmp_path), "--top_k", "5")
    lines = open(csv_path).read().splitlines()
    assert lines[0] == "query,rank,gallery,distance" and len(lines) == 1 + 5
    assert lines[1].split(",")[2].endswith("planted.png")
    assert len(os.listdir(tmp_path / "vis" / "search")) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="--gallery_dir: no image files"):
        run("--resume", checkpoint, "--query_dir", str(q), "--gallery_dir", str(tmp_path / "empty"),
            "--log_path", str(tmp_path))


def test_demo_folder_of_another_generator_version_is_kept_with_a_note(tmp_path, capsys):
    root = tmp_path / "demo"
    root.mkdir()
    (root / "demo.json").write_text(json.dumps({"params": {"layout": "regdb", "version": 0}}))
    args = test_mine.get_args_parser().parse_args(["--dataset", "demo", "--data_path", str(root)])
    test_mine.ensure_demo(args)
    assert os.listdir(root) == ["demo.json"]  # not regenerated: it may be a set made on purpose
    assert "generator version 0" in capsys.readouterr().out
    (root / "demo.json").write_text(json.dumps({"params": {"version": demo_data.GENERATOR_VERSION}}))
    test_mine.ensure_demo(args)
    assert capsys.readouterr().out == ""


@pytest.fixture(scope="module")
def llcm_root(tmp_path_factory):
    import pre_process_llcm
    root = str(demo_data.make_llcm_demo(str(tmp_path_factory.mktemp("llcm") / "LLCM"), img_w=16, img_h=32))
    pre_process_llcm.main(pre_process_llcm.get_args_parser().parse_args(
        ["--data_path", root, "--img_w", "16", "--img_h", "32", "--workers", "1"]))
    return root


def test_llcm_directions_have_the_official_query_and_gallery_roles(llcm_root, checkpoint):
    model, _ = utils.model_from_checkpoint(checkpoint)
    ev = test_mine.LLCMEval(llcm_root, (0, 1), ("ir2vis", "vis2ir", "vis2ir_literal"), 16, 32, 1)
    searches = {(s, t): (q, g) for s, t, q, g, _ in ev.searches()}
    nir_q = data_manager.process_query_llcm(llcm_root, "thermal")[0]
    vis_q = data_manager.process_query_llcm(llcm_root, "visible")[0]
    for t in (0, 1):
        vis_g = data_manager.process_gallery_llcm(llcm_root, "visible", t)[0]
        nir_g = data_manager.process_gallery_llcm(llcm_root, "thermal", t)[0]
        paths = lambda side: [ev.paths[side[0]][i] for i in side[1]]  # noqa: E731
        q, g = searches["infrared->visible", t]
        assert (paths(q), paths(g)) == (nir_q, vis_g)  # A: every infrared image probes one visible per (id, cam)
        q, g = searches["visible->infrared (official: roles swapped)", t]
        assert (paths(q), paths(g)) == (nir_g, vis_q)  # B: the sampled infrared images probe every visible one
        q, g = searches["visible->infrared (literal)", t]
        assert (paths(q), paths(g)) == (vis_q, nir_g)  # C
    records = {(r["setting"], r["trial"]): r for r in ev.run(model, torch.device("cpu"), 16)}
    # B is C's distance matrix transposed, evaluated with the roles swapped, as the official script does
    feats = {m: test_mine.extract_features(model, ev.images[m], 1 if m == "visible" else 2, torch.device("cpu"))
             for m in ev.images}
    q, g = searches["visible->infrared (literal)", 1]
    literal = -(feats[q[0]][q[1]] @ feats[g[0]][g[1]].T)
    want = eval_metrics.eval_llcm(literal.T, ev.pids[g[0]][g[1]], ev.pids[q[0]][q[1]], ev.camids[g[0]][g[1]],
                                  ev.camids[q[0]][q[1]])
    got = records["visible->infrared (official: roles swapped)", 1]
    assert np.allclose(got["cmc"], want[0]) and got["mAP"] == pytest.approx(want[1])


def test_llcm_two_epochs_train_checkpoint_and_evaluate(llcm_root, tmp_path):
    import train_mine
    args = train_mine.get_args_parser().parse_args([
        "--dataset", "llcm", "--data_path", llcm_root, "--img_h", "32", "--img_w", "16", "--num_strips", "2",
        "--local_feat_dim", "16", "--batch-size", "4", "--num_pos", "2", "--steps_per_epoch", "2", "--epochs", "2",
        "--pretrained", "none", "--gpu", "cpu", "--amp", "off", "--workers", "0", "--eval_start", "1",
        "--model_path", str(tmp_path / "models"), "--log_path", str(tmp_path / "log")])
    best = train_mine.main(args)
    name = train_mine.run_name(args)
    ckpt = str(tmp_path / "models" / f"{name}_best.pth")
    assert best["epoch"] == 1 and os.path.exists(ckpt)
    out = tmp_path / "r.json"
    results = run("--dataset", "llcm", "--data_path", llcm_root, "--resume", ckpt, "--trials", "0", "1",
                  "--direction", "both", "--json", str(out), "--log_path", str(tmp_path))
    assert list(results) == ["infrared->visible", "visible->infrared (official: roles swapped)"]
    # the in-training figure is trial 0 of infrared->visible
    assert results["infrared->visible"]["trials"][0]["rank1"] == pytest.approx(best["rank1"])
    saved = json.load(open(out))
    assert saved["infrared->visible"]["direction"] == "ir2vis"
    assert saved["visible->infrared (official: roles swapped)"]["direction"] == "vis2ir"
    assert [t["trial"] for t in saved["infrared->visible"]["trials"]] == [0, 1]
