"""Fixtures shared by several test files, built once per session.

They are read-only: a test that writes into a data folder works on its own copy (`shutil.copytree`)."""
import logging
import os
import random
import runpy
import signal
import sys
import traceback
import warnings

import numpy as np
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


@pytest.fixture
def run_script(monkeypatch, capfd):
    """run_script(script, *argv, cwd=...) -> (exit status, stdout, stderr): `python script argv` run in
    this process, through the script's `if __name__ == "__main__":` block (a fresh `__main__` each call),
    the exit status and the message of a SystemExit as the interpreter gives them, and an uncaught
    exception as its traceback on stderr and status 1. What a run may change in the process (argv, the
    working folder, the environment, warnings filters, logging handlers, signal handlers, the random
    generators) is put back afterwards, so that no case sees another's state."""
    def loggers():
        return [logging.getLogger()] + [v for v in logging.Logger.manager.loggerDict.values()
                                        if isinstance(v, logging.Logger)]

    def run(script, *argv, cwd):
        capfd.readouterr()
        with monkeypatch.context() as patch:
            patch.setattr(sys, "argv", [script, *map(str, argv)])
            patch.chdir(cwd)
            code = run_main(script)
        if code is not None and not isinstance(code, int):  # SystemExit("message"): printed, status 1
            print(code, file=sys.stderr)
            code = 1
        out, err = capfd.readouterr()
        return code or 0, out, err

    def run_main(script):
        environ = dict(os.environ)
        sigs = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        logs = {log: (list(log.handlers), log.level, log.propagate) for log in loggers()}
        rngs = random.getstate(), np.random.get_state(), torch.get_rng_state()
        code = 0
        try:
            with warnings.catch_warnings():
                runpy.run_path(script, run_name="__main__")
        except SystemExit as e:
            code = e.code
        except BaseException:  # the interpreter prints the traceback and exits with 1
            traceback.print_exc()
            code = 1
        finally:
            os.environ.clear()
            os.environ.update(environ)
            for s, handler in sigs.items():
                signal.signal(s, handler)
            for log in loggers():
                handlers, level, propagate = logs.get(log, ([], logging.NOTSET, True))
                for h in set(log.handlers) - set(handlers):
                    log.removeHandler(h)
                    h.close()
                log.handlers[:], log.level, log.propagate = handlers, level, propagate
            random.setstate(rngs[0])
            np.random.set_state(rngs[1])
            torch.set_rng_state(rngs[2])
        return code
    return run
