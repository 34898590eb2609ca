"""The user cache: where it is, atomic entries named by digests only, bounded reads, LRU."""

import hashlib
import os
import time

import pytest

from rscrisis.io import cache
from rscrisis.io.cache import CACHE_ENV, cache_dir, read_cached, write_cached


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_the_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    for off in ("off", "", "None"):
        monkeypatch.setenv(CACHE_ENV, off)
        assert cache_dir() is None
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "rscrisis"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")  # as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "rscrisis"


def test_an_entry_comes_back_and_nothing_is_written_when_off(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    path = write_cached("onnx", _key("a"), ".onnx", b"graph", keep=2)
    assert path == tmp_path / "c" / "onnx" / f"{_key('a')}.onnx"
    assert read_cached("onnx", _key("a"), ".onnx", max_bytes=100) == b"graph"
    assert read_cached("onnx", _key("b"), ".onnx", max_bytes=100) is None
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".partial")]
    monkeypatch.setenv(CACHE_ENV, "off")
    assert write_cached("onnx", _key("c"), ".onnx", b"x", keep=2) is None
    assert read_cached("onnx", _key("a"), ".onnx", max_bytes=100) is None
    assert sorted(p.name for p in (tmp_path / "c" / "onnx").iterdir()) == [path.name]


@pytest.mark.parametrize(
    "kind, key, suffix",
    [
        ("onnx", "../../etc/passwd", ".onnx"),
        ("onnx", _key("a")[:-1] + "/", ".onnx"),
        ("../x", _key("a"), ".onnx"),
        ("onnx", _key("a").upper(), ".onnx"),
        ("onnx", _key("a"), "/../x"),
    ],
)
def test_no_name_but_a_digest_reaches_the_file_system(kind, key, suffix, monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    with pytest.raises(ValueError, match="not a cache entry"):
        write_cached(kind, key, suffix, b"x", keep=1)
    with pytest.raises(ValueError, match="not a cache entry"):
        read_cached(kind, key, suffix, max_bytes=10)
    assert list(tmp_path.iterdir()) == []


def test_an_entry_over_the_bound_or_a_link_is_not_read(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    write_cached("onnx", _key("big"), ".onnx", b"x" * 1000, keep=4)
    assert read_cached("onnx", _key("big"), ".onnx", max_bytes=999) is None
    assert "over 999" in caplog.text
    secret = tmp_path / "secret"
    secret.write_bytes(b"not ours")
    os.symlink(secret, tmp_path / "onnx" / f"{_key('link')}.onnx")
    assert read_cached("onnx", _key("link"), ".onnx", max_bytes=100) is None


def test_the_least_recently_used_entries_go_first(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    keys = [_key(str(i)) for i in range(4)]
    now = time.time()
    for i, key in enumerate(keys[:3]):
        path = write_cached("onnx", key, ".onnx", b"g", keep=3)
        os.utime(path, (now - 100 + i, now - 100 + i))  # written in this order
    assert read_cached("onnx", keys[0], ".onnx", max_bytes=10) == b"g"  # now the newest use
    (tmp_path / "onnx" / "notes.txt").write_text("not an entry: left alone")
    write_cached("onnx", keys[3], ".onnx", b"g", keep=3)
    left = {p.name for p in (tmp_path / "onnx").iterdir()}
    assert left == {f"{keys[i]}.onnx" for i in (0, 2, 3)} | {"notes.txt"}


def test_a_cache_that_cannot_be_written_does_not_fail_the_run(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder should be")
    monkeypatch.setenv(CACHE_ENV, str(blocker))
    assert write_cached("onnx", _key("a"), ".onnx", b"g", keep=1) is None
    assert read_cached("onnx", _key("a"), ".onnx", max_bytes=10) is None
    assert cache._KEY.fullmatch(_key("a"))
