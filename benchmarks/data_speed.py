"""Time the DataModules' parsing and windowing on the real data; print a markdown table for the README.

    python benchmarks/data_speed.py [--data-dir ../shared/data] [--repeats 3]

Rows: PhysioNet 2012 (12,000 records) parsed without and with the Parquet cache, and the full build (parse +
canonical table + scaling + every window); ETTh1 / ETTm1 full build and one pass over all training batches;
Walker2d and the synthetic source. Median of ``--repeats`` runs (the uncached parse runs once per repeat in a fresh
cache folder). Times are wall-clock seconds on this machine; compare rows only within one run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from datamodules import ETTDataModule, PhysioNetDataModule, SyntheticDataModule, Walker2dDataModule
from datamodules.paths import data_dir
from datamodules.physionet import load_physionet


def timed(fn: Callable[[], object], repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def one_epoch(dm) -> int:
    return sum(b.batch_size for b in dm.train_dataloader())


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder with ETT/, physionet2012/, walker2d/")
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args(args)
    root, n = data_dir(opts.data_dir), opts.repeats
    torch.set_num_threads(2)
    rows: list[tuple[str, str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        pn = root / "physionet2012"

        def uncached() -> None:
            load_physionet(pn, Path(tempfile.mkdtemp(dir=tmp)))

        rows.append(("PhysioNet parse, 12,000 records, no cache", "5.27 M rows", timed(uncached, n)))
        cache = Path(tmp) / "cache"
        load_physionet(pn, cache)
        rows.append(("PhysioNet parse, Parquet cache", "5.27 M rows", timed(lambda: load_physionet(pn, cache), n)))
        built = {}

        def build_pn() -> None:
            built["pn"] = PhysioNetDataModule(data_dir=str(root), cache_dir=str(cache))
            built["pn"].setup()

        rows.append(("PhysioNet full build (cached parse + every window)", "12,000 windows", timed(build_pn, n)))
        rows.append(
            ("PhysioNet one pass over train batches (32)", "7,200 windows", timed(lambda: one_epoch(built["pn"]), 1))
        )
    for name, count in (("ETTh1", "14,019 windows"), ("ETTm1", "57,219 windows")):

        def build_ett(name: str = name) -> None:
            built[name] = ETTDataModule(name, data_dir=str(root))
            built[name].setup()

        rows.append((f"{name} full build (read + scale + windows, L=96, K=96)", count, timed(build_ett, n)))
        epoch = timed(lambda name=name: one_epoch(built[name]), 1)
        rows.append(
            (f"{name} one pass over train batches (32)", f"{len(built[name].dataset('train')):,} windows", epoch)
        )

    def build_walker() -> None:
        Walker2dDataModule(data_dir=str(root)).setup()

    rows.append(("Walker2d full build (400 rollouts)", "12,893 windows", timed(build_walker, n)))
    rows.append(("Synthetic full build (256 series)", "3,321 windows", timed(lambda: SyntheticDataModule().setup(), n)))
    print("| step | size | seconds |\n|---|---|---|")
    for step, size, seconds in rows:
        print(f"| {step} | {size} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
