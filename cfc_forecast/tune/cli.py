"""``cfc-forecast tune --config configs/tune/<study>.yaml [--workers N] [--n_trials N] [--storage URL] ...``

Checks the study against the fit command, creates or loads the study in its storage, runs trials on ``workers``
threads until the study holds ``n_trials`` finished trials (or ``timeout`` passes), printing a line per trial, then
writes the trials table, the best config and the plots into the study directory. A rerun of the same command
continues the same study; several commands on several machines with one storage URL share it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from typing import TYPE_CHECKING, Any

import optuna
from jsonargparse import ActionConfigFile, ArgumentParser
from optuna.trial import FrozenTrial, TrialState

from cfc_forecast.tune import pruning, report
from cfc_forecast.tune.runtime import QuietOptuna, device_groups, sigterm_as_interrupt
from cfc_forecast.tune.space import Param, enqueue_params, parse_space
from cfc_forecast.tune.spec import StudySpec, build_pruner, build_sampler
from cfc_forecast.tune.storage import open_storage, redact
from cfc_forecast.tune.trial import StopWorkers, TrialRunner

if TYPE_CHECKING:
    from optuna.storages import RDBStorage

    from cfc_forecast.tune.check import FitChecker


WAIT_S = 5.0  # how often a worker with nothing to start looks again while the study's last trials run elsewhere


def build_parser() -> ArgumentParser:
    """The ``tune`` command's parser: ``--config <study.yaml>`` and every :class:`StudySpec` field as an option."""
    parser = ArgumentParser(
        prog="cfc-forecast tune", description=__doc__.splitlines()[0], allow_abbrev=False, exit_on_error=False
    )  # a parse error raises: cfc_forecast.commands.main reports it as one line
    parser.add_argument("--config", action=ActionConfigFile, help="The study file (YAML).")
    parser.add_class_arguments(StudySpec)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``cfc-forecast tune``; returns the exit status: 0 done, 1 no trial succeeded or a worker crashed, 2 a
    study that cannot run (the reason is printed before any trial), 130 interrupted (rerun to continue)."""
    cfg = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    names = {f.name for f in dataclasses.fields(StudySpec)}
    spec = StudySpec(**{k: v for k, v in cfg.as_dict().items() if k in names})
    quiet = QuietOptuna()
    try:
        try:
            study = Study(spec)
        except ValueError as err:  # a study that cannot run: say why, before any trial
            print(f"cfc-forecast tune: error: {err}", file=sys.stderr, flush=True)
            return 2
        return study.run()
    finally:
        quiet.restore()


def check_study(spec: StudySpec) -> tuple[list[Param], list[dict[str, Any]], FitChecker]:
    """Everything that can be checked before a trial runs: the study's values, its space and queued trials, and
    every key and extreme value against the fit command's parser. Returns the space, the queued trials' optuna
    parameters and the checker (with the base config).

    Raises:
        ValueError: the first problem found, naming the key or field.
    """
    from cfc_forecast.tune.check import FitChecker  # imports the fit command (torch, lightning)

    spec.check()
    space = parse_space(spec.space)
    queued = [enqueue_params(space, values) for values in spec.enqueue]
    checker = FitChecker(spec.fit_configs, spec.fit_args)
    checker.check_space(space)
    return space, queued, checker


class Study:
    """A checked study, opened in its storage, and the workers that run its trials."""

    def __init__(self, spec: StudySpec) -> None:
        self.space, queued, checker = check_study(spec)
        self.spec, self.dir = spec, spec.directory
        self.keys = [p.key for p in self.space]
        self.restore = {"test_after_fit": checker.test_after_fit,
                        "trainer.enable_progress_bar": checker.config.fit.trainer.enable_progress_bar}  # fmt: skip
        self.study = self._open()
        for params in queued:
            self.study.enqueue_trial(params, skip_if_exists=True)
        self.stop, self.lock = threading.Event(), threading.Lock()
        self.error: tuple[str, int] | None = None  # why the workers stopped early, and the exit status
        self.started = time.monotonic()
        self.finished: list[FrozenTrial] = []

    def _storage(self) -> RDBStorage:
        s = self.spec
        return open_storage(s.storage_url, s.heartbeat_interval, s.grace_period, s.max_retry)

    def _open(self) -> optuna.Study:
        """Create the study, or load it and check it was made for this metric and direction."""
        s = self.spec
        study = optuna.create_study(storage=self._storage(), sampler=build_sampler(s.sampler, 0),
                                    pruner=build_pruner(s.pruner), study_name=s.study_name, direction=s.direction,
                                    load_if_exists=True)  # fmt: skip
        if study.direction.name.lower() != s.direction:
            raise ValueError(f"study {s.study_name!r} in {redact(s.storage_url)} was created to "
                             f"{study.direction.name.lower()}; this study file says {s.direction}")  # fmt: skip
        recorded = study.user_attrs.get("metric")
        if recorded is None:
            study.set_user_attr("metric", s.metric)
        elif recorded != s.metric:
            raise ValueError(f"study {s.study_name!r} in {redact(s.storage_url)} optimises {recorded!r}; this study "
                             f"file says {s.metric!r} (give another study_name)")  # fmt: skip
        return study

    # ---- running -------------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Run the workers, then report; the exit status of :func:`main`."""
        s = self.spec
        _fail_stale(self.study)
        done, running = _counts(self.study)
        target = f"{s.n_trials} trials" if s.n_trials is not None else "no trial limit"
        print(f"study {s.study_name!r} in {redact(s.storage_url)}: {done} finished, {running} running, {target}"
              f"{f', timeout {s.timeout:g} s' if s.timeout else ''}; {s.workers} worker(s); trials in {self.dir}",
              flush=True)  # fmt: skip
        interrupted = self._run_workers()
        rows = report.trial_rows(self.study, self.keys)
        self._write_results(rows, plots=True)
        if interrupted:
            print("interrupted: the running trials were stopped and are not counted; rerun the same command to "
                  "continue the study", flush=True)  # fmt: skip
            return 130
        if self.error:
            print(f"cfc-forecast tune: error: {self.error[0]}", file=sys.stderr, flush=True)
            return self.error[1]
        ours = [t for t in self.finished if t.state != TrialState.FAIL]
        return 0 if ours or not self.finished else 1

    def _run_workers(self) -> bool:
        devices = device_groups(self.spec.workers)
        ended = [threading.Event() for _ in range(self.spec.workers)]
        threads = [threading.Thread(target=self._worker, args=(i, devices[i], ended[i]), daemon=True)
                   for i in range(self.spec.workers)]  # fmt: skip
        previous = sigterm_as_interrupt()
        try:
            for t in threads:
                t.start()
            # sleep, not Thread.join: an interrupt inside join() can leave a live thread marked as ended
            while not all(e.is_set() for e in ended):
                time.sleep(0.2)
            return False
        except KeyboardInterrupt:
            print("\ninterrupt: stopping the running trials ...", flush=True)
            self.stop.set()
            while not all(e.is_set() for e in ended):
                time.sleep(0.2)
            return True
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _worker(self, index: int, devices: str | None, ended: threading.Event) -> None:
        s = self.spec
        try:
            storage = self._storage()
            offset = index + len(self.study.get_trials(deepcopy=False))  # no replay of earlier random draws
            sampler, pruner = build_sampler(s.sampler, offset), build_pruner(s.pruner)
            study = optuna.load_study(study_name=s.study_name, storage=storage, sampler=sampler, pruner=pruner)
            env = {pruning.ENV_STORAGE: s.storage_url, pruning.ENV_STUDY: s.study_name,
                   pruning.ENV_PRUNER: json.dumps(s.pruner)}  # fmt: skip
            if devices is not None:
                env["CUDA_VISIBLE_DEVICES"] = devices
            if s.workers > 1 and "OMP_NUM_THREADS" not in os.environ:
                # a share of the cores per trial: torch's default of every core in each of N processes
                # oversubscribes them, and its threads then wait on each other (steps 40x slower were measured)
                env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // s.workers))
            worker = f"{socket.gethostname()}:{os.getpid()}/{index}"
            runner = TrialRunner(self.space, s.fit_configs, s.fit_args, s.metric, s.direction == "maximize", self.dir,
                                 env, self.stop, worker)  # fmt: skip
            while self._next(study):
                try:
                    study.optimize(runner, n_trials=1, callbacks=[self._on_trial_end])
                except StopWorkers as err:
                    self._stopped(study, str(err), err.trial)
                except optuna.exceptions.UpdateFinishedTrialError as err:  # failed as abandoned meanwhile
                    self._say(f"worker {index}: a trial was finished by another worker meanwhile ({err})")
        except Exception:  # a broken worker stops the study with its traceback instead of dying silently
            self.error = self.error or (f"worker {index} crashed:\n{traceback.format_exc()}", 1)
            self.stop.set()
        finally:
            ended.set()

    def _next(self, study: optuna.Study) -> bool:
        """Whether this worker starts another trial: not stopped, within the timeout, the study not yet full.

        While the study's last trials run elsewhere (other workers, other machines, or a dead worker within its
        grace period) it waits: they may end uncounted (interrupted, abandoned) and leave trials to run.
        """
        s = self.spec
        while not self.stop.is_set():
            if s.timeout is not None and time.monotonic() - self.started > s.timeout:
                return False
            _fail_stale(study)  # abandoned trials are failed (and queued again) first
            done, running = _counts(study)
            if s.n_trials is None or done + running < s.n_trials:
                return True
            if done >= s.n_trials:
                return False
            self.stop.wait(min(WAIT_S, s.heartbeat_interval))
        return False

    def _stopped(self, study: optuna.Study, reason: str, number: int) -> None:
        if reason != "interrupted" and self.error is None:
            self.error = (reason, 2)  # the study file must change
        self.stop.set()
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
        if reason == "interrupted":  # the next run starts with this trial's parameters again, as for a dead worker
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)(study, trial)
        self._say(f"trial {number:>4} FAIL     stopped ({reason}); not counted")

    def _on_trial_end(self, study: optuna.Study, trial: FrozenTrial) -> None:
        with self.lock:
            self.finished.append(trial)
            done, _ = _counts(study)
            left = None if self.spec.n_trials is None else max(self.spec.n_trials - done, 0)
            spent = [t.duration.total_seconds() for t in self.finished if t.duration]
            eta = left * (sum(spent) / len(spent)) / self.spec.workers if left is not None and spent else None
            try:
                best = study.best_trial
            except ValueError:
                best = None
            print(report.progress_line(trial, best, left, eta), flush=True)
            self._write_results(report.trial_rows(study, self.keys), plots=False)

    def _write_results(self, rows: list[dict[str, Any]], plots: bool) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        report.write_csv(rows, self.dir / "trials.csv")
        best = report.best_config(self.study, self.restore)
        if best is not None:
            report.atomic_write(self.dir / "best_config.yaml", best[1])
        if not plots:
            return
        print(report.format_table(rows, self.keys))
        drawn, notes = report.write_plots(self.study, self.dir)
        print(f"trials table: {self.dir / 'trials.csv'}; plots: {', '.join(drawn) or 'none'}")
        for note in notes:
            print(f"  {note}")
        if best is not None:
            trial = best[0]
            print(f"best: trial {trial.number}, {self.spec.metric} = {trial.value:.6g}; "
                  f"refit: cfc-forecast fit --config {self.dir / 'best_config.yaml'}")  # fmt: skip
        print(f"dashboard: optuna-dashboard {redact(self.spec.storage_url)}", flush=True)

    def _say(self, line: str) -> None:
        with self.lock:
            print(line, flush=True)


def _counts(study: optuna.Study) -> tuple[int, int]:
    """(finished trials that count towards n_trials, running trials): complete, pruned, and failed by their own
    error count; a trial failed by an interrupt or by its worker's death does not (it is run again)."""
    done = running = 0
    for t in study.get_trials(deepcopy=False):
        own_failure = t.state == TrialState.FAIL and "failure" in t.user_attrs
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or own_failure:
            done += 1
        elif t.state == TrialState.RUNNING:
            running += 1
    return done, running


def _fail_stale(study: optuna.Study) -> None:
    """Fail the running trials whose heartbeat stopped (their worker died); the storage's callback requeues them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


if __name__ == "__main__":
    sys.exit(main())
