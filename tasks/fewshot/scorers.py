"""The few-shot methods by name: one scorer each over a (shots, seed) cell; adding a method is one registry entry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from coderflow.tasks.fewshot import methods as fm


class FewShotParams(Protocol):
    """The settings scorers read (coderflow.config.FewShotConfig has them): config imports this registry for its
    method names and defaults, so the registry imports no config."""

    search: Literal["grid", "fixed"]
    alpha: float
    beta: float
    gamma: float
    alphas: tuple[float, ...] | None
    betas: tuple[float, ...] | None
    gammas: tuple[float, ...] | None
    tip_search_scale: tuple[float, float]
    tip_search_steps: tuple[int, int]
    refine_steps: int
    coder_init: tuple[float, float]
    coder_search_steps: tuple[int, int]
    coder_search_rounds: int


class Features(Protocol):
    """Image features of one cell: val and test sets (x, labels) and the support set."""

    val: Any
    test: Any
    support: np.ndarray
    support_labels: np.ndarray


@dataclass
class Cell:
    """What every scorer reads for one test set of a cell: the zero-shot logits (original features, every class of
    the source), the support labels one-hot, CODER's texts, Tip-X's class distributions, and `record(method, scores,
    logits, chosen, **extra)` for its predictions.

    The hyper-parameters are chosen on the source's val split once per cell (`fit`) and then applied to each test set:
    the source's own test split and any shifted ones (fewshot.test_datasets). `dist` holds 'val' and 'support' (over
    every source class) for the search, and 'test' and 'support_test' (over the test set's classes) for Tip-X's KL.
    """

    cfg: FewShotParams
    n_classes: int
    zs_val: np.ndarray
    zs_test: np.ndarray
    onehot: np.ndarray
    t_coder: np.ndarray
    dist: dict[str, np.ndarray]
    imo_grid: bool  # an adapter run: both Tip-Adapter variants are searched on IMO's grid (run.py:42-47)
    record: Callable[..., None]
    fitted: dict[str, Any] = field(default_factory=dict)  # method name -> what `fit` chose (shared by test sets)
    device: str = "cpu"  # where the products and searches run (model.device)

    def fit(self, name: str, search: Callable[[], Any]) -> Any:
        """The hyper-parameters of method `name`, searched on val the first time only."""
        if name not in self.fitted:
            self.fitted[name] = search()
        return self.fitted[name]


def _grids(cfg: FewShotParams, betas: Sequence[float], alphas: Sequence[float]) -> dict[str, Any]:
    """Search arguments: the configured grids where given, else the method's own."""
    return {
        "mode": cfg.search, "alpha": cfg.alpha, "beta": cfg.beta, "gamma": cfg.gamma,
        "alphas": cfg.alphas or alphas, "betas": cfg.betas or betas,
    }  # fmt: skip


def prototype(c: Cell, name: str, f: Features) -> None:
    """Nearest class mean of the support features (no text)."""
    c.record(
        name, fm.prototype_logits(f.test.x, f.support, f.support_labels, c.n_classes, device=c.device), logits=False
    )


def tip_adapter(c: Cell, name: str, f: Features) -> None:
    """Tip-Adapter (Tip-Adapter main.py): zero-shot logits + alpha * cache logits, (alpha, beta) from val."""

    def search() -> fm.AlphaBeta:
        betas, alphas = (
            (fm.IMO_BETAS, fm.IMO_ALPHAS) if c.imo_grid else fm.tip_grid(c.cfg.tip_search_scale, c.cfg.tip_search_steps)
        )
        order = "alpha_first" if c.imo_grid else "beta_first"  # IMO run.py:281-282 / Tip-Adapter utils.py:109-110
        return fm.tune_alpha_beta(
            c.zs_val, fm.tip_affinity(f.val.x, f.support, device=c.device), f.support_labels, f.val.labels,
            refine_steps=c.cfg.refine_steps, order=order, device=c.device, **_grids(c.cfg, betas, alphas),
        )  # fmt: skip

    chosen = c.fit(name, search)
    aff_test = fm.tip_affinity(f.test.x, f.support, device=c.device)
    c.record(
        name, c.zs_test + chosen.alpha * fm.cache_logits(aff_test, c.onehot, chosen.beta, device=c.device), True, chosen
    )


def coder_adapter(c: Cell, name: str, f: Features) -> None:
    """CODER-Adapter (CVPR24-CODER classify_few_shot.py): a Tip-Adapter cache keyed by CODER vectors; the searched
    (alpha, beta) is kept only when it beats the initial pair on val."""
    cfg = c.cfg
    keys = fm.l2_normalize(fm.l2_normalize(f.support) @ c.t_coder.T)

    def search() -> tuple[fm.AlphaBeta, fm.AlphaBeta]:
        aff_val = fm.coder_affinity(fm.l2_normalize(f.val.x @ c.t_coder.T), keys, device=c.device)
        labels = (f.support_labels, f.val.labels)
        init_alpha, init_beta = cfg.coder_init
        init = fm.tune_alpha_beta(
            c.zs_val, aff_val, *labels, mode="fixed", alpha=init_alpha, beta=init_beta, device=c.device
        )
        if cfg.search == "fixed":
            chosen = fm.tune_alpha_beta(
                c.zs_val, aff_val, *labels, mode="fixed", alpha=cfg.alpha, beta=cfg.beta, device=c.device
            )
        elif cfg.alphas or cfg.betas:
            chosen = fm.tune_alpha_beta(
                c.zs_val, aff_val, *labels, device=c.device, **_grids(cfg, [init_beta], [init_alpha])
            )
        else:
            chosen = fm.coder_adapter_search(
                c.zs_val,
                aff_val,
                *labels,
                steps=cfg.coder_search_steps,
                rounds=cfg.coder_search_rounds,
                device=c.device,
            )
        if cfg.search == "grid" and init.val_accuracy > chosen.val_accuracy:  # both judged on val only
            chosen = init
        return chosen, init

    chosen, init = c.fit(name, search)
    aff_test = fm.coder_affinity(fm.l2_normalize(f.test.x @ c.t_coder.T), keys, device=c.device)
    scores = c.zs_test + chosen.alpha * fm.cache_logits(aff_test, c.onehot, chosen.beta, device=c.device)
    c.record(name, scores, True, chosen, val_accuracy_init=init.val_accuracy)


def tip_x(c: Cell, name: str, f: Features) -> None:
    """Tip-X (IMO run.py): Tip-Adapter plus gamma * KL-divergence logits between class distributions."""

    def search() -> fm.AlphaBeta:
        aff_val = fm.tip_affinity(f.val.x, f.support, device=c.device)
        kl_val = fm.tip_x_kl_logits(c.dist["val"], c.dist["support"], aff_val, c.onehot, device=c.device)
        return fm.tune_alpha_beta(
            c.zs_val, aff_val, f.support_labels, f.val.labels, val_kl=kl_val, gammas=c.cfg.gammas or fm.IMO_GAMMAS,
            order="alpha_first", device=c.device, **_grids(c.cfg, fm.IMO_BETAS, fm.IMO_ALPHAS),  # IMO run.py:343-351: alpha, beta, gamma
        )  # fmt: skip

    chosen = c.fit(name, search)
    aff_test = fm.tip_affinity(f.test.x, f.support, device=c.device)
    kl_test = fm.tip_x_kl_logits(c.dist["test"], c.dist["support_test"], aff_test, c.onehot, device=c.device)
    scores = fm.tip_x_logits(
        c.zs_test, aff_test, kl_test, f.support_labels, chosen.alpha, chosen.beta, chosen.gamma, device=c.device
    )
    c.record(name, scores, True, chosen)


@dataclass(frozen=True)
class FewShotMethod:
    """A scorer, whether it reads a cache (then it also runs on adapted features, as `<name>_adapted`), and the name
    it is stored under when an adapter run searches it on IMO's grid instead of its own (`imo_name`)."""

    score: Callable[[Cell, str, Features], None]
    cache: bool = True
    imo_name: str | None = None


# The few-shot methods, in the order of the default `fewshot.methods`.
SCORERS: dict[str, FewShotMethod] = {
    "prototype": FewShotMethod(prototype, cache=False),
    "tip_adapter": FewShotMethod(tip_adapter, imo_name="tip_adapter_imo"),
    "coder_adapter": FewShotMethod(coder_adapter),
    "tip_x": FewShotMethod(tip_x),
}


def stored_name(method: str, suffix: str, imo_grid: bool) -> str:
    """The method name a result is stored under: what ran (`tip_adapter_imo`: Tip-Adapter on the original features
    with IMO's grid; `<method>_adapted`: on the adapted features, always IMO's grid in an adapter run)."""
    imo_name = SCORERS[method].imo_name
    return (imo_name if imo_grid and imo_name and not suffix else method) + suffix


def check_methods(names: Sequence[str]) -> None:
    """Refuse names that are not registered few-shot methods (coderflow.config validates `fewshot.methods`)."""
    unknown = [n for n in names if n not in SCORERS]
    if unknown:
        raise ValueError(f"unknown few-shot method(s) {unknown}: choose from {','.join(SCORERS)}")
