import numpy as np
import pytest
import shapely
import torch

from rscrisis.errors import InputError
from rscrisis.geo.tiling import tile
from rscrisis.ml.data import TileDataset, augmentation, band_statistics, load_tiles, spatial_split
from tests.conftest import gradient, write_raster


def test_spatial_split_never_lets_neighbours_straddle(tiny_tiles):
    table = load_tiles([tiny_tiles], need_masks=True)
    frame = table.frame
    train, val, dropped = spatial_split(frame, 0.25, 1, seed=0)
    assert len(set(train) | set(val) | set(dropped)) == len(frame)
    assert not set(train) & set(val)
    assert len(val) >= 4
    geoms = frame.geometry.values
    for i in train:
        for j in val:
            assert not shapely.intersects(geoms[i], geoms[j]), (i, j)
    again = spatial_split(frame, 0.25, 1, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(again, (train, val, dropped), strict=True))


def test_split_with_zero_fraction_keeps_everything(tiny_tiles):
    frame = load_tiles([tiny_tiles], need_masks=True).frame
    train, val, dropped = spatial_split(frame, 0.0, 2, seed=0)
    assert len(train) == len(frame) and len(val) == len(dropped) == 0


def test_band_statistics_and_dataset(tmp_path):
    data = np.stack([np.full((32, 32), 10, np.uint16), np.full((32, 32), 30, np.uint16)])
    data[0, :, :16] = 20
    src = write_raster(tmp_path / "s.tif", data)
    tile([src], tmp_path / "t")
    table = load_tiles([tmp_path / "t"], need_masks=False)
    mean, std = band_statistics(list(table.frame.image_path))
    assert mean == pytest.approx([15.0, 30.0]) and std[0] == pytest.approx(5.0)
    ds = TileDataset(table.frame.image_path, [None], mean, std, table.dtype)
    x, mask, valid = ds[0]
    assert x.shape == (2, 256, 256) and x.dtype == torch.float32
    assert valid[:32, :32].all() and not valid[32:, :].any()  # padding is not valid
    assert (mask[32:, :] == 255).all()
    assert x[0, 0, 0] == pytest.approx(1.0) and x[0, 0, 20] == pytest.approx(-1.0)
    assert (x[:, 40:, :] == 0).all()


def test_tile_set_without_masks_cannot_train(tmp_path):
    src = write_raster(tmp_path / "s.tif", gradient(3, 32, 32))
    tile([src], tmp_path / "t")
    with pytest.raises(InputError, match="has no masks"):
        load_tiles([tmp_path / "t"], need_masks=True)


def test_augmentation_draws_all_eight_views_independently_and_reproducibly():
    """Mirrored views must occur (a seeded Compose once tied both flips to one coin)."""
    image = np.zeros((8, 8, 3), np.float32)
    image[0, 1] = 1.0
    mask = np.zeros((8, 8), np.uint8)
    mask[0, 1] = 1

    def positions(seed: int) -> list[tuple[int, int]]:
        aug = augmentation(seed)
        seen = []
        for _ in range(400):
            out = aug(image=image, mask=mask)
            hit = np.argwhere(out["mask"] == 1)
            seen.append(tuple(int(v) for v in hit[0]) if len(hit) else (-1, -1))
        return seen

    seen = positions(0)
    d4_views = {(0, 1), (0, 6), (7, 1), (7, 6), (1, 0), (6, 0), (1, 7), (6, 7)}
    counts = {p: seen.count(p) for p in d4_views}
    assert all(n >= 25 for n in counts.values()), counts  # about 50 each (scale moves a few)
    assert positions(0) == seen
    assert positions(1) != seen
