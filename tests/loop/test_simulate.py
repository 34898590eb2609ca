"""``simulate``: its statistics, and a tiny run: outputs well-formed, budget exact, resumable."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from rscrisis.config import FinetuneConfig, SimulateConfig
from rscrisis.loop.simulate import (
    area_under_curve,
    frame_report,
    labels_to_reach,
    mean_interval,
    sign_test,
    simulate,
    summarise,
)

FORMULAS = ("random", "entropy-iou")
TINY = SimulateConfig(
    formulas=("random", "entropy-iou+coreset"),
    rounds=2,
    batch=1,
    seed_batch=1,
    seeds=(0,),
    test_fraction=0.25,
    block_tiles=2,
    finetune=FinetuneConfig(steps=2, batch_size=4, threads=1, val_fraction=0.0),
)


def test_auc_is_the_mean_iou_over_the_budget():
    assert area_under_curve(np.array([2, 4, 6]), np.array([0.2, 0.4, 0.6])) == pytest.approx(0.4)
    assert area_under_curve(np.array([6, 2, 4]), np.array([0.5, 0.5, 0.5])) == pytest.approx(0.5)


def _rows(gains: dict[int, float], seeds=(0, 1, 2)) -> list[dict]:
    rows = [{"seed": -1, "formula": "start", "labelled": 0, "test_iou": 0.2}]
    rows += [{"seed": s, "formula": "ceiling", "labelled": 10, "test_iou": 0.6} for s in seeds]
    for s in seeds:
        for n, iou in ((0, 0.2), (2, 0.3), (4, 0.4)):
            rows.append({"seed": s, "formula": "random", "labelled": n, "test_iou": iou})
            g = gains.get(n, 0.0) + 0.01 * s
            rows.append({"seed": s, "formula": "entropy-iou", "labelled": n, "test_iou": iou + g})
    return rows


def test_summary_pairs_each_formula_with_random_per_seed_and_budget():
    summary = {r["formula"]: r for r in summarise(_rows({2: 0.05, 4: 0.1}), FORMULAS)}
    e, r = summary["entropy-iou"], summary["random"]
    assert e["beats_random_seeds"] == "3/3"
    assert e["sign_test_p"] == pytest.approx(0.125)  # 3 wins of 3: 1/8
    # paired gain at 4 tiles: 10, 11, 12 points; 95 % t interval 11 +- 4.303 x 1 / sqrt(3)
    assert e["gain_at_4"] == pytest.approx(11.0)
    assert e["gain_at_4_ci"] == "[+8.52, +13.48]"
    # the frame: start 0.2, ceiling 0.6; random closes (0.4 - 0.2) / 0.4 of the gap at 4
    assert r["gap_closed_at_4"] == pytest.approx(0.5)
    assert r["gap_closed_at_0"] == pytest.approx(0.0)
    assert r["rises"] is True
    # random's final IoU (0.4 at 4 labels) is reached by entropy-iou between 2 and 4 tiles
    assert 2 < e["labels_to_random_final"] < 4
    assert r["auc_mean"] == pytest.approx(0.3)


def test_summary_flags_a_curve_that_falls():
    rows = _rows({})
    for row in rows:
        if row["formula"] == "random" and row["labelled"] == 4:
            row["test_iou"] = 0.25  # falls 5 points below the 2-tile budget
    summary = {r["formula"]: r for r in summarise(rows, FORMULAS)}
    assert summary["random"]["rises"] is False


def test_sign_test_and_interval_helpers():
    assert sign_test(5, 0) == pytest.approx(1 / 32)
    assert math.isnan(sign_test(0, 0))
    m, lo, hi = mean_interval(np.array([1.0, 1.0, 1.0]))
    assert (m, lo, hi) == (1.0, 1.0, 1.0)
    assert math.isnan(mean_interval(np.array([2.0]))[1])
    assert labels_to_reach(np.array([0, 4, 8]), np.array([0.1, 0.3, 0.5]), 0.4) == 6.0
    assert labels_to_reach(np.array([0, 4]), np.array([0.1, 0.3]), 0.9) is None


def test_frame_report_gives_start_ceiling_and_pool_correlations():
    rows = _rows({})
    for row in rows:
        row["pool_rho_pred_iou"] = 0.5 if row["formula"] != "ceiling" else None
    report = frame_report(rows, FORMULAS)
    assert report["start"]["test_iou"] == pytest.approx(0.2) and report["start"]["labelled"] == 0
    assert report["ceiling"]["test_iou"] == pytest.approx(0.6)
    assert report["ceiling"]["seeds"] == 3
    assert report["pool_rank_correlation"]["random"][2]["pool_rho_pred_iou"] == 0.5


@pytest.mark.slow
def test_tiny_simulation_runs_resumes_and_uses_the_budget(
    tiny_model, tiny_tiles, tmp_path, monkeypatch, invoke
):
    import rscrisis.loop.simulate as sim

    calls = {"n": 0}
    real = sim._finetune_on

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # killed in the middle of the first formula's second round
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sim, "_finetune_on", dying)
    out = tmp_path / "sim"
    with pytest.raises(KeyboardInterrupt):
        simulate(tiny_model, tiny_tiles, out, config=TINY)
    state = json.loads((out / "state.json").read_text())
    # the starting model, the seed batch and random's round 1 were kept
    assert [r["formula"] for r in state["rows"]] == ["start", "seed-batch", "random"]
    # without --resume an existing simulation is never touched
    r = invoke("simulate", tiny_model, tiny_tiles, "-o", out, "--seeds", "0")
    assert r.exit_code == 2 and "--resume" in r.stderr
    monkeypatch.setattr(
        sim,
        "_finetune_on",
        lambda *a, **k: (calls.__setitem__("n", calls["n"] + 1), real(*a, **k))[1],
    )
    calls["n"] = 0
    result = simulate(tiny_model, tiny_tiles, out, config=TINY, resume=True)
    # random round 2, two rounds of the other formula and the ceiling; nothing redone
    assert calls["n"] == 4
    curves = pd.read_csv(out / "curves.csv")
    assert set(curves.formula) == {"start", "random", "entropy-iou+coreset", "ceiling"}
    manifest = json.loads((out / "simulate.json").read_text())
    for f, chain in curves[curves.formula.isin(TINY.formulas)].groupby("formula"):
        # exactly the budget, from the starting model: 0, seed batch, + 2 x K
        assert list(chain.labelled) == [0, 1, 2, 3], f
        assert chain.test_iou.between(0, 1).all()
        assert chain.pool_tiles.iloc[1:].tolist() == [manifest["pool_tiles"] - n for n in (1, 2, 3)]
    firsts = curves[curves.formula.isin(TINY.formulas)].groupby("formula").nth(1)
    assert firsts.test_iou.nunique() == 1  # the same seed batch for every formula
    ceiling = curves[curves.formula == "ceiling"]
    assert list(ceiling.labelled) == [manifest["pool_tiles"]]
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.formula) == {"random", "entropy-iou+coreset"}
    assert {"gap_closed_at_3", "gain_at_3", "gain_at_3_ci", "rises"} <= set(summary.columns)
    report = json.loads((out / "report.json").read_text())
    assert report["start"]["labelled"] == 0 and report["ceiling"]["labelled"] > 3
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert result.runs == 1 + 1 + 2 * 2 + 1
    assert result.start["test_iou"] == pytest.approx(curves.test_iou.iloc[0], abs=1e-4)
    assert manifest["pool_tiles"] + manifest["test_tiles"] <= 16
    # the fine-tuned models carry an IoU calibrator fitted on the revealed tiles
    from rscrisis.ml.model import read_meta

    chain = state = json.loads((out / "state.json").read_text())["chains"]["0/random"]
    meta = read_meta(chain["model"])
    assert len(meta.training["calibration_samples"]) == 3
    # each round's picks are recorded in order, across the resume
    assert [len(b) for b in chain["batches"]] == [1, 1, 1]
    assert sorted(t for b in chain["batches"] for t in b) == chain["ids"]
    assert "iou_calibrator" in meta.training
    # changed settings cannot resume someone else's run
    other = TINY.model_copy(update={"seed_batch": 2})
    with pytest.raises(Exception, match="other settings"):
        simulate(tiny_model, tiny_tiles, out, config=other, resume=True)


def test_band_split_keeps_a_one_tile_gap_to_the_southern_test_band():
    import geopandas as gpd
    from shapely.geometry import box

    from rscrisis.loop.simulate import band_split

    tiles = [box(c * 10, -(r + 1) * 10, (c + 1) * 10, -r * 10) for r in range(5) for c in range(3)]
    frame = gpd.GeoDataFrame({"tile_id": [f"t{i}" for i in range(15)]}, geometry=tiles)
    pool, test = band_split(frame, 0.2)
    assert sorted(test) == [12, 13, 14]  # the southern row
    assert sorted(pool) == list(range(9))  # rows 0-2; row 3 is the gap


TWO_SEEDS = TINY.model_copy(update={"seeds": (0, 1), "formulas": ("random", "entropy")})


def _curves(out) -> pd.DataFrame:
    keys = ["formula", "seed", "labelled"]
    return pd.read_csv(out / "curves.csv").sort_values(keys).reset_index(drop=True)


def test_seeds_in_parallel_processes_give_the_one_worker_figures(tiny_model, tiny_tiles, tmp_path):
    seq = simulate(tiny_model, tiny_tiles, tmp_path / "seq", config=TWO_SEEDS)
    seen = []
    par = simulate(
        tiny_model,
        tiny_tiles,
        tmp_path / "par",
        config=TWO_SEEDS.model_copy(update={"workers": 2}),
        progress=lambda done, total, text="": seen.append((done, total, text)),
    )
    a, b = _curves(tmp_path / "seq"), _curves(tmp_path / "par")
    cols = ["formula", "seed", "labelled", "test_iou", "test_f1", "object_f1"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert par.runs == seq.runs == 1 + 2 * (1 + 2 * 2 + 1)
    # every step of both workers reached the main process's progress, counted once
    assert [d for d, _, _ in seen] == list(range(1, par.runs + 1))
    assert {t for _, t, _ in seen} == {par.runs}
    assert any("seed 1" in text for _, _, text in seen)
    # the workers' shards were taken into the main state and removed
    state = json.loads((tmp_path / "par" / "state.json").read_text())
    assert len(state["rows"]) == par.runs
    assert {"0/random", "1/random", "0/entropy", "1/entropy"} <= set(state["chains"])
    assert not list((tmp_path / "par" / "work" / "shards").iterdir())
    # the worker count is not a setting of the figures: a one-worker resume accepts the run
    again = simulate(tiny_model, tiny_tiles, tmp_path / "par", config=TWO_SEEDS, resume=True)
    assert again.runs == par.runs


def test_a_killed_parallel_run_resumes_from_its_workers_shards(
    tiny_model, tiny_tiles, tmp_path, monkeypatch
):
    import rscrisis.loop.simulate as sim

    out = tmp_path / "sim"
    first = simulate(tiny_model, tiny_tiles, out, config=TWO_SEEDS)
    before = _curves(out)
    # as a parallel run leaves it when killed: seed 1's random chain only in its worker's
    # shard, its entropy rounds and its ceiling not reached
    state = json.loads((out / "state.json").read_text())
    rows = state["rows"]
    shard = {
        "fingerprint": state["fingerprint"],
        "seed": 1,
        "formula": "random",
        "rows": [r for r in rows if (r["seed"], r["formula"]) == (1, "random")],
        "chains": {"1/random": state["chains"]["1/random"]},
    }
    gone = {"random", "entropy", "ceiling"}
    state["rows"] = [r for r in rows if not (r["seed"] == 1 and r["formula"] in gone)]
    state["chains"] = {
        k: v for k, v in state["chains"].items() if k not in {f"1/{f}" for f in gone}
    }
    (out / "state.json").write_text(json.dumps(state))
    path = out / "work" / "shards" / "seed1-random.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(shard))
    calls = {"n": 0}
    real = sim._finetune_on

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(sim, "_finetune_on", counting)
    result = simulate(tiny_model, tiny_tiles, out, config=TWO_SEEDS, resume=True)
    assert calls["n"] == 3  # seed 1's entropy rounds and ceiling; nothing redone
    assert result.runs == first.runs
    cols = ["formula", "seed", "labelled", "test_iou"]
    pd.testing.assert_frame_equal(before[cols], _curves(out)[cols])
    assert not path.exists()
    # a shard of another simulation is refused, naming the file
    shard["fingerprint"] = {**shard["fingerprint"], "model": "elsewhere"}
    path.write_text(json.dumps(shard))
    with pytest.raises(sim.InputError, match="other settings") as err:
        simulate(tiny_model, tiny_tiles, out, config=TWO_SEEDS, resume=True)
    assert "seed1-random.json" in str(err.value)


@pytest.mark.slow
def test_replay_by_distillation_maps_the_pretraining_tiles_once(
    tiny_model, tiny_tiles, tmp_path, monkeypatch
):
    """With --replay-targets model every round replays the starting model's map of its
    pretraining tiles, made once before the chains start and shared by all of them."""
    import rscrisis.loop.finetune as ft

    made = []
    real = ft.model_targets

    def counting(model, tilesets, cache, threads):
        maps = real(model, tilesets, cache, threads)
        made.append(sorted(p.name for p in cache.iterdir()))
        return maps

    monkeypatch.setattr(ft, "model_targets", counting)
    config = TINY.model_copy(
        update={
            "formulas": ("random",),
            "rounds": 1,
            "finetune": TINY.finetune.model_copy(update={"replay_targets": "model"}),
        }
    )
    result = simulate(tiny_model, tiny_tiles, tmp_path / "sim", config=config)
    assert result.runs == 4  # start, seed batch, one round, ceiling
    cache = tmp_path / "sim" / "work" / "replay-targets"
    assert len(made) == 4 and all(m == made[0] for m in made) and len(made[0]) == 1
    (folder,) = cache.iterdir()
    assert len(list((folder / "masks").glob("*.tif"))) == 16  # every tile of the set
