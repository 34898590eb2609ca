from rscrisis.config import TileConfig


def test_defaults_live_in_config():
    c = TileConfig()
    assert (c.size, c.overlap, c.stride) == (256, 0, 256)


def test_a_validation_failure_is_one_line_naming_the_option(invoke, tmp_path):
    # the config is resolved before any input is read: the scene need not exist
    r = invoke("tile", tmp_path / "none.tif", "-o", tmp_path / "t", "--size", "64", "--overlap",
               "64")  # fmt: skip
    assert r.exit_code == 2 and "overlap (64) must be smaller" in r.stderr
    assert r.stderr.count("\n") == 1
    r = invoke("tile", tmp_path / "none.tif", "-o", tmp_path / "t", "--min-valid", "1.5")
    assert r.exit_code == 2 and "invalid --min-valid" in r.stderr
    assert not (tmp_path / "t").exists()
