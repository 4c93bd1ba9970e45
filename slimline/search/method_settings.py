"""The search methods' own settings, torch-free: the API checks a job's ``method_settings``
with these before the job is queued, and the API process never imports torch.

Each method module uses its class as ``settings_cls``; ``METHOD_SETTINGS`` maps a method's
name to it (a test checks it against the registry). ``MethodSettings.from_dict`` refuses
unknown names, values of the wrong JSON type and values out of range, naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass

from slimline.errors import InvalidOption
from slimline.search.options import BITS
from slimline.search.settings import MethodSettings

# relative squared error past which the Fisher estimator measures an option
# (`search.estimators`, module doc)
MEASURE_ABOVE = 0.1
SAMPLERS = ("tpe", "nsga2")  # optuna's samplers
SOLVERS = ("exact", "greedy", "milp")  # the knapsack's solvers (`search.allocation`)
# the damage estimators' names (`search.estimators`, a registry that needs torch; a test
# checks that the two agree)
ESTIMATOR_NAMES = ("fisher", "hessian", "loss")


@dataclass(frozen=True)
class ConstrainedSettings(MethodSettings):
    estimator: str = "fisher"  # damage estimator: fisher | hessian | loss
    # fisher only: options whose relative squared error exceeds this have their damage
    # measured where the allocation picks them (`FisherEstimator`); 0 measures none
    measure_above: float = MEASURE_ABOVE
    solver: str = "exact"  # knapsack solver: exact | greedy
    calibration_batches: int = 8  # mini-batches in one scoring pass
    calibration_batch_size: int = 64
    rho: float = 5e-3  # ADMM penalty weight on ||W - V + U||^2 (summed over every weight)
    admm_fraction: float = 0.5  # share of the fine-tuning steps spent in the ADMM phase
    # re-score + re-solve this many times during the ADMM phase; 0 (the default): no ADMM
    # phase, every step trains the compressed model. ADMM as Yang et al. run it (3 here) lost
    # 8 of 13 comparisons at equal steps (lenet300 300 steps: 64x 97.85 -> 98.58% without,
    # 128x 94.03 -> 94.87, 256x 51.15 -> 79.47; 128x at 10 and 30 epochs: 98.57 -> 98.96,
    # 99.12 -> 99.48; bytegpt 16x at 200 steps, 1 and 5 epochs: 95.11 -> 97.52, 99.44 ->
    # 101.98, 105.82 -> 109.00) and won 5 (bytegpt 32x at 200 steps, 1 and 5 epochs: 69.61 ->
    # 73.60, 83.28 -> 89.67, 96.96 -> 99.24; lenet5 256x at 4 and 16 epochs: 97.71 -> 98.41,
    # 98.90 -> 99.35; bench/FINDINGS.md; since then it lost at bytegpt 32x at 200 steps too,
    # 79.16 against 86.01% over seeds 0-2): half the steps train a dense W pulled towards the
    # plan instead of the compressed model itself.
    projections: int = 0
    # measure removing each branch's layers together (a block's attention, its MLP:
    # `branches.removal_branches`) as one more knapsack option, one forward pass each
    joint_removal: bool = True
    # Probing (`search.probes`): besides the knapsack's plan, re-solve with every sparse
    # option's damages times ``probe_factor``, with unstructured damages divided by it, and
    # with the damages of each of ``probe_groups`` runs of layers times it; then the
    # knapsack's plan with its largest layer unstructured in place, the largest layer's
    # damages divided by it, and that layer a step down and up in bytes, the rest re-solved;
    # give each distinct plan ``probe_steps`` steps of the job's
    # fine-tuning and keep the lowest loss on a sample of training examples; all probes
    # within ``probe_share`` of the fine-tuning steps. Not with the ADMM phase (it re-solves
    # the plan itself). 0 groups: off. bench/FINDINGS.md has what it changed.
    probe_groups: int = 4
    probe_factor: float = 2.0
    probe_steps: int = 30
    probe_share: float = 0.5
    # Scoring and probing together within this share of the fine-tuning time (estimated from
    # the first probe's pace; `probes.ProbeClock`): probes that would pass it are not run, and
    # none when two do not fit. 0.25: the search adds at most a quarter to fine-tuning's
    # time (README "Benchmarks"). None: no time limit (probes within probe_share alone).
    search_share: float | None = 0.25
    # Distillation where the gap is small: where the kept plan's probe loss lies within
    # ``distill_gap`` nats of the dense model's on the probes' sample (either side), the
    # fine-tuning distils from the dense model with weight ``distill_weight``; else none.
    # Close to its teacher a student learns from the soft targets; far above it, it cannot
    # follow them (the capacity gap) and they pull it off the task; far below it, the
    # teacher is the weaker model (bytegpt's dense model, which more training alone betters).
    # Measured over 15 seeds (bench/FINDINGS.md): lenet300 8x 99.93 -> 99.99%, lenet5 32x
    # 99.91 -> 99.94% (gaps -0.003..+0.005); distilling lenet300 32x (gap 0.03) cost 0.10
    # and 64-256x 0.35-3.1 points, bytegpt 8x (gap -0.10) 0.42. Only where the fine-tuning
    # settings leave ``distill`` unset (a weight set there, 0 included, holds throughout) and
    # a probe ran; the probes themselves never distil then. None: never.
    distill_gap: float | None = 0.02
    distill_weight: float = 0.5

    def validate(self, field: str) -> None:
        checks = (
            ("estimator", self.estimator in ESTIMATOR_NAMES, " | ".join(ESTIMATOR_NAMES)),
            ("solver", self.solver in SOLVERS, " | ".join(SOLVERS)),
            ("measure_above", self.measure_above >= 0, "0 or more"),
            ("probe_groups", self.probe_groups >= 0, "0 or more"),
            ("probe_factor", self.probe_factor > 1.0, "above 1"),
            ("probe_steps", self.probe_steps >= 1, "1 or more"),
            ("probe_share", 0.0 <= self.probe_share <= 1.0, "in [0, 1]"),
            (
                "search_share",
                self.search_share is None or self.search_share > 0,
                "above 0, or null",
            ),
            (
                "distill_gap",
                self.distill_gap is None or self.distill_gap >= 0,
                "0 or more, or null",
            ),
            ("distill_weight", 0.0 < self.distill_weight <= 1.0, "in (0, 1]"),
        )
        self.check_ranges(field, checks)


@dataclass(frozen=True)
class UniformSettings(MethodSettings):
    tries: int = 8  # fitting recipes compared on the calibration sample (most bytes first)
    calibration_examples: int = 512  # a language model's: 1/8 as many sequences


@dataclass(frozen=True)
class BitShareSettings(MethodSettings):
    search_steps: int = 100  # optimizer steps of one gate search (one search per lambda tried)
    lr: float = 1e-3  # Adam lr of weights, clips and every other model parameter while searching
    gate_lr: float = 1e-2  # Adam lr of the gate thresholds (which live in [0, 1])
    group_rows: int = 4  # output channels per pruning gate (the paper: 4 on CIFAR ResNets)
    batch_size: int = 64  # search mini-batch
    lambda_min: float = 1e-3  # the lambda search's bracket on the byte penalty's weight
    lambda_max: float = 10.0
    lambda_iters: int = 5  # most searches the lambda search runs
    tolerance: float = 0.1  # stop once the gated bytes land in [(1 - tolerance) budget, budget]
    calib_batches: int = 8  # Fisher scoring of the projection's candidates
    calib_batch_size: int = 64
    distance_penalty: float = 0.5  # damage per step from the gated config, x mean gated damage

    def __post_init__(self) -> None:
        positive = (
            "search_steps",
            "lr",
            "gate_lr",
            "group_rows",
            "batch_size",
            "lambda_min",
            "lambda_iters",
            "calib_batches",
            "calib_batch_size",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise InvalidOption(
                    f"bitshare setting {name} must be positive, got {getattr(self, name)!r}",
                    field=name,
                    value=getattr(self, name),
                )
        if not self.lambda_max > self.lambda_min:
            raise InvalidOption(
                f"bitshare lambda_max ({self.lambda_max!r}) must exceed lambda_min "
                f"({self.lambda_min!r})",
                field="lambda_max",
                value=self.lambda_max,
            )
        if not 0 <= self.tolerance < 1:
            raise InvalidOption(
                f"bitshare tolerance must be in [0, 1), got {self.tolerance!r}",
                field="tolerance",
                value=self.tolerance,
            )
        if self.distance_penalty < 0:
            raise InvalidOption(
                f"bitshare distance_penalty must be >= 0, got {self.distance_penalty!r}",
                field="distance_penalty",
                value=self.distance_penalty,
            )


@dataclass(frozen=True)
class SQuantizerSettings(MethodSettings):
    bits: int = 4  # bit-width of every kept value (per-channel scales); 16 = fp16
    dense_fraction: float = 1 / 3  # share of the fine-tuning steps trained dense first

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise InvalidOption(
                f"squantizer bits {self.bits!r} is not one of {', '.join(map(str, BITS))}",
                field="bits",
                value=self.bits,
            )
        if not 0.0 <= self.dense_fraction < 1.0:
            raise InvalidOption(
                f"squantizer dense_fraction must be in [0, 1), got {self.dense_fraction!r}",
                field="dense_fraction",
                value=self.dense_fraction,
            )


@dataclass(frozen=True)
class OptunaSettings(MethodSettings):
    trials: int = 12  # trials this call adds to the study (a shared study grows by each call's)
    sampler: str = "tpe"  # tpe | nsga2
    proxy_steps: int = 30  # QAT steps per trial, from the dense weights
    proxy_lr: float = 1e-3  # Adam learning rate of the proxy fine-tune
    proxy_batch_size: int = 64
    val_samples: int = 512  # validation examples the proxy loss is measured on
    estimator: str = "fisher"  # damage estimator of the scoring pass (Pareto filter, repair)
    calibration_batches: int = 8  # scoring pass: mini-batches of calibration data
    calibration_batch_size: int = 64
    storage: str | None = None  # None: in-memory study; else an RDB URL shared by workers
    # None: derived from model, data, budget and search space. Jobs sharing an explicit name
    # must have the same search space (Optuna refuses a parameter whose choices change).
    study_name: str | None = None
    seed: int | None = None  # sampler seed; None: the job's seed

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATOR_NAMES:
            raise InvalidOption(
                f"optuna estimator {self.estimator!r} is not one of {', '.join(ESTIMATOR_NAMES)}",
                field="estimator",
                value=self.estimator,
            )
        if self.sampler not in SAMPLERS:
            raise InvalidOption(
                f"optuna sampler {self.sampler!r} is not one of {', '.join(SAMPLERS)}",
                field="sampler",
                value=self.sampler,
            )
        for name in ("trials", "proxy_steps", "proxy_batch_size", "val_samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidOption(
                    f"optuna {name} must be a positive integer, got {value!r}",
                    field=name,
                    value=value,
                )
        if not self.proxy_lr > 0:
            raise InvalidOption(
                f"optuna proxy_lr must be positive, got {self.proxy_lr!r}",
                field="proxy_lr",
                value=self.proxy_lr,
            )


METHOD_SETTINGS: dict[str, type[MethodSettings]] = {
    "constrained": ConstrainedSettings,
    "uniform": UniformSettings,
    "bitshare": BitShareSettings,
    "squantizer": SQuantizerSettings,
    "optuna": OptunaSettings,
}
