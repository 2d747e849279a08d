"""The newcomer's path, shortened: generate the demo set, train, checkpoint, re-evaluate with the
exact command the training run prints."""
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow  # the scripts run as subprocesses
METRICS = re.compile(r"Rank-1: ([\d.]+)% \| Rank-5: [\d.]+% \| Rank-10: [\d.]+% \| Rank-20: [\d.]+% \| "
                     r"mAP: ([\d.]+)% \| mINP: ([\d.]+)%")


def run(cmd, cwd):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_demo_train_then_printed_test_command(tmp_path):
    data = tmp_path / "demo"
    log = run([sys.executable, os.path.join(ROOT, "train_mine.py"), "--dataset", "demo", "--data_path", str(data),
               "--epochs", "1", "--steps_per_epoch", "2", "--img_h", "32", "--img_w", "16", "--num_strips", "2",
               "--gpu", "cpu", "--amp", "off", "--model_path", str(tmp_path / "models"), "--log_path", str(tmp_path / "log")],
              cwd=tmp_path)
    assert (data / "demo.json").exists() and (data / "idx" / "test_thermal_1.txt").exists()
    assert "--dataset demo" in log.splitlines()[0]  # the settings come first
    trained = METRICS.search(log.split("best: ")[-1]).groups()
    command = log.split("re-evaluate with: ")[1].splitlines()[0]
    args = shlex.split(command)
    assert args[:2] == ["python", "test_mine.py"] and os.path.exists(args[args.index("--resume") + 1])
    tested = run([sys.executable, os.path.join(ROOT, "test_mine.py")] + args[2:] + ["--log_path", str(tmp_path / "log")],
                 cwd=tmp_path)
    assert METRICS.search(tested).groups() == trained
