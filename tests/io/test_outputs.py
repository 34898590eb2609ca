import pytest

from rscrisis.errors import InputError, OutputExistsError
from rscrisis.io.outputs import atomic_path, guard_output_dir, partial_path, remove_partials


def test_atomic_path_renames_on_success(tmp_path):
    final = tmp_path / "a.txt"
    with atomic_path(final) as tmp:
        assert tmp != final and tmp.parent == final.parent and tmp.suffix == ".txt"
        tmp.write_text("x")
        assert not final.exists()
    assert final.read_text() == "x"
    assert list(tmp_path.iterdir()) == [final]


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "a.txt"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_remove_partials_only_removes_partials(tmp_path):
    (tmp_path / "sub").mkdir()
    keep = tmp_path / "sub" / "t.tif"
    keep.write_text("ok")
    partial_path(keep).write_text("half")
    assert remove_partials(tmp_path) == 1
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["t.tif"]


def test_guard_refuses_then_overwrites_only_products(tmp_path):
    (tmp_path / "index.gpkg").write_text("x")
    (tmp_path / "notes.txt").write_text("user file")
    with pytest.raises(OutputExistsError) as err:
        guard_output_dir(tmp_path, ["index.gpkg", "images"], overwrite=False, resume=False)
    assert err.value.exit_code == 2 and "--overwrite" in str(err.value)
    guard_output_dir(tmp_path, ["index.gpkg", "images"], overwrite=True, resume=False)
    assert not (tmp_path / "index.gpkg").exists()
    assert (tmp_path / "notes.txt").read_text() == "user file"


def test_guard_rejects_overwrite_with_resume(tmp_path):
    with pytest.raises(InputError):
        guard_output_dir(tmp_path, ["x"], overwrite=True, resume=True)
