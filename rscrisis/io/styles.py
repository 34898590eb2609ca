"""QGIS styles stored in the GeoPackages rscrisis writes, so layers open coloured, not grey.

QGIS keeps a layer's default style in the GeoPackage itself, in a ``layer_styles`` table (one
row per layer and style, the style as QML) registered in ``gpkg_contents`` as an attributes
table; QGIS reads it when the layer is added and applies the row marked ``useAsDefault``.
Other readers (GDAL, geopandas, JOSM) see one more non-spatial table and ignore it. The QML
written here is the small subset QGIS 3 needs for a graduated or single-symbol renderer.

Colours come from ColorBrewer (RdYlGn, YlOrRd), legible to the common colour-vision deficits
at five classes.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from xml.sax.saxutils import quoteattr

#: ColorBrewer RdYlGn (5): red = poor, green = good (predicted IoU)
RED_TO_GREEN = ("215,25,28", "253,174,97", "255,255,191", "166,217,106", "26,150,65")
#: ColorBrewer YlOrRd (5): yellow = low, red = high (annotation priority)
YELLOW_TO_RED = ("255,255,178", "254,204,92", "253,141,60", "240,59,32", "189,0,38")

#: predicted-IoU classes of the windows layer
IOU_CLASSES = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0001]
#: rank's default formula, entropy-iou (rscrisis.loop.ranking: H / max(H) x (1 - calibrated
#: IoU)), divided by its maximum so the classes hold whatever the scene's contrast, as a QGIS
#: expression over scores.gpkg's columns
_ENTROPY_IOU = '"mean_entropy" * (1 - "calibrated_iou")'
PRIORITY_EXPRESSION = f"({_ENTROPY_IOU}) / maximum({_ENTROPY_IOU})"
PRIORITY_CLASSES = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0001]

_TABLE = """
CREATE TABLE IF NOT EXISTS layer_styles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    f_table_catalog TEXT(256),
    f_table_schema TEXT(256),
    f_table_name TEXT(256),
    f_geometry_column TEXT(256),
    styleName TEXT(30),
    styleQML TEXT,
    styleSLD TEXT,
    useAsDefault BOOLEAN,
    description TEXT,
    owner TEXT(30),
    ui TEXT(30),
    update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)
"""


def _fill(name: str, colour: str, alpha: float, outline: str = "60,60,60,255") -> str:
    return (
        f'<symbol type="fill" name="{name}" alpha="{alpha}" clip_to_extent="1" force_rhr="0">'
        '<layer class="SimpleFill" enabled="1" locked="0" pass="0"><Option type="Map">'
        f'<Option name="color" type="QString" value="{colour},255"/>'
        f'<Option name="outline_color" type="QString" value="{outline}"/>'
        '<Option name="outline_style" type="QString" value="solid"/>'
        '<Option name="outline_width" type="QString" value="0.26"/>'
        '<Option name="outline_width_unit" type="QString" value="MM"/>'
        '<Option name="style" type="QString" value="solid"/>'
        "</Option></layer></symbol>"
    )


def _qml(renderer: str) -> str:
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        f'<qgis version="3.28.0" styleCategories="Symbology">{renderer}</qgis>\n'
    )


def graduated(expression: str, bounds: list[float], colours: tuple[str, ...], alpha=0.6) -> str:
    """QML: polygons coloured by ``expression`` (a field name or a QGIS expression) in the
    classes between ``bounds`` (len(colours) + 1 values), outlined in grey."""
    assert len(bounds) == len(colours) + 1
    ranges, symbols = [], []
    for i, colour in enumerate(colours):
        lo, hi = bounds[i], bounds[i + 1]
        label = f"{lo:g} - {hi:g}"
        ranges.append(
            f'<range lower="{lo}" upper="{hi}" symbol="{i}" label="{label}" render="true"/>'
        )
        symbols.append(_fill(str(i), colour, alpha))
    return _qml(
        f'<renderer-v2 type="graduatedSymbol" attr={quoteattr(expression)} '
        'graduatedMethod="GraduatedColor" symbollevels="0" enableorderby="0" forceraster="0">'
        f"<ranges>{''.join(ranges)}</ranges><symbols>{''.join(symbols)}</symbols>"
        "</renderer-v2>"
    )


def outlines(colour: str = "227,26,28") -> str:
    """QML: polygons drawn as outlines only (buildings over imagery)."""
    symbol = (
        '<symbol type="fill" name="0" alpha="1" clip_to_extent="1" force_rhr="0">'
        '<layer class="SimpleLine" enabled="1" locked="0" pass="0"><Option type="Map">'
        f'<Option name="line_color" type="QString" value="{colour},255"/>'
        '<Option name="line_style" type="QString" value="solid"/>'
        '<Option name="line_width" type="QString" value="0.5"/>'
        '<Option name="line_width_unit" type="QString" value="MM"/>'
        "</Option></layer></symbol>"
    )
    return _qml(
        '<renderer-v2 type="singleSymbol" symbollevels="0" enableorderby="0" forceraster="0">'
        f"<symbols>{symbol}</symbols></renderer-v2>"
    )


def add_style(gpkg: Path, layer: str, qml: str, name: str, description: str) -> None:
    """Store ``qml`` as ``layer``'s default QGIS style in ``gpkg`` (call it on the file before
    it is renamed into place: the write stays atomic)."""
    with sqlite3.connect(str(gpkg)) as db:
        geometry = db.execute(
            "SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (layer,)
        ).fetchone()
        db.execute(_TABLE)
        known = db.execute(
            "SELECT 1 FROM gpkg_contents WHERE table_name = 'layer_styles'"
        ).fetchone()
        if not known:
            db.execute(
                "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, "
                "last_change) VALUES ('layer_styles', 'attributes', 'layer_styles', "
                "'QGIS layer styles', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"
            )
        db.execute(
            "DELETE FROM layer_styles WHERE f_table_name = ? AND styleName = ?", (layer, name)
        )
        db.execute(
            "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
            "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, owner) "
            "VALUES ('', '', ?, ?, ?, ?, '', 1, ?, 'rscrisis')",
            (layer, geometry[0] if geometry else "geom", name, qml, description),
        )
