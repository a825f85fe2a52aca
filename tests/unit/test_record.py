from __future__ import annotations

import pytest
import torch
from torch import nn

from discover_ray.record import record_activations, recording, resolve_layers, summarise, unit_names


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.tokens = nn.Linear(4, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        x = self.act(self.conv(x))  # (B, 4, H, W)
        seq = self.tokens(x.flatten(2).transpose(1, 2))  # (B, H*W, 6): a token sequence
        return self.head(seq.mean(dim=1))


def all_hooks(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_records_every_layer_in_one_pass_with_the_right_summaries():
    torch.manual_seed(0)
    model = Tiny()
    x = torch.randn(5, 3, 8, 8)
    acts = record_activations(model, ["act", "tokens", "head"], x.split(2))
    conv_out = model.act(model.conv(x))
    assert acts["act"].shape == (5, 4)
    torch.testing.assert_close(acts["act"], conv_out.mean(dim=(2, 3)))
    tokens = model.tokens(conv_out.flatten(2).transpose(1, 2))
    torch.testing.assert_close(acts["tokens"], tokens[:, 0])  # CLS by default
    torch.testing.assert_close(acts["head"], model(x))
    assert all_hooks(model) == 0


def test_summary_modes():
    maps = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    assert torch.equal(summarise(maps, conv_pool="max"), maps.amax(dim=(2, 3)))
    seq = torch.randn(2, 5, 4)
    assert torch.equal(summarise(seq, token_pool="mean"), seq.mean(dim=1))
    assert torch.equal(summarise(seq, token_pool="max"), seq.amax(dim=1))
    with pytest.raises(ValueError, match="cannot summarise"):
        summarise(torch.zeros(2, 2, 2, 2, 2))


def test_hooks_are_removed_after_an_error():
    model = Tiny()
    with pytest.raises(RuntimeError):
        with recording(model, ["act", "head"]):
            assert all_hooks(model) == 2
            model(torch.randn(1, 5, 8, 8))  # wrong channel count
    assert all_hooks(model) == 0


def test_unknown_layer_lists_the_closest_names():
    with pytest.raises(KeyError, match=r"no layer 'hed'; closest: \['head'"):
        resolve_layers(Tiny(), ["hed"])
    model = Tiny()
    with pytest.raises(KeyError):
        record_activations(model, ["act", "nope"], [torch.randn(1, 3, 8, 8)])
    assert all_hooks(model) == 0


def test_unit_names():
    assert unit_names(3) == ["u00000", "u00001", "u00002"]
    assert unit_names(4, block_size=2) == ["b0000_u00", "b0000_u01", "b0001_u00", "b0001_u01"]
    with pytest.raises(ValueError, match="blocks of 3"):
        unit_names(4, block_size=3)
