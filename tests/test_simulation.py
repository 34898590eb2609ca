"""``simulate`` in a tiny configuration: outputs well-formed, budget exact, resumable."""

import json

import numpy as np
import pandas as pd
import pytest

from rscrisis.config import FinetuneConfig, SimulateConfig
from rscrisis.simulation import area_under_curve, simulate, summarise

TINY = SimulateConfig(
    formulas=("random", "entropy-iou+coreset"),
    rounds=2,
    batch=1,
    seed_batch=1,
    seeds=(0,),
    test_fraction=0.25,
    block_tiles=2,
    finetune=FinetuneConfig(epochs=1, batch_size=4, threads=1, val_fraction=0.0, patience=99),
)


def test_auc_is_the_mean_iou_over_the_budget():
    assert area_under_curve(np.array([2, 4, 6]), np.array([0.2, 0.4, 0.6])) == pytest.approx(0.4)
    assert area_under_curve(np.array([6, 2, 4]), np.array([0.5, 0.5, 0.5])) == pytest.approx(0.5)


def test_summary_compares_against_random_per_seed():
    rows = [
        {"seed": s, "formula": f, "labelled": n, "test_iou": iou}
        for s in (0, 1)
        for f, base in (("random", 0.3), ("entropy-iou", 0.35))
        for n, iou in ((2, base), (4, base + 0.1))
    ]
    summary = {r["formula"]: r for r in summarise(rows, ("random", "entropy-iou"))}
    assert summary["entropy-iou"]["beats_random_seeds"] == "2/2"
    assert summary["entropy-iou"]["gain_at_4"] == pytest.approx(5.0)
    assert summary["random"]["auc_mean"] == pytest.approx(0.35)


@pytest.mark.slow
def test_tiny_simulation_runs_resumes_and_uses_the_budget(
    tiny_model, tiny_tiles, tmp_path, monkeypatch, invoke
):
    import rscrisis.simulation as sim

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
    assert len(state["rows"]) == 2  # seed batch + random round 1 were kept
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
    assert calls["n"] == 3  # random round 2 + two rounds of the other formula, nothing redone
    curves = pd.read_csv(out / "curves.csv")
    assert set(curves.formula) == {"random", "entropy-iou+coreset"}
    for _, chain in curves.groupby("formula"):
        assert list(chain.labelled) == [1, 2, 3]  # exactly the budget: seed batch + 2 x K
        assert chain.test_iou.between(0, 1).all()
    first = curves.groupby("formula").first()
    assert first.test_iou.nunique() == 1  # the same seed batch for every formula
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.formula) == {"random", "entropy-iou+coreset"}
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert result.runs == 1 + 2 * 2
    manifest = json.loads((out / "simulate.json").read_text())
    assert manifest["pool_tiles"] + manifest["test_tiles"] <= 16
    # changed settings cannot resume someone else's run
    other = TINY.model_copy(update={"seed_batch": 2})
    with pytest.raises(Exception, match="other settings"):
        simulate(tiny_model, tiny_tiles, out, config=other, resume=True)


def test_band_split_keeps_a_one_tile_gap_to_the_southern_test_band():
    import geopandas as gpd
    from shapely.geometry import box

    from rscrisis.simulation import band_split

    tiles = [box(c * 10, -(r + 1) * 10, (c + 1) * 10, -r * 10) for r in range(5) for c in range(3)]
    frame = gpd.GeoDataFrame({"tile_id": [f"t{i}" for i in range(15)]}, geometry=tiles)
    pool, test = band_split(frame, 0.2)
    assert sorted(test) == [12, 13, 14]  # the southern row
    assert sorted(pool) == list(range(9))  # rows 0-2; row 3 is the gap
