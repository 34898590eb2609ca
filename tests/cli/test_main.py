"""Global CLI conventions: --version, --help, exit codes, one-line errors, light imports."""

import subprocess
import sys

from rscrisis import __version__


def test_version_and_help(invoke):
    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"rscrisis {__version__}"
    r = invoke("--help")
    assert r.exit_code == 0 and "tile" in r.stdout and "sample-data" in r.stdout
    r = invoke("tile", "--help")
    assert r.exit_code == 0
    for option in (
        "--size",
        "--overlap",
        "--min-valid",
        "--bands",
        "--resolution",
        "--overwrite",
        "--resume",
        "--json",
        "default: 256",
    ):
        assert option in r.stdout, option


def test_unknown_option_is_usage_error(invoke):
    r = invoke("tile", "x.tif", "-o", "out", "--no-such-option")
    assert r.exit_code == 2


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys; from rscrisis.cli.main import app; "
        "heavy = [m for m in ('torch', 'rasterio', 'geopandas', 'albumentations', "
        "'segmentation_models_pytorch') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
