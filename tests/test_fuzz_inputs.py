"""Fuzz the files rscrisis reads back (issue 13): a real tile set, prediction set and batch are
mutated, byte by byte and cell by cell, with a fixed seed (220 mutants), and each mutant is fed to
the command that reads it. Whatever the damage, the command must exit 0 or 2, print no
traceback, and touch no path outside its own folders."""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
from pathlib import Path

import pytest

from rscrisis.config import RankConfig
from tests.conftest import mark_all_done

SEED = 20261201
MUTANTS = {"tileset": 80, "prediction": 80, "batch": 60}
HOSTILE = [
    "../../x",
    "/abs/x",
    "",
    None,
    float("nan"),
    float("inf"),
    -1,
    10**12,
    "first",
    "x" * 5000,
    1e308,
    True,
    "tile_r0000_c0000",
]


def _snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file():
                st = p.stat()
                out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


# --- mutations -----------------------------------------------------------------------------


def _bytes(rng: random.Random, path: Path) -> str:
    data = bytearray(path.read_bytes())
    kind = rng.choice(["truncate", "flip", "garbage", "delete", "append", "empty"])
    if kind == "truncate" and data:
        path.write_bytes(bytes(data[: rng.randrange(len(data))]))
    elif kind == "flip" and data:
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
    elif kind == "garbage":
        path.write_bytes(rng.randbytes(rng.randint(1, 4096)))
    elif kind == "delete":
        path.unlink()
    elif kind == "append":
        path.write_bytes(bytes(data) + rng.randbytes(rng.randint(1, 512)))
    else:
        path.write_bytes(b"")
    return f"{kind} {path.name}"


def _json(rng: random.Random, path: Path) -> str:
    value = json.loads(path.read_text())

    def containers(node, trail):
        yield node, trail
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            if isinstance(v, (dict, list)) and v:
                yield from containers(v, [*trail, k])

    node, trail = rng.choice(list(containers(value, [])))
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    if not keys:
        return f"nothing to change in {path.name}"
    key = rng.choice(keys)
    if isinstance(node, dict) and rng.random() < 0.3:
        del node[key]
        what = "delete"
    else:
        node[key] = rng.choice([*HOSTILE, [], {}, [1, 2], {"a": 1}])
        what = f"set {node[key]!r:.20}"
    path.write_text(json.dumps(value))
    return f"{what} at {'/'.join(map(str, [*trail, key]))} in {path.name}"


def _csv(rng: random.Random, path: Path) -> str:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    fields = list(rows[0]) if rows else ["task"]
    kind = rng.choice(["cell", "cell", "drop-column", "duplicate-row", "no-rows"])
    if kind == "cell" and rows:
        row, field = rng.choice(rows), rng.choice(fields)
        row[field] = str(rng.choice(HOSTILE))
    elif kind == "drop-column":
        gone = rng.choice(fields)
        fields.remove(gone)
        rows = [{k: v for k, v in r.items() if k != gone} for r in rows]
    elif kind == "duplicate-row" and rows:
        rows.append(dict(rng.choice(rows)))
    else:
        rows = []
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue())
    return f"{kind} in {path.name}"


def _gpkg(rng: random.Random, path: Path) -> str:
    import geopandas as gpd
    import pyogrio

    layer = pyogrio.list_layers(path)[0][0]
    frame = gpd.read_file(path, layer=layer, engine="pyogrio")
    columns = [c for c in frame.columns if c != frame.geometry.name]
    kind = rng.choice(["cell", "cell", "cell", "drop-column", "duplicate-row", "no-rows"])
    if kind == "cell" and len(frame) and columns:
        column = rng.choice(columns)
        value = rng.choice(HOSTILE)
        frame[column] = frame[column].astype(object)
        frame.loc[frame.index[rng.randrange(len(frame))], column] = value
        kind = f"{column}={value!r:.20}"
    elif kind == "drop-column" and columns:
        gone = rng.choice(columns)
        frame = frame.drop(columns=[gone])
        kind = f"drop {gone}"
    elif kind == "duplicate-row" and len(frame):
        frame = gpd.GeoDataFrame(
            [*frame.to_dict("records"), frame.iloc[0].to_dict()], crs=frame.crs
        )
    else:
        frame = frame.iloc[:0]
    try:
        frame.to_file(path, layer=layer, driver="GPKG", engine="pyogrio")
    except Exception:  # a value the driver cannot store: store its text instead
        frame = frame.astype({c: str for c in frame.columns if c != frame.geometry.name})
        frame.to_file(path, layer=layer, driver="GPKG", engine="pyogrio")
    return f"{kind} in {path.name}"


def mutate(rng: random.Random, root: Path) -> str:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    tables = [p for p in files if p.suffix in (".json", ".csv", ".gpkg")]
    if tables and rng.random() < 0.6:
        path = rng.choice(tables)
        mutator = {".json": _json, ".csv": _csv, ".gpkg": _gpkg}[path.suffix]
        return mutator(rng, path)
    return _bytes(rng, rng.choice(files))


# --- the three subjects --------------------------------------------------------------------


@pytest.fixture(scope="module")
def subjects(tiny_tiles, tiny_pred, tmp_path_factory):
    from rscrisis.loop.export import rank

    batch = tmp_path_factory.mktemp("fuzz") / "batch"
    rank(tiny_pred, batch, config=RankConfig(top=2))
    mark_all_done(batch)
    return {"tileset": tiny_tiles, "prediction": tiny_pred, "batch": batch}


def _command(kind: str, mutant: Path, out: Path, model: Path) -> list:
    if kind == "tileset":
        return ["predict", model, mutant, "--out", out, "--threads", "1", "-q"]
    if kind == "prediction":
        return ["rank", mutant, "--out", out, "--top", "3", "-q"]
    return [
        "finetune", model, mutant, "--out", out / "ft.safetensors",
        "--steps", "1", "--batch-size", "2", "--threads", "1", "-q",
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(MUTANTS))
def test_mutated_inputs_exit_0_or_2_without_traceback(
    invoke, subjects, tiny_model, tiny_tiles, tmp_path, kind
):
    rng = random.Random(f"{SEED}-{kind}")
    shared = [tiny_tiles, subjects[kind], tiny_model.parent]
    before = _snapshot(*shared)
    failures, codes = [], {0: 0, 2: 0}
    for n in range(MUTANTS[kind]):
        sandbox = tmp_path / f"m{n:03d}"
        mutant = sandbox / "in" / subjects[kind].name
        shutil.copytree(subjects[kind], mutant)
        what = mutate(rng, mutant)
        outside = _snapshot(tmp_path.parent) if n % 20 == 0 else None
        r = invoke(*_command(kind, mutant, sandbox / "out", tiny_model))
        bad = r.exit_code not in (0, 2) or "Traceback" in r.output or "internal error" in r.output
        if bad:
            failures.append(f"{what}: exit {r.exit_code}: {r.output.strip()[-300:]}")
        else:
            codes[r.exit_code] += 1
        escaped = [p for p in sandbox.rglob("*") if not p.resolve().is_relative_to(sandbox)]
        assert not escaped, f"{what}: {escaped}"
        if outside is not None:  # nothing appeared or changed next to the test's own folder
            now = _snapshot(tmp_path.parent)
            changed = {
                p
                for p in set(now) | set(outside)
                if not Path(p).is_relative_to(tmp_path) and now.get(p) != outside.get(p)
            }
            assert not changed, f"{what}: {sorted(changed)[:5]}"
        shutil.rmtree(sandbox)
    assert _snapshot(*shared) == before  # the fixtures the mutants were copied from
    assert not failures, f"{len(failures)} of {MUTANTS[kind]} mutants:\n" + "\n".join(failures)
    assert codes[0] + codes[2] == MUTANTS[kind]
