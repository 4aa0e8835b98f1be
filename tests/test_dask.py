"""The batch job's scorer under Dask's ``map_partitions`` (the README's example): predict's forecasts, every series
once, the model loaded once per worker process."""

from __future__ import annotations

import polars as pl
import pytest

from cfc_forecast.forecast.scorer import score_frame
from tests.deploy_support import assert_same_forecasts, fit_tiny, need


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    need("dask.dataframe")  # before the fit: a skip costs nothing
    return fit_tiny(tmp_path_factory.mktemp("dask"))


def test_dask_map_partitions_forecasts_as_predict_does(trained):
    dd = need("dask.dataframe")
    rows = pl.read_parquet(trained["data"]).sample(fraction=1.0, shuffle=True, seed=0).to_pandas()
    ckpt = str(trained["ckpt"])
    # every row of a series in one partition, then the same function as every other engine
    ddf = dd.from_pandas(rows, npartitions=4, sort=False).shuffle(on="series", npartitions=3)
    meta = score_frame(rows.iloc[:0], ckpt)
    out = ddf.map_partitions(score_frame, ckpt, meta=meta).compute(scheduler="threads", num_workers=2)
    forecasts = pl.from_pandas(out)
    assert_same_forecasts(forecasts, trained["predict"])
    assert forecasts["series"].n_unique() == rows["series"].nunique()
