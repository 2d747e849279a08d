"""test_mine.py as users run it: SYSU trials, RegDB per-split checkpoints, JSON, CSV, pictures, search."""
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import checkpoints
import data_loader
import data_manager
import demo_data
import eval_metrics
import model_mine
import settings
import test_mine
import utils


def run(*argv):
    return test_mine.main(test_mine.get_args_parser().parse_args(["--gpu", "cpu", "--workers", "1", *argv]))


@pytest.mark.slow
def test_sysu_trials_json_csv_and_pictures(sysu_root, checkpoint, tmp_path):
    out = tmp_path / "r.json"
    results = run("--dataset", "sysu", "--data_path", sysu_root, "--resume", checkpoint, "--trials", "0-2",
                  "--json", str(out), "--log_path", str(tmp_path), "--visualize", "2")
    saved = json.load(open(out))
    assert [t["trial"] for t in saved["trials"]] == [0, 1, 2]
    for k in eval_metrics.METRICS:
        values = [t[k] for t in saved["trials"]]
        assert saved["mean"][k] == pytest.approx(np.mean(values)) and saved["std"][k] == pytest.approx(np.std(values))
        assert all(0 <= v <= 100 for v in values)
    assert saved["args"]["resume"] == checkpoint and results["all search"]["trials"][0]["rank20"] >= 0
    rows = open(tmp_path / "results.csv").read().splitlines()
    assert rows[0].startswith("time,dataset") and len(rows) == 2 and ",sysu," in rows[1]
    pictures = sorted(os.listdir(tmp_path / "vis" / "model_trial1" / "all_search_trial0"))
    assert len(pictures) == 2
    assert Image.open(tmp_path / "vis" / "model_trial1" / "all_search_trial0" / pictures[0]).format == "PNG"
    assert Image.open(tmp_path / "vis" / "model_trial1" / "cmc.png").size == (640, 480)


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_re_ranking_options_run(regdb_root, checkpoint, tmp_path):
    for method in ("k_reciprocal", "random_walk"):
        res = run("--dataset", "regdb", "--data_path", regdb_root, "--resume", checkpoint, "--trials", "1",
                  "--re_rank", method, "--log_path", "")
        assert 0 <= res["visible->thermal"]["mean"]["mAP"] <= 100
    with pytest.raises(SystemExit):  # the parser's choices
        run("--dataset", "regdb", "--data_path", regdb_root, "--resume", checkpoint, "--trials", "1",
            "--re_rank", "magic", "--log_path", "")
    with pytest.raises(ValueError, match="--re_rank must be no, k_reciprocal or random_walk"):
        eval_metrics.distance(torch.zeros(1, 2), torch.zeros(1, 2), "magic")


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
    assert sorted(os.listdir(tmp_path / "vis" / "search")) == ["query_00000.png", "search_topk.csv", "vis.json"]
    assert csv_path == str(tmp_path / "vis" / "search" / "search_topk.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="--gallery_dir: no image files"):
        run("--resume", checkpoint, "--query_dir", str(q), "--gallery_dir", str(tmp_path / "empty"),
            "--log_path", str(tmp_path))


def test_demo_folder_of_another_generator_version_is_kept_with_a_note(tmp_path, capsys):
    root = tmp_path / "demo"
    root.mkdir()
    (root / "demo.json").write_text(json.dumps({"params": {"layout": "regdb", "version": 0}}))
    args = test_mine.get_args_parser().parse_args(["--dataset", "demo", "--data_path", str(root)])
    demo_data.ensure_demo(args)
    assert os.listdir(root) == ["demo.json"]  # not regenerated: it may be a set made on purpose
    assert "generator version 0" in capsys.readouterr().out
    (root / "demo.json").write_text(json.dumps({"params": {"version": demo_data.GENERATOR_VERSION}}))
    demo_data.ensure_demo(args)
    assert capsys.readouterr().out == ""


@pytest.mark.slow
def test_llcm_directions_have_the_official_query_and_gallery_roles(llcm_root, checkpoint):
    model, _ = checkpoints.model_from_checkpoint(checkpoint)
    ev = eval_metrics.LLCMEval(llcm_root, (0, 1), ("ir2vis", "vis2ir", "vis2ir_literal"), 16, 32, 1)
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
    records = {(r["setting"], r["round"]): r for r in ev.run(model, torch.device("cpu"), 16)}
    # B is C's distance matrix transposed, evaluated with the roles swapped, as the official script does
    feats = {m: eval_metrics.extract_features(model, ev.images[m], m, torch.device("cpu")) for m in ev.images}
    q, g = searches["visible->infrared (literal)", 1]
    literal = -(feats[q[0]][q[1]] @ feats[g[0]][g[1]].T)
    want = eval_metrics.eval_llcm(literal.T, ev.pids[g[0]][g[1]], ev.pids[q[0]][q[1]], ev.camids[g[0]][g[1]],
                                  ev.camids[q[0]][q[1]])
    got = records["visible->infrared (official: roles swapped)", 1]
    assert np.allclose(got["cmc"], want[0]) and got["mAP"] == pytest.approx(want[1])
    assert got["mINP"] == pytest.approx(want[2])


@pytest.mark.slow
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


@pytest.mark.slow
def test_llcm_every_direction_through_the_cli_names_its_direction(llcm_root, checkpoint, tmp_path, capsys):
    labels = list(eval_metrics.LLCM_LABELS.values())
    results = run("--dataset", "llcm", "--data_path", llcm_root, "--resume", checkpoint, "--trials", "0", "1",
                  "--direction", "all", "--json", str(tmp_path / "all.json"), "--log_path", str(tmp_path))
    assert list(results) == labels
    printed = capsys.readouterr().out.splitlines()
    for label in labels:
        for what in ("trial 0", "trial 1", "mean over 2 trial(s)", "std  over 2 trial(s)"):
            assert sum(line.startswith(f"{label}, {what}: Rank-1") for line in printed) == 1, (label, what)
    saved = json.load(open(tmp_path / "all.json"))
    assert [saved[label]["direction"] for label in labels] == ["ir2vis", "vis2ir", "vis2ir_literal"]
    literal = labels[2]
    alone = run("--dataset", "llcm", "--data_path", llcm_root, "--resume", checkpoint, "--trials", "0", "1",
                "--direction", "vis2ir_literal", "--json", str(tmp_path / "literal.json"), "--log_path", str(tmp_path))
    assert list(alone) == [literal] and alone[literal]["mean"] == pytest.approx(results[literal]["mean"])
    saved = json.load(open(tmp_path / "literal.json"))  # one setting: its figures at the top level
    assert saved["direction"] == "vis2ir_literal" and saved["setting"] == literal
    assert [t["trial"] for t in saved["trials"]] == [0, 1]
    rows = open(tmp_path / "results.csv").read().splitlines()[1:]
    assert [r.split(",")[3] for r in rows] == labels + [literal]


# ---------------------------------------------------------------- RegDB: every input before any split

def refuse_evaluation(monkeypatch):
    def evaluated(*a, **k):
        raise AssertionError("a split was evaluated before every input was checked")
    monkeypatch.setattr(eval_metrics.Evaluator, "run", evaluated)


def broken_input(case, regdb_root, checkpoint, folder):
    """A RegDB root and a per-split checkpoint template, split 2 broken as case says."""
    shutil.copy(checkpoint, folder / "m_trial1.pth")
    trial2 = folder / "m_trial2.pth"
    if case == "missing idx file":
        regdb_root = str(shutil.copytree(regdb_root, folder / "RegDB"))
        os.remove(os.path.join(regdb_root, "idx", "test_thermal_2.txt"))
    if case != "missing checkpoint":
        shutil.copy(checkpoint, trial2)
    if case == "corrupt checkpoint":
        trial2.write_bytes(b"not a checkpoint")
    if case == "weights that do not fit":
        ckpt = torch.load(checkpoint, weights_only=False)
        ckpt["model"].pop("head.fc_weight")
        torch.save(ckpt, trial2)
    return regdb_root, str(folder / "m_trial{trial}.pth")


@pytest.mark.parametrize("case,error,match", [
    ("missing checkpoint", FileNotFoundError, r"no such checkpoint file: .*m_trial2\.pth$"),
    ("missing idx file", FileNotFoundError, r"RegDB: missing .*idx/test_thermal_2\.txt"),
    ("corrupt checkpoint", ValueError, r"cannot read .*m_trial2\.pth as a PyTorch checkpoint"),
    ("weights that do not fit", ValueError, r"m_trial2\.pth does not fit the model .*missing keys \(1\)"),
])
def test_regdb_splits_fail_before_any_is_evaluated(regdb_root, checkpoint, tmp_path, monkeypatch, case, error,
                                                   match):
    root, template = broken_input(case, regdb_root, checkpoint, tmp_path)
    refuse_evaluation(monkeypatch)
    with pytest.raises(error, match=match):
        run("--dataset", "regdb", "--data_path", root, "--resume", template, "--trials", "1-2", "--json",
            str(tmp_path / "r.json"), "--log_path", str(tmp_path / "log"))
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "log" / "results.csv").exists()


def test_regdb_splits_are_1_to_10(regdb_root, checkpoint, tmp_path):
    template = str(tmp_path / "m_trial{trial}.pth")
    for flags, match in ((("--trials", "0"), "--trials 0: RegDB splits are 1..10"),
                         (("--trials", "9-11"), "--trials 9 10 11: RegDB splits are 1..10"),
                         (("--trial", "0"), "--trial 0: RegDB splits are 1..10")):
        with pytest.raises(ValueError, match=f"^{re.escape(match)}$"):
            run("--dataset", "regdb", "--data_path", regdb_root, "--resume", template, *flags, "--log_path", "")
    with pytest.raises(ValueError, match="^--trials 0: the demo's splits are numbered from 1$"):
        run("--dataset", "demo", "--data_path", regdb_root, "--resume", template, "--trials", "0", "--log_path", "")


def test_a_malformed_checkpoint_is_one_line_naming_it(regdb_root, tmp_path, monkeypatch):
    refuse_evaluation(monkeypatch)
    path = tmp_path / "hand_made.pth"
    torch.save({"model": {}, "arch": {}}, path)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: a malformed checkpoint") as e:
        run("--dataset", "regdb", "--data_path", regdb_root, "--resume", str(path), "--trials", "1",
            "--log_path", "")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("dataset,trials,repeated", [("sysu", ["0,0"], "0"), ("sysu", ["0-2", "1"], "1"),
                                                     ("regdb", ["1,2,2,1"], "1, 2")])
def test_a_trial_given_twice_is_refused_not_counted_twice(sysu_root, regdb_root, checkpoint, tmp_path, monkeypatch,
                                                          dataset, trials, repeated):
    refuse_evaluation(monkeypatch)
    root = sysu_root if dataset == "sysu" else regdb_root
    shutil.copy(checkpoint, tmp_path / "m_trial1.pth")
    shutil.copy(checkpoint, tmp_path / "m_trial2.pth")
    resume = checkpoint if dataset == "sysu" else str(tmp_path / "m_trial{trial}.pth")
    with pytest.raises(ValueError, match=rf"^--trials .*: {repeated} given more than once; name each trial once$"):
        run("--dataset", dataset, "--data_path", root, "--resume", resume, "--trials", *trials, "--json",
            str(tmp_path / "r.json"), "--log_path", str(tmp_path / "log"))
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "log").exists()


@pytest.mark.parametrize("flags,match", [
    (("--dataset", "llcm", "--tvsearch", "both"), "--tvsearch: not used by --dataset llcm"),
    (("--dataset", "regdb", "--direction", "vis2ir"), "--direction: not used by --dataset regdb"),
    (("--dataset", "regdb", "--mode", "indoor", "--gall_mode", "multi"), "--mode, --gall_mode: not used by --dataset regdb"),
    (("--dataset", "sysu", "--trial", "2"), "--trial: not used by --dataset sysu"),
    (("--dataset", "sysu", "--query_modal", "visible"), "--query_modal: not used by --dataset sysu"),
    (("--query_dir", "q", "--gallery_dir", "g", "--mode", "indoor", "--trials", "1"),
     "--mode, --data_path, --trials: not used by a folder search (--query_dir/--gallery_dir)"),
])
def test_a_flag_of_another_dataset_is_an_error_not_ignored(regdb_root, checkpoint, flags, match):
    with pytest.raises(ValueError, match=f"^{re.escape(match)}; leave (it|them) out$"):
        run("--data_path", regdb_root, "--resume", checkpoint, "--log_path", "", *flags)


def test_half_on_an_amx_cpu_warns(regdb_root, checkpoint, monkeypatch, capsys):
    class Stop(Exception):
        pass

    def stop(*a):
        raise Stop  # before any feature is extracted in bf16 (NaN on AMX is what the warning is about)
    monkeypatch.setattr(utils, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(test_mine.demo_data, "ensure_demo", stop)
    with pytest.raises(Stop):
        run("--dataset", "regdb", "--data_path", regdb_root, "--resume", checkpoint, "--half", "--log_path", "")
    assert "warning: --half on a CPU with AMX" in capsys.readouterr().out


def test_a_trial_template_with_trial_tests_that_split_only(regdb_root, checkpoint, tmp_path):
    shutil.copy(checkpoint, tmp_path / "m_trial2.pth")  # only split 2's model exists
    results = run("--dataset", "regdb", "--data_path", regdb_root, "--resume", str(tmp_path / "m_trial{trial}.pth"),
                  "--trial", "2", "--log_path", "")
    assert [t["trial"] for t in results["visible->thermal"]["trials"]] == [2]


# ---------------------------------------------------------------- DGTL checkpoints

def save_ours(model, path):
    utils.atomic_save({"model": model.state_dict(), "arch": model.config, "args": {"img_w": 16, "img_h": 32}}, path)
    return str(path)


@pytest.fixture(scope="module")
def dgtl_files(tmp_path_factory):
    """A small DGTL model (ResNet-18, --bpool max --cpool max) as our checkpoint and in the reference
    code's layout ({'net': ...}, three whole ResNets)."""
    torch.manual_seed(0)
    model = model_mine.embed_net(5, arch="resnet18", head="dgtl", bpool="max", cpool="max")
    folder = tmp_path_factory.mktemp("dgtl")
    reference = str(folder / "regdb_bpool_max_cpool_max_best.t")
    torch.save({"net": model_mine.to_dgtl_state_dict(model), "mAP": 0.0, "epoch": 3}, reference)
    return save_ours(model, folder / "ours.pth"), reference


def features(model, images, modality):
    """The model's two eval features, L2(h) and L2(b), of uint8 images: coarse and fine."""
    model.eval()
    x = data_loader.normalize(torch.from_numpy(images))
    with torch.no_grad():
        out = model(x, x, modality)
    return {k: torch.nn.functional.normalize(out[k], dim=1) for k in ("coarse", "fine")}


@pytest.mark.slow
def test_dgtl_json_holds_the_coarse_feature_at_the_top_and_the_fine_one_under_a_key(regdb_root, dgtl_files,
                                                                                   tmp_path):
    ours, _ = dgtl_files
    run("--dataset", "regdb", "--data_path", regdb_root, "--resume", ours, "--trials", "1", "--json",
        str(tmp_path / "r.json"), "--log_path", str(tmp_path))
    saved = json.load(open(tmp_path / "r.json"))
    assert saved["setting"] == "visible->thermal" and set(saved["fine"]) == {"trials", "mean", "std"}
    model, _ = checkpoints.model_from_checkpoint(ours)
    want = {}
    for m in ("visible", "thermal"):
        paths, labels = data_manager.process_test_regdb(regdb_root, 1, m)
        want[m] = features(model, data_loader.load_images(paths, 16, 32, 1), m), labels
    for feature, entry in (("coarse", saved), ("fine", saved["fine"])):
        (q, q_labels), (g, g_labels) = [(f[feature], labels) for f, labels in (want["visible"], want["thermal"])]
        cmc, mAP, mINP = eval_metrics.eval_regdb(-(q @ g.T), q_labels, g_labels)
        assert entry["trials"][0]["mAP"] == pytest.approx(100 * mAP) == entry["mean"]["mAP"]
        assert entry["mean"]["mINP"] == pytest.approx(100 * mINP) and entry["std"]["mAP"] == 0
    assert saved["mean"] != saved["fine"]["mean"]  # the two features are told apart
    rows = [r.split(",") for r in open(tmp_path / "results.csv").read().splitlines()[1:]]
    assert [r[3] for r in rows] == ["visible->thermal [dgtl coarse]", "visible->thermal [dgtl fine]"]
    assert float(rows[0][12]) == pytest.approx(saved["mean"]["mAP"], abs=0.005)  # mAP_mean
    assert float(rows[1][12]) == pytest.approx(saved["fine"]["mean"]["mAP"], abs=0.005)


def test_dgtl_without_coarse_branch_is_tagged_by_its_fine_feature(regdb_root, tmp_path):
    torch.manual_seed(0)
    path = save_ours(model_mine.embed_net(5, arch="resnet18", head="dgtl", bpool="max", cpool="no"),
                     tmp_path / "fine.pth")
    results = run("--dataset", "regdb", "--data_path", regdb_root, "--resume", path, "--trials", "1",
                  "--log_path", str(tmp_path))
    assert set(results["visible->thermal"]) == {"trials", "mean", "std", "model", "features"}
    assert results["visible->thermal"]["features"] == ["fine"]
    rows = open(tmp_path / "results.csv").read().splitlines()[1:]
    assert [r.split(",")[3] for r in rows] == ["visible->thermal [dgtl fine]"]


def test_dgtl_on_sysu_indoor_over_several_trials(sysu_root, dgtl_files, tmp_path, capsys):
    ours, _ = dgtl_files
    results = run("--dataset", "sysu", "--data_path", sysu_root, "--resume", ours, "--mode", "indoor",
                  "--trials", "0", "3", "--log_path", "")
    entry = results["indoor search"]
    printed = capsys.readouterr().out
    for line in ("indoor search, coarse feature, trial 3: Rank-1", "indoor search, fine feature, trial 0: Rank-1",
                 "indoor search (coarse feature, reported), mean over 2 trial(s)",
                 "indoor search (fine feature), std  over 2 trial(s)"):
        assert line in printed
    model, _ = checkpoints.model_from_checkpoint(ours)
    q_paths, q_pids, q_cams = data_manager.process_query_sysu(sysu_root, "indoor")
    q = features(model, data_loader.load_images(q_paths, 16, 32, 1), "thermal")
    for i, trial in enumerate((0, 3)):
        g_paths, g_pids, g_cams = data_manager.process_gallery_sysu(sysu_root, "indoor", trial)
        assert set(g_cams.tolist()) == {1, 2}
        g = features(model, data_loader.load_images(g_paths, 16, 32, 1), "visible")
        for feature, got in (("coarse", entry), ("fine", entry["fine"])):
            _, mAP, mINP = eval_metrics.eval_sysu(-(q[feature] @ g[feature].T), q_pids, g_pids, q_cams, g_cams)
            assert got["trials"][i]["trial"] == trial
            assert got["trials"][i]["mAP"] == pytest.approx(100 * mAP)
            assert got["trials"][i]["mINP"] == pytest.approx(100 * mINP)
    for got in (entry, entry["fine"]):
        assert got["mean"]["mAP"] == pytest.approx(np.mean([t["mAP"] for t in got["trials"]]))
        assert got["std"]["mAP"] == pytest.approx(np.std([t["mAP"] for t in got["trials"]]))


def test_reference_dgtl_commands_without_method_evaluate_dgtl(regdb_root, dgtl_files, capsys):
    # the reference's own command: test.py --dataset regdb --bpool max --cpool max --fuse sum
    ours, reference = dgtl_files
    results = run("--dataset", "regdb", "--data_path", regdb_root, "--resume", reference, "--trials", "1",
                  "--bpool", "max", "--cpool", "max", "--fuse", "sum", "--arch", "resnet18", "--img_h", "32",
                  "--img_w", "16", "--log_path", "")
    assert "note: --bpool, --cpool, --fuse given without --method: evaluating as --method dgtl" in \
        capsys.readouterr().out
    want = run("--dataset", "regdb", "--data_path", regdb_root, "--resume", ours, "--trials", "1", "--log_path", "")
    for setting, entry in want.items():
        assert results[setting]["mean"] == pytest.approx(entry["mean"])
        assert results[setting]["fine"]["mean"] == pytest.approx(entry["fine"]["mean"])


def test_method_must_be_one_test_mine_knows(regdb_root, checkpoint):
    with pytest.raises(SystemExit):  # the parser's choices: the methods of settings.METHODS
        run("--dataset", "regdb", "--data_path", regdb_root, "--resume", checkpoint, "--method", "pcb")
    with pytest.raises(ValueError, match=r"^--method must be one of hctri, batch-hard, wrt, agw, caj, id-only, deen, dgtl, got 'pcb'$"):
        settings.get_method("pcb")
    args = test_mine.get_args_parser().parse_args(["--method", "agw"])
    checkpoints.model_from_checkpoint(checkpoint, args, ["method"])  # a loss of the hctri family: the same network


@pytest.mark.parametrize("which,flags,match", [
    # our strips-head file (--pcb on): DGTL's options are not silently dropped
    ("pcb", ("--method", "dgtl", "--bpool", "max"),
     r"records its architecture, which differs from --bpool max \(the file's strips head does not read it\), "
     r"--method dgtl \(the file: strips head\): leave those flags out"),
    ("pcb", ("--cpool", "max"), r"differs from --cpool max \(the file's strips head does not read it\)"),
    # our DGTL file: flags it does not read, even where their value is the recorded default
    ("ours", ("--num_strips", "6"), r"differs from --num_strips 6 \(the file's dgtl head does not read it\)"),
    ("ours", ("--gem_p", "3"), r"differs from --gem_p 3.0 \(the file's dgtl head does not read it\)"),
    ("ours", ("--method", "hctri"), r"differs from --method hctri \(the file: dgtl head\)"),
    # the reference's file, built from the flags
    ("reference", ("--method", "dgtl", "--pcb", "on"), r"--pcb on: the DGTL head uses global features"),
    ("reference", ("--bpool", "max", "--cpool", "max", "--gem_p", "3"),
     r"^--gem_p: not read by the dgtl head built for .*\.t \(--method dgtl\); leave it out$"),
    ("reference", ("--method", "dgtl", "--num_strips", "6", "--local_feat_dim", "256"),
     r"^--local_feat_dim, --num_strips: not read by the dgtl head .*; leave them out$"),
    ("reference", ("--method", "dgtl", "--gm_pool", "on"), r"^--gm_pool: not read by the dgtl head"),
])
def test_architecture_flags_the_head_does_not_read_are_errors(regdb_root, checkpoint, dgtl_files, tmp_path, which,
                                                             flags, match):
    path = {"pcb": checkpoint, "ours": dgtl_files[0], "reference": dgtl_files[1]}[which]
    size = ("--arch", "resnet18", "--img_h", "32", "--img_w", "16") if which == "reference" else ()
    with pytest.raises(ValueError, match=match):
        run("--dataset", "regdb", "--data_path", regdb_root, "--resume", path, "--trials", "1", *size, *flags,
            "--log_path", str(tmp_path))
    assert not (tmp_path / "results.csv").exists()


def test_gem_p_is_read_where_a_dgtl_branch_pools_with_gem(tmp_path):
    torch.manual_seed(0)
    model = model_mine.embed_net(5, arch="resnet18", head="dgtl", bpool="max", cpool="gem", gem_p=4.0)
    ours = save_ours(model, tmp_path / "gem.pth")
    args = test_mine.get_args_parser().parse_args(["--gem_p", "4", "--cpool", "gem"])
    assert checkpoints.model_from_checkpoint(ours, args, ["cpool", "gem_p"])[0].config["gem_p"] == 4.0
    assert settings.unused_arch_flags(model.config, ["gem_p", "bpool", "fuse"]) == []
    global_head = model_mine.embed_net(5, arch="resnet18", pcb="off", gm_pool="off").config
    assert sorted(settings.unused_arch_flags(global_head, ["gem_p", "num_strips", "bpool", "share_net"])) == \
        ["bpool", "gem_p", "num_strips"]


def image_folder(folder, n, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return str(folder)


def tree_digest(folder):
    """{relative path: bytes} of every file under folder."""
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, names in os.walk(folder) for f in names}


@pytest.mark.slow
def test_folder_search_keeps_a_users_files_and_replaces_its_own_pictures_whole(checkpoint, tmp_path):
    q, g, u = image_folder(tmp_path / "q", 3), image_folder(tmp_path / "g", 4, seed=1), tmp_path / "u"
    (u / "search").mkdir(parents=True)
    (u / "search_topk.csv").write_text("my own table\n")
    Image.new("RGB", (4, 8)).save(u / "search" / "query_00001.png")  # a picture of the user's
    before = tree_digest(u)
    with pytest.raises(ValueError, match=r"--vis_dir: .*search holds 1 file\(s\) and no vis.json; refusing"):
        run("--resume", checkpoint, "--query_dir", q, "--gallery_dir", g, "--vis_dir", str(u))
    assert tree_digest(u) == before
    os.remove(u / "search" / "query_00001.png")
    run("--resume", checkpoint, "--query_dir", q, "--gallery_dir", g, "--vis_dir", str(u), "--visualize", "3")
    assert (u / "search_topk.csv").read_text() == "my own table\n"  # beside the search's folder, untouched
    assert len([f for f in os.listdir(u / "search") if f.endswith(".png")]) == 3
    one = image_folder(tmp_path / "q1", 1)
    run("--resume", checkpoint, "--query_dir", one, "--gallery_dir", g, "--vis_dir", str(u))
    listed = json.load(open(u / "search" / "vis.json"))
    assert sorted(os.listdir(u / "search")) == sorted(listed["files"] + ["vis.json"]) == \
        ["query_00000.png", "search_topk.csv", "vis.json"]  # none of the first search's pictures left
    assert listed["search"] and listed["query_dir"] == one


@pytest.mark.parametrize("flags,match", [
    (("--data_path", "/nonexistent"), "^--data_path: not used by a folder search"),
    (("--trial", "1", "--cross_split"), "^--trial, --cross_split: not used by a folder search"),
    (("--log_path", "L"), "^--log_path: not used by a folder search"),  # with --vis_dir: nothing goes there
    (("--vis_order", "hardest"), "^--vis_order hardest: a folder search has no labels"),
])
def test_folder_search_refuses_the_flags_it_does_not_read(checkpoint, tmp_path, flags, match, monkeypatch):
    q = image_folder(tmp_path / "q", 2)
    monkeypatch.setattr(data_manager, "images_under", lambda *a: pytest.fail("images read before the refusal"))
    with pytest.raises(ValueError, match=match):
        run("--resume", checkpoint, "--query_dir", q, "--gallery_dir", q, "--vis_dir", str(tmp_path / "u"), *flags)
    assert sorted(os.listdir(tmp_path)) == ["q"]


def test_folder_search_writes_its_json(checkpoint, tmp_path):
    q, g = image_folder(tmp_path / "q", 2), image_folder(tmp_path / "g", 5, seed=1)
    out = tmp_path / "search.json"
    csv_path = run("--resume", checkpoint, "--query_dir", q, "--gallery_dir", g, "--vis_dir", str(tmp_path / "u"),
                   "--json", str(out), "--top_k", "3", "--vis_order", "random", "--visualize", "0")
    assert sorted(os.listdir(tmp_path / "u" / "search")) == ["search_topk.csv", "vis.json"]  # 0 pictures, as asked
    saved = json.load(open(out))
    rows = [line.split(",") for line in open(csv_path).read().splitlines()[1:]]
    assert [(r["query"], x["rank"], x["gallery"], x["distance"]) for r in saved["queries"] for x in r["ranked"]] == \
        [(a, int(b), c, float(d)) for a, b, c, d in rows] and len(rows) == 2 * 3
    assert saved["args"]["query_dir"] == q and saved["query_modal"] == "thermal"
    (tmp_path / "results.csv").write_text("time,dataset,resume,setting\n")  # a results table is not replaced
    with pytest.raises(ValueError, match="--json .*results.csv: that file exists and is a results table"):
        run("--resume", checkpoint, "--query_dir", q, "--gallery_dir", g, "--vis_dir", str(tmp_path / "u"),
            "--json", str(tmp_path / "results.csv"))


def test_picture_flags_without_visualize_are_refused(regdb_root, checkpoint):
    with pytest.raises(ValueError, match=r"^--vis_dir, --top_k: these say how --visualize N draws"):
        run("--dataset", "regdb", "--data_path", regdb_root, "--resume", checkpoint, "--log_path", "",
            "--vis_dir", "v", "--top_k", "3")


@pytest.mark.parametrize("head,features,settings_shown", [
    (dict(pcb="on", num_strips=2, local_feat_dim=16), ["parts"], ["visible->thermal"]),
    (dict(head="dgtl", bpool="max", cpool="max"), ["coarse", "fine"],
     ["visible->thermal [dgtl coarse]", "visible->thermal [dgtl fine]"]),
])
def test_results_csv_keeps_its_columns_and_untagged_rows(tmp_path, head, features, settings_shown):
    # the network's columns come from the flag table (flags.Flag.column): the names and places they had
    import csv
    from types import SimpleNamespace
    assert test_mine.RESULT_FIELDS == ["time", "dataset", "resume", "setting", "trials", "share_net", "pcb",
                                       "re_rank"] + [f"{k}_{s}" for s in ("mean", "std") for k in
                                                     eval_metrics.METRICS] + ["flip_test", "half"]
    config = model_mine.embed_net(4, arch="resnet18", **head).config
    zeros = dict.fromkeys(eval_metrics.METRICS, 0.0)
    entry = {"trials": [{"trial": 1}], "mean": zeros, "std": zeros}
    result = {**entry, "model": config, "features": features, **{f: entry for f in features[1:]}}
    args = SimpleNamespace(dataset="regdb", resume="x.pth", re_rank=False, flip_test="off", half=False)
    test_mine.append_results_csv(str(tmp_path), args, {"visible->thermal": result})
    rows = list(csv.DictReader(open(tmp_path / "results.csv", newline="")))
    assert [r["setting"] for r in rows] == settings_shown
    assert {(r["share_net"], r["pcb"]) for r in rows} == {("2", config["pcb"])}
