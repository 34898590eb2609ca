import gc
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rscrisis.errors import InputError
from rscrisis.ml.model import (
    BuildingSegmenter,
    ModelMeta,
    build_model,
    check_bands,
    load_model,
    prob_stats,
    read_meta,
    save_model,
)


def meta(bands=3):
    return ModelMeta(
        encoder="resnet18", in_channels=bands, mean=[0.0] * bands, std=[1.0] * bands, tile_size=64
    )


@pytest.mark.parametrize("bands", [1, 3, 4])
def test_forward_shapes_any_band_count(bands):
    net = BuildingSegmenter("resnet18", bands).eval()
    logits, iou, emb = net(torch.randn(2, bands, 64, 64))
    assert logits.shape == (2, 1, 64, 64)
    assert iou.shape == (2,) and ((iou >= 0) & (iou <= 1)).all()
    assert emb.shape == (2, net.embedding_dim)


def test_prob_stats_by_hand():
    prob = torch.tensor([0.9, 0.9, 0.2, 0.0]).reshape(1, 1, 2, 2)
    s = prob_stats(prob, None, 0.5)[0]
    assert s[0] == pytest.approx(0.5, abs=1e-4)
    # expected IoU: E[I] = 0.9 + 0.9, E[U] = 2 + 0.2 + 0
    assert s[2] == pytest.approx(1.8 / 2.2, abs=1e-4)
    assert s[3] == pytest.approx(0.5)
    valid = torch.tensor([True, True, False, False]).reshape(1, 1, 2, 2)
    # only the two 0.9 pixels count: E[I] = 1.8, E[U] = 2
    assert prob_stats(prob, valid, 0.5)[0, 2] == pytest.approx(0.9, abs=1e-4)


def test_save_load_bit_exact(tmp_path):
    m = meta()
    net = build_model(m)
    m.history = [{"epoch": 1, "val_iou": 0.5}]
    path = tmp_path / "m.safetensors"
    save_model(net, m, path)
    loaded, lmeta = load_model(path)
    for (k, a), (k2, b) in zip(net.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    assert lmeta.history == m.history and lmeta.encoder == "resnet18"
    assert read_meta(path).in_channels == 3


@pytest.mark.parametrize("encoder", ["resnet18", "mobilenet_v2", "efficientnet-b0"])
def test_a_loaded_model_holds_the_files_tensors_and_trains(tmp_path, encoder):
    # built on the meta device, then given the file's tensors: none left unset, none shared
    # with another model, every parameter trainable
    torch.manual_seed(0)
    m = ModelMeta(encoder=encoder, in_channels=3, mean=[0.0] * 3, std=[1.0] * 3, tile_size=64)
    net = build_model(m)
    save_model(net, m, tmp_path / "m.safetensors")
    loaded, _ = load_model(tmp_path / "m.safetensors")
    tensors = [*loaded.parameters(), *loaded.buffers()]
    assert not any(t.is_meta for t in tensors)
    assert all(p.requires_grad and isinstance(p, torch.nn.Parameter) for p in loaded.parameters())
    for (name, a), b in zip(net.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), name
    maps = Path("/proc/self/maps")
    if maps.exists():  # Linux: the model holds copies, not safetensors' mapping of the file
        gc.collect()
        assert "m.safetensors" not in maps.read_text()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net.eval()(x)[0], loaded.eval()(x)[0])
    loaded.train()
    head = loaded.unet.segmentation_head[0].weight
    before = head.detach().clone()
    loaded(x)[0].mean().backward()
    torch.optim.SGD(loaded.parameters(), lr=0.1).step()
    assert not torch.equal(before, head)


def test_bad_model_files(tmp_path):
    with pytest.raises(InputError, match="no such model file"):
        load_model(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"definitely not a model")
    with pytest.raises(InputError, match="is not a readable .safetensors model"):
        load_model(junk)
    good = tmp_path / "good.safetensors"
    save_model(build_model(meta()), meta(), good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError) as err:
        load_model(truncated)
    assert err.value.exit_code == 2
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(InputError, match="without rscrisis metadata"):
        load_model(plain)
    wrong = tmp_path / "wrong.safetensors"
    save_file(
        {"w": torch.zeros(2)},
        str(wrong),
        metadata={
            "rscrisis": json.dumps(
                {
                    "encoder": "resnet18",
                    "in_channels": 3,
                    "mean": [0] * 3,
                    "std": [1] * 3,
                    "tile_size": 64,
                }
            )
        },
    )
    with pytest.raises(InputError, match="do not match the architecture"):
        load_model(wrong)


class _Boom:
    def __reduce__(self):
        return (open, ("/tmp/rscrisis-pwned", "w"))


def test_loading_never_unpickles(tmp_path):
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(InputError):
        load_model(evil)
    import os

    assert not os.path.exists("/tmp/rscrisis-pwned")


def test_band_mismatch_is_input_error():
    with pytest.raises(InputError, match="has 4 band.s. but the model expects 3"):
        check_bands(meta(3), 4, "tiles/")


def test_untrained_head_returns_the_expected_iou_baseline():
    net = BuildingSegmenter("resnet18", 3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, iou, _ = net(x)
        soft = prob_stats(torch.sigmoid(logits), None, 0.5)[:, 2]
    assert torch.allclose(iou, soft.clamp(1e-3, 1 - 1e-3), atol=1e-5)
