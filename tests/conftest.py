"""Fixtures shared by several test files, built once per session.

They are read-only: a test that writes into a data folder works on its own copy (`shutil.copytree`)."""
import os

import pytest
import torch

import demo_data
import model_mine
import pre_process_llcm
import utils


@pytest.fixture(scope="session")
def tiny_regdb(tmp_path_factory):
    """A RegDB-layout demo set of 8 identities x 4 images per modality at 32x16, with two splits: what
    the short training runs of the test files train and evaluate on."""
    root = tmp_path_factory.mktemp("tiny") / "regdb"
    return str(demo_data.make_regdb_demo(str(root), num_ids=8, imgs_per_id=4, img_w=16, img_h=32, num_splits=2))


# test_test_mine.py and test_vis_protocol.py: test_mine.py's inputs

@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """One of our checkpoints of an untrained small model, resnet18 (what matters here is the plumbing)."""
    torch.manual_seed(0)
    model = model_mine.embed_net(5, arch="resnet18", share_net=2, pcb="on", local_feat_dim=16, num_strips=2, gem_p=3.0)
    path = str(tmp_path_factory.mktemp("ckpt") / "model_trial1.pth")
    utils.atomic_save({"model": model.state_dict(), "arch": model.config, "args": {"img_w": 16, "img_h": 32}}, path)
    return path


@pytest.fixture(scope="session")
def sysu_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sysu") / "SYSU"
    return str(demo_data.make_sysu_demo(str(root), num_ids=14, n_val=2, n_test=5, img_w=24, img_h=48))


@pytest.fixture(scope="session")
def regdb_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("regdb") / "RegDB"
    return str(demo_data.make_regdb_demo(str(root), num_ids=10, imgs_per_id=3, img_w=16, img_h=32, num_splits=2))


@pytest.fixture(scope="session")
def llcm_root(tmp_path_factory):
    root = str(demo_data.make_llcm_demo(str(tmp_path_factory.mktemp("llcm") / "LLCM"), img_w=16, img_h=32))
    pre_process_llcm.main(pre_process_llcm.get_args_parser().parse_args(
        ["--data_path", root, "--img_w", "16", "--img_h", "32", "--workers", "1"]))
    return root


@pytest.fixture
def fail_replace(monkeypatch):
    """fail_replace(path): os.replace onto path fails as a full disk does (ENOSPC); others go through."""
    def install(path):
        real_replace = os.replace

        def replace(src, dst):
            if os.fspath(dst) == os.fspath(path):
                raise OSError(28, "No space left on device")
            return real_replace(src, dst)
        monkeypatch.setattr(os, "replace", replace)
    return install
