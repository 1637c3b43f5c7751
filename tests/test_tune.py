"""Per-metric Optuna tuning (amlx.tuning, tune.py): shared storages, killed workers, pruning, best configs.

Trials fit the real pAML config (configs/aml/paml_minilm_movies.yaml) on the tiny models of
tests/test_aml_training.py; worker tests start real ``tune.py`` processes on one SQLite or journal storage.
The PostgreSQL test needs a PostgreSQL server (tests/postgres.py starts a throwaway one; CI installs it with
scripts/install_postgres.sh): it fails under ``CI=true`` when the server or the driver is missing, and is skipped
elsewhere. Its workers run ``tests/tune_fake.py``: the real ``Tuner`` with a fraction-of-a-second fit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from amlx.tuning import OptunaPruning, TrialSeededTPE, Tuner, direction, make_storage, open_study
from amlx.tuning.config import apply, get_path, load_yaml, set_path
from tests import postgres
from tests.test_aml_training import save_tiny_assets

ROOT = Path(__file__).resolve().parent.parent
PAML = ROOT / "configs" / "aml" / "paml_minilm_movies.yaml"
LAMBDAS = ("lambda_p", "lambda_a", "lambda_inv")


class HangWhenAsked(L.Callback):
    """With ``AMLX_TEST_HANG=<file>`` set, write the trial's log dir to the file and hang in the first batch."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        marker = os.environ.get("AMLX_TEST_HANG")
        if marker:
            Path(marker).write_text(str(trainer.log_dir))
            time.sleep(600)


def tiny_fit_config(assets: dict, path: Path) -> Path:
    """configs/aml/paml_minilm_movies.yaml on the tiny models and data (plus the HangWhenAsked callback)."""
    cfg = apply(load_yaml(PAML), {
        "model.init_args.explained": assets["explained"], "model.init_args.backbone": assets["backbone"],
        "model.init_args.lr": 3e-3, "data.init_args.dataset": assets["data"], "data.init_args.val_size": 8,
        "data.init_args.test_size": 4, "data.init_args.batch_size": 4, "data.init_args.eval_batch_size": 4,
        "trainer.accelerator": "cpu", "trainer.max_epochs": 2, "trainer.limit_train_batches": 2,
        "trainer.limit_val_batches": 1, "trainer.enable_progress_bar": False, "trainer.enable_model_summary": False,
        "trainer.callbacks.MetricValidation.init_args.n_examples": 4,
        "trainer.callbacks.MetricValidation.init_args.batch_size": 4,
    })  # fmt: skip
    cfg["trainer"]["callbacks"].append({"class_path": "tests.test_tune.HangWhenAsked"})
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def fit_config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tune-assets")
    return tiny_fit_config(save_tiny_assets(root), root / "paml_tiny.yaml")


def tune_options(tmp: Path, fit_config: Path, **kw) -> dict:
    opts = dict(metric="comp", fit_config=str(fit_config), study_name="tiny-comp", storage=f"sqlite:///{tmp}/s.db",
                n_trials=4, out_dir=str(tmp / "runs"), wandb="off", heartbeat_interval=1, grace_period=3,
                sampler_options={"n_startup_trials": 2}, best_config=str(tmp / "best.yaml"),
                best_overrides={"trainer.callbacks.MetricCheckpoint.init_args.export_to": str(tmp / "best.ckpt")})  # fmt: skip
    return {**opts, **kw}


def worker(tmp: Path, config: Path, hang: Path | None = None, entry: tuple[str, ...] = (str(ROOT / "tune.py"),),
           **env_vars: str) -> subprocess.Popen:  # fmt: skip
    """A ``tune.py ... run`` worker process (``entry``: another tuning CLI, e.g. ``("-m", "tests.tune_fake")``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", **env_vars}
    env.pop("AMLX_TEST_HANG", None)
    if hang:
        env["AMLX_TEST_HANG"] = str(hang)
    log = open(tmp / f"worker-{time.monotonic_ns()}.log", "w")
    return subprocess.Popen([sys.executable, *entry, "--config", str(config), "run"], cwd=tmp, env=env,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip


def wait_for(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_workers_share_a_study_and_a_killed_workers_trial_fails_and_is_replaced(fit_config, tmp_path, kind):
    storage = f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else f"journal:{tmp_path}/s.journal"
    opts = tune_options(tmp_path, fit_config, storage=storage, n_trials=4)
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump(opts))
    hang = tmp_path / "hanging-trial"
    a, b = worker(tmp_path, config, hang=hang), worker(tmp_path, config)
    try:
        wait_for(hang.exists, 120, "worker A to start a trial")
        a.send_signal(signal.SIGKILL)  # mid-trial: the trial is RUNNING in the storage, its process gone
        a.wait()
        a = worker(tmp_path, config)  # restarted, without the hang
        assert a.wait(timeout=180) == 0 and b.wait(timeout=180) == 0, (tmp_path / "worker logs").parent
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
    study = optuna.load_study(study_name="tiny-comp", storage=make_storage(storage, heartbeat_interval=None))
    trials = study.get_trials()
    killed = int(Path(hang.read_text()).name.removeprefix("trial_"))
    states = {t.number: t.state for t in trials}
    assert states[killed] == TrialState.FAIL  # the heartbeat stopped: declared stale, not left running
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states.values()) == 4
    assert set(states.values()) <= {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}
    assert sorted(states) == list(range(len(trials)))  # unique, consecutive trial numbers
    finished = [t for t in trials if t.state != TrialState.FAIL]
    assert len({tuple(t.params[k] for k in LAMBDAS) for t in finished}) == 4  # no duplicated configuration
    for t in finished:  # each trial was fitted once, by one worker, with its own parameters
        logged = load_yaml(tmp_path / "runs" / "tiny-comp" / f"trial_{t.number:04d}" / "config.yaml")
        assert {k: logged["model"]["init_args"][k] for k in LAMBDAS} == t.params
    assert (tmp_path / "best.yaml").is_file()


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server's URL; it is required under CI=true (fail), optional elsewhere (skip)."""
    why = postgres.missing()
    if why:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why)
        pytest.skip(why)
    with postgres.server() as url:
        yield url


def test_four_workers_on_one_postgresql_study_with_one_killed_mid_trial(postgres_url, tmp_path):
    """Needs PostgreSQL. Exactly n_trials complete, the killed trial ends FAIL, no trial number or parameters twice."""
    n = 8
    opts = tune_options(tmp_path, PAML, storage=postgres_url, study_name="pg-comp", n_trials=n, best_overrides={})
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump(opts))
    fake, fit_s = ("-m", "tests.tune_fake"), "1"
    hang, fits = tmp_path / "hanging-trial", tmp_path / "runs" / "pg-comp" / "fits.log"
    a = worker(tmp_path, config, hang=hang, entry=fake, AMLX_TEST_FIT_S=fit_s)
    others: list[subprocess.Popen] = []
    try:
        wait_for(hang.exists, 300, "worker A to start a trial")  # A created the study and its schema
        others = [worker(tmp_path, config, entry=fake, AMLX_TEST_FIT_S=fit_s) for _ in range(3)]
        wait_for(lambda: len(fits.read_text().splitlines()) >= 3, 300, "two more workers to start trials")
        a.send_signal(signal.SIGKILL)  # mid-trial: RUNNING in the database, its process and connections gone
        a.wait()
        a = worker(tmp_path, config, entry=fake, AMLX_TEST_FIT_S=fit_s)  # restarted, without the hang
        codes = [p.wait(timeout=300) for p in (a, *others)]
        assert codes == [0, 0, 0, 0], sorted(tmp_path.glob("worker-*.log"))
    finally:
        for p in (a, *others):
            if p.poll() is None:
                p.kill()
    study = optuna.load_study(study_name="pg-comp", storage=make_storage(postgres_url, heartbeat_interval=None))
    trials = study.get_trials()
    killed = int(hang.read_text())
    states = {t.number: t.state for t in trials}
    assert states[killed] == TrialState.FAIL  # its heartbeat stopped: declared stale, not left RUNNING
    assert sum(s == TrialState.COMPLETE for s in states.values()) == n
    failed = [t for t in trials if t.state == TrialState.FAIL and t.number != killed]
    assert all(t.user_attrs.get("surplus") and not t.params for t in failed)  # only races lost, never fitted
    assert set(states.values()) <= {TrialState.COMPLETE, TrialState.FAIL}
    assert sorted(states) == list(range(len(trials)))  # unique, consecutive trial numbers
    sampled = [tuple(t.params[k] for k in LAMBDAS) for t in trials if t.params]
    assert len(set(sampled)) == len(sampled) == n + 1  # the n completed and the killed one, all different
    fitted = [line.split(" ", 1) for line in fits.read_text().splitlines()]
    assert sorted(int(num) for num, _ in fitted) == sorted(t.number for t in trials if t.params)
    for num, params in fitted:  # each trial fitted once, by one worker, with its own parameters
        assert yaml.safe_load(params) == study.trials[int(num)].params
    assert (tmp_path / "best.yaml").is_file()


def test_direction_comes_from_the_metric_registry_and_a_lower_is_better_metric_is_minimized(tmp_path):
    assert direction("suff") == "minimize" and direction("comp") == "maximize" and direction("log_odds") == "minimize"
    study = open_study("s", make_storage(f"sqlite:///{tmp_path}/s.db"), "aopc_suff")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    for v in (0.3, 0.1, 0.2):
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=v))
    assert study.best_value == 0.1
    with pytest.raises(ValueError, match="exists for metric 'aopc_suff'"):
        open_study("s", make_storage(f"sqlite:///{tmp_path}/s.db"), "comp")
    with pytest.raises(ValueError, match="registered metrics"):
        Tuner(metric="accuracy", fit_config=str(PAML))


def test_pruning_callback_reports_each_validation_and_raises_trial_pruned():
    study = optuna.create_study(direction="minimize", pruner=optuna.pruners.ThresholdPruner(upper=0.5))
    trial = study.ask()
    cb = OptunaPruning(trial, "suff")

    def validate(value: float, epoch: int, max_epochs: int = 3) -> None:
        trainer = SimpleNamespace(sanity_checking=False, callback_metrics={"val/suff": torch.tensor(value)},
                                  current_epoch=epoch, max_epochs=max_epochs)  # fmt: skip
        cb.on_validation_end(trainer, None)

    validate(0.4, 0)
    assert study.trials[0].intermediate_values == {0: pytest.approx(0.4)}
    with pytest.raises(optuna.TrialPruned):
        validate(0.7, 1)
    assert cb.best == pytest.approx(0.4) and cb.best_step == 0  # lower is better for suff
    last = OptunaPruning(study.ask(), "suff")
    last.on_validation_end(SimpleNamespace(sanity_checking=False, callback_metrics={"val/suff": torch.tensor(0.9)},
                                           current_epoch=2, max_epochs=3), None)  # fmt: skip
    assert last.values == [pytest.approx(0.9)]  # no pruning in the last epoch: the run is over anyway


def test_tpe_is_seeded_per_trial_number():
    def params(seed: int) -> list[dict]:
        study = optuna.create_study(sampler=TrialSeededTPE(seed, n_startup_trials=2))
        study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_float("y", 0, 1), n_trials=4)
        return [t.params for t in study.trials]

    assert params(0) == params(0) and params(0) != params(1)


def test_dotted_overrides_select_list_items_by_index_or_class_name():
    cfg = load_yaml(PAML)
    set_path(cfg, "trainer.callbacks.MetricCheckpoint.init_args.export_to", "amlx:x")
    set_path(cfg, "trainer.logger.1.init_args.name", "w")
    set_path(cfg, "model.init_args.lambda_p", 0.25)
    assert get_path(cfg, "trainer.callbacks.MetricCheckpoint.init_args.export_to") == "amlx:x"
    assert get_path(cfg, "trainer.logger.WandbLogger.init_args.name") == "w"
    assert cfg["model"]["init_args"]["lambda_p"] == 0.25 and cfg["trainer"]["logger"][0]["init_args"]["name"] != "w"
    with pytest.raises(KeyError, match="no item of class 'Nope'"):
        set_path(cfg, "trainer.callbacks.Nope.init_args.x", 1)


def test_trial_config_is_single_process_without_checkpoints_and_follows_the_metric(fit_config, tmp_path):
    tuner = Tuner(**tune_options(tmp_path, fit_config, metric="suff", trial_overrides={"trainer.max_epochs": 5}))
    cfg = tuner._trial_config(7, {"lambda_p": 0.1, "lambda_a": 0.2, "lambda_inv": 0.3})
    classes = [c["class_path"].split(".")[-1] for c in cfg["trainer"]["callbacks"]]
    assert "MetricCheckpoint" not in classes and cfg["trainer"]["enable_checkpointing"] is False
    assert {c["init_args"]["metric"] for c in cfg["trainer"]["callbacks"] if "metric" in c.get("init_args", {})} == {"suff"}
    assert cfg["trainer"]["devices"] == 1 and cfg["trainer"]["max_epochs"] == 5
    assert cfg["model"]["init_args"]["lambda_inv"] == 0.3
    assert cfg["trainer"]["logger"][0]["init_args"]["version"] == "trial_0007"


def test_best_config_trains_with_train_py_on_two_ddp_processes(fit_config, tmp_path):
    """A short study writes the best configuration; `train.py fit` runs it as is (DDP, 2 CPU processes)."""
    opts = tune_options(tmp_path, fit_config, n_trials=2, heartbeat_interval=None)
    Tuner(**opts).run()
    best = load_yaml(tmp_path / "best.yaml")
    study = optuna.load_study(study_name="tiny-comp", storage=opts["storage"])
    assert {k: best["model"]["init_args"][k] for k in LAMBDAS} == study.best_params
    assert (tmp_path / "best.yaml").read_text().startswith("# Tuned for comp (maximize)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(tmp_path / "best.yaml"),
         "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_epochs=1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "MEMBER: 2/2" in out.stderr  # two DDP processes
    ckpt = torch.load(tmp_path / "best.ckpt", weights_only=True)  # the best_overrides' export target
    assert {k: ckpt["hyper_parameters"][k] for k in LAMBDAS} == study.best_params
