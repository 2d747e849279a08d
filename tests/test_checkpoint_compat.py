"""Checkpoints written by this project before the named-outputs refactor load unchanged: every head's
state-dict keys, shapes and architecture record equal the ones recorded then (fixtures/state_dict_keys.txt)."""
import ast
import collections
import hashlib
import os

import pytest

import model_mine
import settings

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "state_dict_keys.txt")
BACKBONE = ("visible_module.", "thermal_module.", "base_resnet.")


def recorded():
    """{configuration: {'config': dict, 'backbone': (sha1, count), key: shape}} from the fixture."""
    out = collections.OrderedDict()
    with open(FIXTURE) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            name, key, value = line.rstrip("\n").split(" ", 2)
            entry = out.setdefault(name, {})
            if key == "config":
                entry[key] = dict(ast.literal_eval(value))
            elif key == "backbone":
                sha, count = value.split()
                entry[key] = (sha, int(count))
            else:
                entry[key] = value
    return out


def shape(t):
    return "x".join(map(str, t.shape)) or "scalar"


@pytest.mark.parametrize("name", list(recorded()))
def test_every_head_keeps_its_state_dict_and_architecture_record(name):
    want = recorded()[name]
    # what model_from_checkpoint does with a file's config (the strips head was called 'pcb' then)
    config = settings.network_config(want["config"])
    assert config == {**want["config"], **({"head": "strips"} if want["config"]["head"] == "pcb" else {})}
    model = model_mine.embed_net(**config)
    assert model.config == config
    sd = model.state_dict()
    backbone = [f"{k} {shape(v)}" for k, v in sd.items() if k.startswith(BACKBONE)]
    assert (hashlib.sha1("\n".join(backbone).encode()).hexdigest(), len(backbone)) == want["backbone"]
    head = {k: shape(v) for k, v in sd.items() if not k.startswith(BACKBONE)}
    assert head == {k: v for k, v in want.items() if k not in ("config", "backbone")}
