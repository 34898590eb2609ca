import pytest

from rscrisis.config import TileConfig, resolve
from rscrisis.errors import InputError


def test_defaults_live_in_config():
    c = TileConfig()
    assert (c.size, c.overlap, c.stride) == (256, 0, 256)


def test_resolve_turns_validation_into_one_line_input_error():
    with pytest.raises(InputError, match="overlap .64. must be smaller") as err:
        resolve(TileConfig, size=64, overlap=64)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="--min-valid"):
        resolve(TileConfig, min_valid=1.5)
