"""Budgeted training: the plan follows the measured costs both ways, the lr never jumps, the budget is
spent; model selection by a moving average; the budget recipe and the flags that override it.

The runs here replace the training step and the validation with stubs that advance a simulated
clock (``veloxseg.training.budget.read_clock``), so nothing waits and nothing is timed for real.
"""

import json
import subprocess
import sys

import pytest
import torch

from test_data import make_tiny_dataset
from veloxseg import runtime
from veloxseg.checkpoint import load_checkpoint
from veloxseg.cli import budgeted_run, build_parser
from veloxseg.cli.train import build_config
from veloxseg.training import ModelTrainer, TrainConfig, Trainer, budget, selection, trainer as trainer_module
from veloxseg.training.budget_recipe import BUDGET_RECIPE
from veloxseg.training.schedule import WarmupCosine, build_scheduler

BUDGET_S = 300.0
ITER = 4  # steps per epoch


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "Dataset001_Tiny", n_cases=4)


class SimulatedRun:
    """A fake clock; training steps cost ``slow`` seconds for the first ``slow_steps`` steps, then 1 s."""

    def __init__(self, monkeypatch, slow: float = 10.0, slow_steps: int = 3 * ITER,
                 dice: list[float] | None = None) -> None:
        self.t = 0.0
        self.steps = 0
        self.lrs: list[float] = []
        self.validations = 0
        self.dice = dice
        run = self
        monkeypatch.setattr(budget, "read_clock", lambda kind: run.t)
        monkeypatch.setattr(trainer_module, "plot_curves", lambda *a, **k: None)  # matplotlib: slow, not tested here

        def train_step(self, batch):
            run.lrs.append(self.optimizer.param_groups[0]["lr"])
            self.optimizer.step()  # no gradients: changes nothing, but the lr scheduler sees a step taken
            run.t += slow if run.steps < slow_steps else 1.0
            run.steps += 1
            return {"train_loss": 1.0}

        def validate(self):
            run.t += 1.0
            value = run.dice[run.validations] if run.dice else 0.5
            run.validations += 1
            return {"val_dice_lesion": value, "val_dice": value}

        monkeypatch.setattr(Trainer, "train_step", train_step)
        monkeypatch.setattr(Trainer, "validate", validate)


def ready(trainer: Trainer) -> Trainer:
    """Initialised, with the data loader replaced by empty batches (the stub steps do not read them)."""
    trainer.initialize()
    trainer.train_loader = [{}] * (trainer.config.iterations or 1)
    return trainer


def budget_config(dataset, out, **kw) -> TrainConfig:
    base = dict(patch_size=[32, 32, 32], batch_size=1, val_fraction=0.25, val_every=1, threads=1, progress=False,
                iterations=ITER, epochs=10_000, lr=2e-3, min_lr=1e-5, warmup_epochs=1, max_minutes=BUDGET_S / 60,
                budget_clock="cpu")
    return TrainConfig(dataset=str(dataset), output=str(out), **{**base, **kw})


def test_fit_plan_counts_validations_and_fills_the_rest_with_a_shorter_epoch():
    assert budget.validations_in(0, 5, 2) == 3  # epochs 2, 4 and the last one (5)
    assert budget.validations_in(3, 1, 2) == 1 and budget.validations_in(3, 0, 2) == 0
    # epochs of 10 steps at 1 s plus a 5 s validation: 6 fit in 100 s, then 5 steps (+ its validation)
    plan = budget.fit_plan(100.0, 1.0, 0.0, 5.0, 10, epochs_done=2, steps_done=20, val_every=1, validates=True,
                           max_epochs=1000)
    assert plan == budget.Plan(next_steps=10, total_steps=85, total_epochs=9)
    # validation every 3rd epoch: cheaper epochs, more of them
    assert budget.fit_plan(120.0, 1.0, 0.0, 5.0, 10, 0, 0, 1, True, 1000) == budget.Plan(10, 80, 8)
    assert budget.fit_plan(120.0, 1.0, 0.0, 5.0, 10, 0, 0, 3, True, 1000) == budget.Plan(10, 100, 10)
    # the cap holds, and nothing fits: stop
    assert budget.fit_plan(1e6, 1.0, 0.0, 0.0, 10, 2, 20, 1, True, max_epochs=5).total_epochs == 5
    assert budget.fit_plan(3.0, 1.0, 0.0, 5.0, 10, 2, 20, 1, True, 1000).next_steps == 0
    # the median of recent epochs, the first one (warm-up) left out
    assert budget.recent_median([50.0, 1.0, 1.0, 3.0], skip_first=True) == 1.0


def test_lr_refit_keeps_the_current_lr_and_state_survives_a_checkpoint():
    cos = WarmupCosine(epochs=10, warmup=2, base_lr=1e-2, min_lr=1e-5)
    cos.to_steps(steps_per_epoch=5, warmup_steps=5)
    assert cos.epochs == 50 and cos.per_step
    before = cos.lr(20)
    cos.refit(20, 200)  # the plan grows: the lr of step 20 stays, the decay slows down
    assert cos.lr(20) == pytest.approx(before, rel=1e-12)
    assert cos.lr(21) < cos.lr(20) and cos.lr(199) == pytest.approx(1e-5)
    mid = cos.lr(60)
    cos.refit(60, 80)  # the plan shrinks: still no jump
    assert cos.lr(60) == pytest.approx(mid, rel=1e-12) and cos.lr(79) == pytest.approx(1e-5)

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    sched = build_scheduler(opt, 10, 2, 1e-2, 1e-5)
    sched.lr_lambdas[0].to_steps(5, 5)
    sched.lr_lambdas[0].refit(7, 33)
    state = sched.state_dict()
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    fresh = build_scheduler(opt2, 10, 2, 1e-2, 1e-5)
    fresh.load_state_dict(state)
    assert [fresh.lr_lambdas[0].lr(t) for t in range(40)] == [sched.lr_lambdas[0].lr(t) for t in range(40)]
    # an epoch-counted schedule without re-fits is the paper's formula, unchanged
    plain = WarmupCosine(300, 10, 2.5e-4, 6e-6)
    assert plain.lr(10) == pytest.approx(2.5e-4) and plain.lr(299) == pytest.approx(6e-6)


def test_slow_first_epochs_the_plan_recovers_and_the_budget_is_spent(tiny_dataset, tmp_path, monkeypatch):
    sim = SimulatedRun(monkeypatch)  # the first 3 epochs 10x slower, as on a loaded machine
    trainer = ready(ModelTrainer(budget_config(tiny_dataset, tmp_path / "run")))
    summary = trainer.run_training()
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    plans = [p["planned_epochs"] for p in info["budget"]["plans"]]
    assert min(plans) <= 10  # the slow epochs shortened the plan ...
    assert summary["epochs"] >= 30 and summary["epochs"] > 2 * min(plans)  # ... and it grew back
    used = info["budget"]["used_seconds"]
    assert 0.9 * BUDGET_S <= used <= BUDGET_S and sim.t == pytest.approx(used)
    assert summary["steps"] == sim.steps and info["steps"] == sim.steps

    # the lr: warm-up over the first epoch, then never up, never a jump, and at the floor at the end
    lrs = sim.lrs[ITER:]
    drops = [a - b for a, b in zip(lrs, lrs[1:])]
    assert min(drops) >= -1e-12, "the lr went up after warm-up"
    assert max(drops) < 0.1 * 2e-3
    assert lrs[-1] < 0.05 * 2e-3
    log = (tmp_path / "run" / "training_log.txt").read_text()
    assert "time budget: " in log and "planned" in log


def test_a_resumed_budgeted_run_continues_budget_and_lr(tiny_dataset, tmp_path, monkeypatch):
    sim = SimulatedRun(monkeypatch, slow_steps=0)
    half = dict(max_minutes=BUDGET_S / 2 / 60)
    first = ready(Trainer(budget_config(tiny_dataset, tmp_path / "run", **half)))
    first.run_training(stop_after=8)
    lr_next = first.optimizer.param_groups[0]["lr"]
    spent = first.history[-1]["budget_seconds"]
    steps_before = sim.steps
    resumed = ready(Trainer(budget_config(tiny_dataset, tmp_path / "run", **half), resume=True))
    summary = resumed.run_training()
    assert sim.lrs[steps_before] == pytest.approx(lr_next, rel=1e-12)  # the schedule goes on where it stopped
    assert spent > 0 and 0.9 * BUDGET_S / 2 <= resumed.budget.spent() <= BUDGET_S / 2  # one budget, both parts
    assert summary["epochs"] > 8 and resumed.history[0]["epoch"] == 1


def test_few_validation_cases_select_by_moving_average(tiny_dataset, tmp_path, monkeypatch):
    dice = [0.1, 0.9, 0.2, 0.5, 0.6, 0.7]  # one lucky validation at epoch 2
    assert selection.resolve_rule("auto", 1) == "ema" and selection.resolve_rule("auto", 5) == "best"
    assert selection.ema_update(None, 0.5) == 0.5 and selection.ema_update(0.5, 1.0) == pytest.approx(0.55)
    with pytest.raises(ValueError):
        selection.resolve_rule("median", 3)

    SimulatedRun(monkeypatch, dice=dice)
    cfg = budget_config(tiny_dataset, tmp_path / "ema", max_minutes=None, epochs=len(dice), iterations=1)
    summary = ready(ModelTrainer(cfg)).run_training()
    best = load_checkpoint(tmp_path / "ema" / "checkpoint_best.pt")
    ema = [0.1, 0.18, 0.182, 0.2138, 0.25242, 0.297178]
    assert summary["best_epoch"] == 6 and best["metrics"]["epoch"] == 6
    assert best["metrics"]["val_dice_ema"] == pytest.approx(ema[-1])
    assert "moving average" in best["metrics"]["selection"]
    info = json.loads((tmp_path / "ema" / "run_info.json").read_text())
    assert "moving average" in info["selection"] and info["best_val_dice"] == pytest.approx(0.7)
    assert "moving average" in (tmp_path / "ema" / "training_log.txt").read_text()
    rows = (tmp_path / "ema" / "metrics.csv").read_text().splitlines()
    assert "val_dice_ema" in rows[0]

    SimulatedRun(monkeypatch, dice=dice)
    cfg = budget_config(tiny_dataset, tmp_path / "best", max_minutes=None, epochs=len(dice), iterations=1,
                        selection="best")
    assert ready(ModelTrainer(cfg)).run_training()["best_epoch"] == 2


def config_from(argv):
    return build_config(build_parser().parse_args(["train", "DATA", "--output", "RUN", *argv]))


def test_budget_recipe_fills_what_the_flags_leave_open():
    auto = config_from(["--time-budget", "8"])
    for key, value in BUDGET_RECIPE.items():
        assert getattr(auto, key) == value, key
    assert auto.budget_recipe == BUDGET_RECIPE and auto.max_minutes == 8

    given = config_from(["--time-budget", "8", "--lr", "1e-3", "--iterations", "7", "--val-every", "3",
                         "--epochs", "20", "--patch-size", "32", "32", "64"])
    assert (given.lr, given.iterations, given.val_every, given.epochs) == (1e-3, 7, 3, 20)
    assert given.patch_size == [32, 32, 64] and given.patch_voxels is None
    assert set(given.budget_recipe) == {"min_lr", "warmup_epochs"}
    assert config_from(["--time-budget", "8", "--preset", "hecktor"]).patch_voxels is None

    plain = config_from(["--epochs", "3"])  # no budget: today's meaning
    assert (plain.epochs, plain.iterations, plain.lr, plain.val_every) == (3, None, 2.5e-4, 5)
    assert plain.budget_recipe == {} and plain.patch_voxels is None


def test_budgeted_runs_ask_openmp_to_wait_passively(monkeypatch):
    assert budgeted_run(["train", "D", "-o", "R", "--time-budget", "8", "--budget-clock", "cpu"])
    assert budgeted_run(["train", "D", "--max-minutes=2", "--budget-clock=cpu"])
    # a wall-clock budget, the demo and a plain run keep OpenMP's default (spinning is faster on an idle machine)
    assert not budgeted_run(["train", "D", "--time-budget", "8"]) and not budgeted_run(["demo"])
    assert not budgeted_run(["train", "D", "--epochs", "8", "--budget-clock", "cpu"])
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert runtime.prefer_passive_omp_wait().startswith("default")  # torch is loaded in this process: too late
    assert "OMP_WAIT_POLICY" not in __import__("os").environ
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert runtime.prefer_passive_omp_wait() == "ACTIVE (from the environment)"
    # the command line does not load torch before it can set the policy
    code = ("import sys, os; from veloxseg.cli import main\n"
            "import veloxseg.cli as c; c.build_parser = lambda: (_ for _ in ()).throw(SystemExit(0))\n"
            "try:\n    main(['train', 'D', '-o', 'R', '--time-budget', '1', '--budget-clock', 'cpu'])\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.split() == ["PASSIVE", "False"], out.stderr[-2000:]
