"""The project deletes or replaces only what it can prove is its own, and bad data input fails on
one line naming the file: demo folders (demo_data.py), list and id files (data_manager.py), empty
cameras, pre-processing flags and the temporaries of killed runs."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

import data_loader
import data_manager
import demo_data
import fileio
import pre_process_llcm
import pre_process_sysu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(num_ids=4, imgs_per_id=2, img_w=16, img_h=32, num_splits=1)
DEAD_PID = 2 ** 22 + 12345  # above Linux's largest pid_max


def hashes(path):
    """{relative path: sha256} of every file under path (links not followed), or of path itself."""
    def digest(p):
        return "link:" + os.readlink(p) if os.path.islink(p) else hashlib.sha256(open(p, "rb").read()).hexdigest()
    if not os.path.isdir(path) or os.path.islink(path):
        return {".": digest(path)}
    out = {}
    for d, dirs, files in os.walk(path):  # links to folders are listed in dirs, not walked
        for f in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
            out[os.path.relpath(os.path.join(d, f), path)] = digest(os.path.join(d, f))
    return out


def refused(root, match, **kw):
    """make_regdb_demo(root) refuses with a one-line FileExistsError; returns its message."""
    with pytest.raises(FileExistsError, match=match) as e:
        demo_data.make_regdb_demo(str(root), **{**TINY, **kw})
    assert "\n" not in str(e.value) and str(root) in str(e.value)
    return str(e.value)


def siblings(root):
    return sorted(os.listdir(os.path.dirname(str(root))))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_data.make_regdb_demo(str(tmp_path_factory.mktemp("demo") / "dd"), **TINY)


def copy_of(src, dst):
    shutil.copytree(src, dst, symlinks=True)
    return str(dst)


# ----------------------------------------------------------------------------- demo folders

@pytest.mark.parametrize("force", [False, True])
def test_a_file_at_root_is_refused_and_kept(tmp_path, force):
    f = tmp_path / "RegDB.zip"
    f.write_text("data\n")
    assert demo_data.read_meta(str(f)) is None  # a file is never a demo
    refused(f, "is a file, not a demo folder", force=force)
    assert f.read_text() == "data\n" and siblings(f) == ["RegDB.zip"]


def test_ensure_demo_refuses_a_file_at_data_path(tmp_path):
    import test_mine
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    args = test_mine.get_args_parser().parse_args(["--dataset", "demo", "--data_path", str(f)])
    with pytest.raises(FileExistsError, match="is a file"):
        demo_data.ensure_demo(args, log=lambda *a: None)
    assert f.read_text() == "mine" and siblings(f) == ["notes.txt"]


def test_a_folder_without_demo_json_is_refused_and_kept(tmp_path):
    root = tmp_path / "real"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "keep.bin").write_bytes(b"\x00precious")
    before = hashes(str(root))
    refused(root, r"holds 1 file\(s\) and no demo.json; refusing", force=True)
    (root / "demo.json").write_text("{not json")
    refused(root, "an unreadable demo.json")
    (root / "demo.json").write_text("[1, 2]")  # JSON, but not a manifest
    refused(root, "an unreadable demo.json")
    os.remove(root / "demo.json")
    assert hashes(str(root)) == before and siblings(root) == ["real"]


def test_a_symbolic_link_is_never_replaced(demo, tmp_path):
    target = copy_of(demo, tmp_path / "target")
    link = tmp_path / "link"
    os.symlink(target, link)
    before = hashes(target)
    assert demo_data.make_regdb_demo(str(link), **TINY) == str(link)  # up to date: read, fine
    refused(link, "is a symbolic link", num_ids=6)
    refused(link, "is a symbolic link", force=True)
    assert hashes(target) == before and os.path.islink(link) and siblings(link) == ["link", "target"]


def test_a_file_added_to_a_demo_is_never_deleted(demo, tmp_path):
    root = copy_of(demo, tmp_path / "dd")
    os.makedirs(os.path.join(root, "save_model"))
    with open(os.path.join(root, "save_model", "my_best.pth"), "wb") as f:
        f.write(b"weights")
    before = hashes(root)
    message = refused(root, r"holds 1 file\(s\) the demo generator did not write, e\.g\. save_model/my_best\.pth",
                      num_ids=6)
    assert "move them out first" in message
    refused(root, "save_model/my_best.pth", force=True)
    assert demo_data.make_regdb_demo(root, **TINY) == root  # up to date: returned, nothing deleted
    assert hashes(root) == before and siblings(root) == ["dd"]


def test_an_old_demo_without_a_file_list_is_kept(demo, tmp_path):
    root = copy_of(demo, tmp_path / "dd")
    meta = demo_data.read_meta(root)
    with open(os.path.join(root, "demo.json"), "w") as f:
        json.dump({"params": meta["params"]}, f)  # what older versions wrote
    before = hashes(root)
    assert demo_data.make_regdb_demo(root, **TINY) == root  # same params: used as it is
    refused(root, "has no file list .* delete the folder by hand", num_ids=6)
    assert hashes(root) == before


def test_a_demo_is_replaced_only_with_its_own_files_and_nothing_is_left(demo, tmp_path):
    root = copy_of(demo, tmp_path / "dd")
    os.makedirs(os.path.join(root, "empty", "deeper"))  # empty folders do not count
    os.remove(os.path.join(root, "Visible", "0001", "v_0001_01.png"))  # a missing listed file is fine
    demo_data.make_regdb_demo(root, **{**TINY, "num_ids": 6})
    meta = demo_data.read_meta(root)
    assert meta["params"]["num_ids"] == 6 and "demo.json" not in meta["files"]
    assert sorted(meta["files"]) == sorted(set(hashes(root)) - {"demo.json"})
    assert siblings(root) == ["dd"]  # no temporary or moved-aside folder left


def test_a_manifest_naming_paths_outside_deletes_nothing_there(demo, tmp_path):
    root = copy_of(demo, tmp_path / "dd")
    outside = tmp_path / "outside.txt"
    outside.write_text("mine")
    meta = demo_data.read_meta(root)
    meta["files"] += ["../outside.txt", "/etc/hostname"]
    with open(os.path.join(root, "demo.json"), "w") as f:
        json.dump(meta, f)
    demo_data.make_regdb_demo(root, **{**TINY, "num_ids": 6})
    assert outside.read_text() == "mine" and siblings(root) == ["dd", "outside.txt"]


def test_empty_folders_are_filled(tmp_path):
    for name in ("empty", "nested"):
        root = tmp_path / name
        root.mkdir()
        if name == "nested":
            (root / "a" / "b").mkdir(parents=True)
        demo_data.make_regdb_demo(str(root), **TINY)
        assert demo_data.read_meta(str(root))["params"]["num_ids"] == 4
    assert sorted(os.listdir(tmp_path)) == ["empty", "nested"]


def test_a_file_added_while_generating_stops_the_replacement(demo, tmp_path, monkeypatch):
    root = copy_of(demo, tmp_path / "dd")
    real = demo_data._run_jobs
    seen = []

    def run_jobs(jobs, workers):  # the user saves a file into the old demo meanwhile
        seen.extend(n for n in os.listdir(tmp_path) if n.startswith(".dd.tmp-"))
        with open(os.path.join(root, "new_notes.txt"), "w") as f:
            f.write("mine")
        return real(jobs, workers)

    monkeypatch.setattr(demo_data, "_run_jobs", run_jobs)
    before = hashes(demo)
    refused(root, "new_notes.txt", num_ids=6)
    assert [re.fullmatch(rf"\.dd\.tmp-{re.escape(fileio.temp_tag())}-[a-z0-9_]{{8}}", n) is not None
            for n in seen] == [True]
    after = hashes(root)
    assert after.pop("new_notes.txt") and after == before and siblings(root) == ["dd"]


def test_stale_temp_folders_of_dead_processes_only_are_removed(tmp_path):
    try:
        os.kill(DEAD_PID, 0)
        pytest.skip(f"pid {DEAD_PID} exists here")
    except ProcessLookupError:
        pass
    except OverflowError:
        pytest.skip("pid out of range")
    tag = fileio.temp_tag(DEAD_PID)  # this host's
    dead, live = f".dd.tmp-{tag}-abc_1234", f".dd.tmp-{fileio.temp_tag()}-zzzz9999"
    kept_dirs = [live, f".other.tmp-{tag}-abcd1234", f".dd.tmp-{tag}-abc", ".dd.tmp-abcd1234",
                 ".dd.old-abcd1234", f".dd.tmp-{tag}-abcd12345", f"dd.tmp-{tag}-abcd1234",
                 f".dd.tmp-otherhost-{DEAD_PID}-abcd1234"]  # another machine's pid says nothing here
    for name in [dead] + kept_dirs:
        os.makedirs(tmp_path / name / "Visible")
        (tmp_path / name / "Visible" / "x.png").write_bytes(b"partial")
    (tmp_path / f".dd.tmp-{tag}-file1234").write_text("a file, not a build folder")
    os.symlink(tmp_path / live, tmp_path / f".dd.tmp-{tag}-link1234")  # a link: never followed
    before = {n: hashes(str(tmp_path / n)) for n in os.listdir(tmp_path)}
    demo_data.make_regdb_demo(str(tmp_path / "dd"), **TINY)
    del before[dead]
    assert {n: hashes(str(tmp_path / n)) for n in os.listdir(tmp_path) if n != "dd"} == before


# ----------------------------------------------------------------------------- command line

@pytest.mark.parametrize("case", ["file", "folder", "num_ids", "workers", "size"])
def test_demo_cli_errors_are_one_line(tmp_path, case, run_script):
    target = tmp_path / "target"
    if case == "file":
        target.write_text("notes\n")
    elif case == "folder":
        target.mkdir()
        (target / "keep.txt").write_text("mine")
    extra = {"num_ids": ["--num_ids", "1"], "workers": ["--workers", "-3"],
             "size": ["--img_w", "2"]}.get(case, [])
    before = hashes(str(target)) if target.exists() else None
    code, out, err = run_script(os.path.join(REPO, "demo_data.py"), "--root", target, "--num_ids", "4",
                                "--imgs_per_id", "2", "--num_splits", "1", *extra, cwd=tmp_path)
    want = {"file": "is a file", "folder": "and no demo.json", "num_ids": "num_ids must be >= 2, got 1",
            "workers": "--workers must be >= 0", "size": "must be at least 4 and 8, got 2x128"}[case]
    assert code != 0 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and want in err
    assert (hashes(str(target)) if target.exists() else None) == before
    assert sorted(os.listdir(tmp_path)) == (["target"] if before else [])


@pytest.mark.parametrize("script", [pre_process_sysu, pre_process_llcm])
def test_pre_process_refuses_negative_workers(script, tmp_path):
    args = script.get_args_parser().parse_args(["--data_path", str(tmp_path), "--workers", "-3"])
    with pytest.raises(ValueError, match=r"^--workers must be >= 0 \(0: one per CPU core\), got -3$"):
        script.main(args)
    assert script.get_args_parser().parse_args(["--data_path", "x"]).workers == 0
    assert "0: one per CPU core" in script.get_args_parser().format_help()


# ----------------------------------------------------------------------------- list and id files

def write(path, text, bom=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return str(path)


def test_a_byte_order_mark_is_read_past(tmp_path):
    root = str(tmp_path)
    write(tmp_path / "idx" / "train_visible_1.txt", "Visible/0001/a.png 0\nVisible/0002/b.png 1\n", bom=True)
    files, labels = data_manager.read_regdb_list(root, 1, "visible", "train")
    assert files == [os.path.join(root, "Visible/0001/a.png"), os.path.join(root, "Visible/0002/b.png")]
    assert labels.tolist() == [0, 1]
    write(tmp_path / "idx" / "train_vis.txt", "vis/0001/a.jpg 0\r\n", bom=True)  # Windows line ends too
    write(tmp_path / "idx" / "train_nir.txt", "nir/0001/a.jpg 0\n", bom=True)
    lists = data_manager.llcm_train_files(root)
    assert lists["visible"][0] == [os.path.join(root, "vis/0001/a.jpg")]
    for split in ("train", "val", "test"):
        write(tmp_path / "exp" / f"{split}_id.txt", "3,1,2\n", bom=True)
    assert data_manager.read_sysu_ids(root, "test") == ["0001", "0002", "0003"]
    write(tmp_path / "idx" / "test_id.txt", "0006,0003", bom=True)
    assert data_manager.read_id_line(str(tmp_path / "idx" / "test_id.txt"), "LLCM", "") == ["0003", "0006"]


@pytest.mark.parametrize("name, part", [("train_thermal_1.txt", "train"), ("test_thermal_1.txt", "test")])
def test_a_negative_label_names_the_file_and_line(tmp_path, name, part):
    path = write(tmp_path / "idx" / name, "Thermal/0001/a.png 3\n\nThermal/0001/b.png -1\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(path)}:3: label -1 is negative: expected labels >= 0$"):
        data_manager.read_regdb_list(str(tmp_path), 1, "thermal", part)


def test_a_negative_llcm_label_names_the_file_and_line(tmp_path):
    write(tmp_path / "idx" / "train_vis.txt", "vis/0001/a.jpg 0\n")
    path = write(tmp_path / "idx" / "train_nir.txt", "nir/0001/a.jpg 0\nnir/0002/a.jpg -4\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(path)}:2: label -4 is negative"):
        data_manager.llcm_train_files(str(tmp_path))


@pytest.mark.parametrize("text", ["", "\n\n  \n", "\ufeff"])
@pytest.mark.parametrize("part, role", [("test", "test"), ("train", "training")])
def test_a_list_of_no_images_names_the_file(tmp_path, text, part, role):
    path = write(tmp_path / "idx" / f"{part}_thermal_1.txt", text)
    with pytest.raises(ValueError, match=rf"^{re.escape(path)}: no {role} images listed: expected lines") as e:
        data_manager.read_regdb_list(str(tmp_path), 1, "thermal", part)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("label", ["²", "--1", "+1", "1.0", "0x1"])
def test_odd_labels_are_format_errors(tmp_path, label):
    path = write(tmp_path / "idx" / "test_visible_1.txt", f"Visible/0001/a.png {label}\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(path)}:1: expected '<image path> <integer label>'"):
        data_manager.process_test_regdb(str(tmp_path), 1, "visible")


def test_a_list_that_is_not_utf8_names_the_file(tmp_path):
    path = str(tmp_path / "idx" / "test_visible_1.txt")
    os.makedirs(os.path.dirname(path))
    open(path, "wb").write(b"Visible/0001/\xe9t\xe9.png 1\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(path)}: not UTF-8 text \(byte 13\)"):
        data_manager.process_test_regdb(str(tmp_path), 1, "visible")


# ----------------------------------------------------------------------------- empty cameras

@pytest.fixture(scope="module")
def sysu(tmp_path_factory):
    return demo_data.make_sysu_demo(str(tmp_path_factory.mktemp("sysu") / "SYSU"), num_ids=8, n_val=1, n_test=3,
                                    img_w=16, img_h=32)


def emptied(src, dst, cam):
    root = copy_of(src, dst)
    for pid in os.listdir(os.path.join(root, cam)):
        shutil.rmtree(os.path.join(root, cam, pid))
    return root


def data_warnings(fn, *args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        out = fn(*args)
    return out, [str(w.message) for w in caught if issubclass(w.category, data_manager.DataWarning)], caught


def test_an_emptied_query_camera_is_a_warning_with_counts(sysu, tmp_path):
    assert data_warnings(data_manager.process_query_sysu, sysu)[1] == []  # a complete set: silent
    root = emptied(sysu, tmp_path / "SYSU", "cam3")
    (paths, _, camids), messages, caught = data_warnings(data_manager.process_query_sysu, root)
    n = len(paths)
    assert n > 0 and set(camids.tolist()) == {6}
    assert messages == [f"SYSU-MM01 cam3 holds no images of the 3 test identities (cam6: {n} images); "
                        f"the query set has {n} images"]
    w = caught[0]
    assert warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line).count("\n") == 1


def test_an_emptied_gallery_camera_warns_once_per_run(sysu, tmp_path):
    root = emptied(sysu, tmp_path / "SYSU", "cam2")

    def galleries():
        return [data_manager.process_gallery_sysu(root, "indoor", t) for t in (0, 1, 2)]

    lists, messages, _ = data_warnings(galleries)
    n = len(lists[0][0])
    assert messages == [f"SYSU-MM01 cam2 holds no images of the 3 test identities (cam1: {n} images); "
                        f"the gallery set has {n} images"]


@pytest.mark.slow
def test_the_warning_prints_as_one_line(sysu, tmp_path):
    root = emptied(sysu, tmp_path / "SYSU", "cam6")
    code = "import data_manager, sys; data_manager.process_query_sysu(sys.argv[1])"
    res = subprocess.run([sys.executable, "-c", code, root], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0 and res.stdout == ""
    assert re.fullmatch(rf"{re.escape(root)}:0: DataWarning: SYSU-MM01 cam6 holds no images of the 3 test "
                        r"identities \(cam3: (\d+) images\); the query set has \1 images\n", res.stderr)
    res = subprocess.run([sys.executable, "-c", "import data_manager, demo_data"],
                         capture_output=True, text=True, cwd=REPO)
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")  # importing prints nothing


def test_pre_processing_warns_of_an_emptied_camera(sysu, tmp_path, capsys):
    root = emptied(sysu, tmp_path / "SYSU", "cam3")
    files = data_manager.sysu_train_files(root)
    pre_process_sysu.main(pre_process_sysu.get_args_parser().parse_args(
        ["--data_path", root, "--img_w", "16", "--img_h", "32", "--workers", "1"]))
    n = len(files["thermal"])
    warning = (f"warning: SYSU-MM01 cam3 holds no images of the 5 training identities (cam6: {n} images); "
               f"the thermal training set has {n} images\n")
    assert capsys.readouterr().out.startswith(warning)
    assert data_manager.sysu_train_warnings(sysu, data_manager.sysu_train_files(sysu)) == []


# ----------------------------------------------------------------------------- pre-processing temps

LEFTOVERS = ["train_rgb_resized_img.npy.tmp-123", "train_ir_resized_label.npy.tmp-7",
             f"{data_loader.COMMIT_JOURNAL}.tmp-99"]
OTHERS = ["notes.tmp-12", "train_rgb_resized_img.npy.bak", "train_rgb_resized_img.npy.tmp-x",
          "train_rgb_resized_img.npy.tmp-²", "train_rgb_resized_img.npy"]


def plant(root):
    for name in LEFTOVERS + OTHERS:
        (root / name).write_text("partial")
    (root / "train_ir_resized_img.npy.tmp-5").mkdir()  # a folder of that name is not ours
    return sorted(OTHERS + ["train_ir_resized_img.npy.tmp-5"])


def test_training_removes_what_a_killed_pre_processing_left(tmp_path):
    kept = plant(tmp_path)
    with pytest.raises(FileNotFoundError, match="run `python pre_process_sysu.py"):
        data_loader.sysu_train_data(str(tmp_path), 16, 32)
    assert sorted(os.listdir(tmp_path)) == kept


def test_training_leaves_the_temps_of_a_run_holding_the_lock(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    kept = plant(tmp_path)
    fd = os.open(str(tmp_path), os.O_RDONLY)  # a pre-processing run writing now
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert data_loader.remove_killed_run_temps(str(tmp_path)) == []
        with pytest.raises(FileNotFoundError):
            data_loader.llcm_train_data(str(tmp_path), 16, 32)
        assert sorted(os.listdir(tmp_path)) == sorted(kept + LEFTOVERS)
    finally:
        os.close(fd)
    assert data_loader.remove_killed_run_temps(str(tmp_path)) == sorted(LEFTOVERS)
    os.close(data_loader._lock_root(str(tmp_path)))  # the cleanup let go of its lock


def stored_set(root, n=3):
    """The four SYSU_NPY files of a tiny valid training set (32x16 images, n per modality)."""
    for mod in ("rgb", "ir"):
        np.save(root / f"train_{mod}_resized_img.npy", np.zeros((n, 32, 16, 3), np.uint8))
        np.save(root / f"train_{mod}_resized_label.npy", np.arange(n, dtype=np.int64))


def truncate(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[:keep(len(data))])


@pytest.mark.parametrize("loader, script", [(data_loader.sysu_train_data, "pre_process_sysu.py"),
                                            (data_loader.llcm_train_data, "pre_process_llcm.py")])
@pytest.mark.parametrize("name, damage, match", [
    ("train_rgb_resized_img.npy", lambda p: truncate(p, lambda n: n - 100), r"cannot read it \(.*\); is it truncated"),
    ("train_ir_resized_img.npy", lambda p: truncate(p, lambda n: 50), r"cannot read it \(.*\); is it truncated"),
    ("train_ir_resized_label.npy", lambda p: truncate(p, lambda n: n - 8), r"cannot read it \(.*\); is it truncated"),
    ("train_rgb_resized_label.npy", lambda p: p.write_bytes(b""), r"cannot read it \(.*\); is it truncated"),
    ("train_rgb_resized_label.npy", lambda p: np.save(p, np.arange(2)),
     r"holds int64 \(2,\), expected 3 integer labels \(one per image of train_rgb_resized_img\.npy\)"),
    ("train_ir_resized_img.npy", lambda p: np.save(p, np.zeros((3, 32, 16))),
     r"holds float64 \(3, 32, 16\), expected uint8 images"),
])
def test_a_damaged_stored_set_names_the_file_and_the_fix(tmp_path, loader, script, name, damage, match):
    stored_set(tmp_path)
    loader(str(tmp_path), 16, 32)  # the intact set loads
    damage(tmp_path / name)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / name))}: {match}.*run `python "
                                         rf"{re.escape(script)} --data_path {re.escape(str(tmp_path))}` again$") as e:
        loader(str(tmp_path), 16, 32)
    assert "\n" not in str(e.value)
