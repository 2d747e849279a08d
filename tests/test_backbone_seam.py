"""The backbone's seam: a block of a method's own goes in at a named place between two stages, without
an edit to model_mine.py, and runs there."""
import pytest
import torch
import torch.nn as nn

import model_mine


def identity_conv(channels):
    conv = nn.Conv2d(channels, channels, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels)[:, :, None, None])
        conv.bias.zero_()
    return conv


def test_a_block_inserted_after_layer2_is_saved_and_runs_there():
    torch.manual_seed(0)
    net = model_mine.embed_net(5, arch="resnet18", share_net=1, pcb="off").eval()
    x = torch.randn(2, 3, 64, 32)
    before = net(x, x, "visible")["bn"]
    assert "layer2" in net.places and "layer2.1" in net.places
    assert net.channels("layer2") == (64, 128)  # ResNet-18: layer2 takes 64 channels, gives 128
    net.extra = identity_conv(net.channels("layer2")[1])
    net.insert("layer2", net.extra)
    assert "extra.weight" in net.state_dict()
    order = []
    net.base_resnet.base.layer2.register_forward_hook(lambda *a: order.append("layer2"))
    net.base_resnet.base.layer3.register_forward_hook(lambda *a: order.append("layer3"))
    net.extra.register_forward_hook(lambda m, i, o: order.append(("extra", i[0].shape[1])))
    assert torch.allclose(net(x, x, "visible")["bn"], before, atol=1e-5)  # the identity changes nothing
    assert order == ["layer2", ("extra", 128), "layer3"]
    with torch.no_grad():
        net.extra.weight.mul_(2)
    assert not torch.allclose(net(x, x, "visible")["bn"], before, atol=1e-3)  # and it is on the path


def test_places_are_the_shared_stages_and_a_block_must_be_registered():
    net = model_mine.embed_net(5, arch="resnet18", share_net=3, pcb="off")
    assert net.places == ("layer3", "layer3.0", "layer3.1", "layer4", "layer4.0", "layer4.1")
    net.extra = identity_conv(128)
    with pytest.raises(ValueError, match="no place 'layer2'.*share_net 3.*layer3, layer3.0"):
        net.insert("layer2", net.extra)
    with pytest.raises(ValueError, match="not registered on the network"):
        net.insert("layer3", identity_conv(256))


def test_channels_are_the_input_and_output_widths_at_a_place():
    net = model_mine.TwoStreamResNet("resnet50", share_net=1)
    assert net.channels("layer1") == (64, 256) and net.channels("layer2") == (256, 512)
    assert net.channels("layer2.0") == (256, 512) and net.channels("layer2.3") == (512, 512)
    assert net.channels("layer4") == (1024, 2048) == (net.channels("layer3")[1], net.out_channels)
    with pytest.raises(ValueError, match=r"channels: 'layer1' is not a stage or residual block of the shared "
                                         r"stages; their places: layer3, layer3\.0, layer3\.1, layer4"):
        model_mine.TwoStreamResNet("resnet18", share_net=3).channels("layer1")
