"""The rank stage's model: LightGBM's lambdarank over the candidates' features, chosen on
validation fans, exported to one ONNX graph that the service runs on Triton or in-process.

The graph takes every candidate of a batch of fans at once and keeps them apart:

    features  float32 [B, N, F]   ranking.features.FEATURES, the candidates in retrieval order
    score     float32 [B, N]      higher = shown earlier

so Triton batches requests (fans) as it batches the user tower's, and one request's N candidates
stay one item. Trees become ONNX-ML's TreeEnsembleRegressor (onnxmltools' converter) between two
reshapes; Triton's onnxruntime backend and onnxruntime in the service run it alike.

Validation may also decide the towers' own order is better: `passthrough()` is a graph whose
score is minus the retrieval rank, so the service runs one path whichever was chosen.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index.onnx import session
from ranking.features import FEATURES

INPUT, OUTPUT = "features", "score"
OPSET = 15
"""The default domain's opset (onnxmltools converts LightGBM up to 15)."""
CUTOFF = 20
"""NDCG@CUTOFF on held-out validation fans chooses the trees, the setting and the
pass-through."""
GRID = [{"num_leaves": leaves, "min_child_samples": child}
        for leaves in (7, 31) for child in (20, 100)]  # fmt: skip
"""LightGBM settings tried; each keeps the trees that its stop fans' NDCG chose."""
RETRIEVAL_RANK = FEATURES.index("retrieval_rank")


@dataclass
class Fitted:
    """What `fit` chose and the figures it chose by (all on validation fans)."""

    booster: object | None  # lightgbm.Booster; None = the retrieval order passes through
    info: dict


FOLDS = 5
"""Validation fans are cut into FOLDS; each setting is fit FOLDS times, each fold held out
once, so every fan's list scores the choice (one 80/20 cut scored it on a fifth of them, and
on Last.fm the settings it chose moved test NDCG@20 by 2 %)."""


def fit(x: np.ndarray, y: np.ndarray, seed: int = 0, log=print, names=FEATURES) -> Fitted:
    """Lambdarank chosen by FOLDS-fold cross-validation over the fans with a positive among
    their candidates: each GRID setting is fit on the other folds with early stopping on the
    held-out one; the setting with the best mean held-out NDCG@CUTOFF wins, and whether to rank
    at all (against the retrieval order on the same fans). The winner is refit on every fan
    with its folds' mean number of trees. x [B, N, F] features, y [B, N] labels (0/1).
    `names`: the columns of x; a benchmark trying added columns names them (the served graph
    takes FEATURES)."""
    fans = _shuffled_fans(y, seed)
    folds = _folds(fans)
    towers = float(np.mean([list_ndcg(y[held], CUTOFF) for held in folds]))
    score, params, trees, scores = _best_setting(x, y, folds, towers, seed, log, names)
    info = {"fit_fans": len(fans), "stop_fans": len(fans), "folds": FOLDS, **params,
            "trees": trees, f"stop_ndcg@{CUTOFF}": score, f"fold_ndcg@{CUTOFF}": scores,
            f"stop_ndcg@{CUTOFF}_retrieval": towers, "chosen": "lambdarank"}  # fmt: skip
    if score <= towers:  # the trees do not beat the order they were given: keep it
        info["chosen"] = "retrieval order"
        return Fitted(None, info)
    booster = _refit(x, y, fans, params, seed, trees, names)
    info["importance_gain"] = dict(
        zip(names, booster.feature_importance("gain").tolist(), strict=True)
    )
    return Fitted(booster, info)


def _shuffled_fans(y: np.ndarray, seed: int) -> np.ndarray:
    """The fans with a positive among their candidates, in the seeded order the folds are cut
    from; fewer than 10 are refused with what to change."""
    fans = np.random.default_rng(seed).permutation(np.flatnonzero(y.any(1)))
    if len(fans) < 10:
        raise ValueError(
            f"{len(fans)} fans have a validation creator among their candidates; the ranker "
            f"needs at least 10 (carve a larger validation split, or raise the candidates N)"
        )
    return fans


def _best_setting(x, y, folds, towers: float, seed: int, log, names):
    """(mean held-out NDCG, params, trees, per-fold NDCGs) of the GRID setting that scores
    best across `folds` (the first on a tie); each is logged beside the retrieval order's
    `towers` NDCG so a run shows how far the trees got."""
    best = None
    for params in GRID:
        scores, trees = _cross_validate(x, y, folds, params, seed, names)
        log(f"  ranker {params}: held-out NDCG@{CUTOFF} {np.mean(scores):.4f} over {FOLDS} "
            f"folds ({', '.join(f'{s:.4f}' for s in scores)}; {trees} trees; retrieval order "
            f"{towers:.4f})")  # fmt: skip
        if best is None or np.mean(scores) > best[0]:
            best = (float(np.mean(scores)), params, trees, scores)
    return best


def _refit(x, y, fans: np.ndarray, params: dict, seed: int, trees: int, names):
    """The chosen setting fit on every fan with `trees` trees (its folds' mean), no early
    stopping: no fan is left over to stop on."""
    model = lambdarank(params, seed, trees)
    n, f = x.shape[1], x.shape[2]
    model.fit(x[fans].reshape(-1, f), y[fans].ravel().astype(np.int32), group=[n] * len(fans),
              feature_name=list(names))  # fmt: skip
    return model.booster_


def _folds(fans: np.ndarray) -> list[np.ndarray]:
    """FOLDS contiguous cuts of the permuted fans; the last is the 80/20 cut's held-out fifth
    (ranking.dcn's stop fans), so a network can be compared with fold FOLDS - 1."""
    cuts = [len(fans) * k // FOLDS for k in range(FOLDS)] + [len(fans)]
    cuts[-2] = int(0.8 * len(fans))
    return [fans[a:b] for a, b in itertools.pairwise(cuts)]


def _cross_validate(x, y, folds, params: dict, seed: int, names) -> tuple[list[float], int]:
    """Held-out NDCG@CUTOFF of each fold and the folds' mean best number of trees."""
    scores, trees = [], []
    for k, held in enumerate(folds):
        rest = np.concatenate([f for i, f in enumerate(folds) if i != k])
        model = _lambdarank(x[rest], y[rest], x[held], y[held], params, seed, names)
        scores.append(float(model.best_score_["valid_0"][f"ndcg@{CUTOFF}"]))
        trees.append(max(int(model.best_iteration_), 1))
    return scores, round(float(np.mean(trees)))


def lambdarank(params: dict, seed: int = 0, trees: int = 2000):
    """The unfitted LGBMRanker every ranker here starts from: GRID's `params` on the house
    learning rate and row and column sampling; `trees` at most (early stopping picks fewer)."""
    import lightgbm

    return lightgbm.LGBMRanker(objective="lambdarank", n_estimators=trees, learning_rate=0.03,
                               subsample=0.8, subsample_freq=1, colsample_bytree=0.9,
                               random_state=seed, verbose=-1, **params)  # fmt: skip


def _lambdarank(x, y, x_stop, y_stop, params: dict, seed: int, names=FEATURES):
    import lightgbm

    n, f = x.shape[1], x.shape[2]
    model = lambdarank(params, seed)
    with warnings.catch_warnings():  # 4.7 renames eval_set; the old name still works
        warnings.filterwarnings("ignore", message=".*eval_set.*")
        model.fit(
            x.reshape(-1, f), y.ravel().astype(np.int32), group=[n] * len(x),
            eval_set=[(x_stop.reshape(-1, f), y_stop.ravel().astype(np.int32))],
            eval_group=[[n] * len(x_stop)], eval_at=[CUTOFF], feature_name=list(names),
            callbacks=[lightgbm.early_stopping(100, verbose=False)],
        )  # fmt: skip
    return model


def list_ndcg(y: np.ndarray, k: int) -> float:
    """Mean NDCG@k of lists in their given order, ideal within the list (LightGBM's ndcg@k),
    over the lists with a positive."""
    y = y[y.any(1)].astype(np.float64)
    if len(y) == 0:
        return 0.0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (y[:, :k] * discounts[: y.shape[1]]).sum(1)
    ideal = (-np.sort(-y, axis=1)[:, :k] * discounts[: y.shape[1]]).sum(1)
    return float((dcg / ideal).mean())


def predict(booster, x: np.ndarray) -> np.ndarray:
    """The booster's scores [B, N] for features [B, N, F] (what the ONNX graph reproduces)."""
    return booster.predict(x.reshape(-1, x.shape[2])).reshape(x.shape[:2]).astype(np.float32)


def load_trees(path: str | Path):
    """The trees a ranker was exported from (ranking.store.TREES, LightGBM's text format)."""
    import lightgbm

    return lightgbm.Booster(model_file=str(path))


def contributions(booster, x: np.ndarray) -> np.ndarray:
    """Each feature's share of each score [N, F] for one list's features [N, F] (LightGBM's
    TreeSHAP: the shares and a constant sum to the score), less the list's mean share: what
    lifts or sinks a creator against the other candidates, since the stage only orders them."""
    shares = booster.predict(x, pred_contrib=True)[:, : x.shape[1]]
    return (shares - shares.mean(0, keepdims=True)).astype(np.float32)


def to_onnx(booster):
    """The booster as the rank stage's graph: [B, N, F] → reshape [B·N, F] → trees → [B, N]."""
    import onnxmltools
    from onnx import TensorProto, helper
    from onnxmltools.convert.common.data_types import FloatTensorType

    f = len(FEATURES)
    trees = onnxmltools.convert_lightgbm(
        booster, initial_types=[("rows", FloatTensorType([None, f]))], target_opset=OPSET,
    )  # fmt: skip
    inner = trees.graph
    flat_out = inner.output[0].name
    nodes = [
        helper.make_node("Shape", [INPUT], ["shape3"]),
        helper.make_node("Slice", ["shape3", "zero", "two"], ["shape2"]),
        helper.make_node("Reshape", [INPUT, "rows_shape"], ["rows"]),
        *inner.node,
        helper.make_node("Reshape", [flat_out, "shape2"], [OUTPUT]),
    ]
    constants = [
        helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
        helper.make_tensor("two", TensorProto.INT64, [1], [2]),
        helper.make_tensor("rows_shape", TensorProto.INT64, [2], [-1, f]),
    ]
    ml = {o.domain: o.version for o in trees.opset_import}.get("ai.onnx.ml", 1)
    return _model(nodes, [*constants, *inner.initializer], "lambdarank", ml)


def passthrough():
    """The graph validation chooses when no ranker beats the retrieval order: minus the
    retrieval rank (log1p of it, a monotone copy), so the order stays the towers'."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Gather", [INPUT, "rank_column"], ["rank"], axis=2),
        helper.make_node("Neg", ["rank"], [OUTPUT]),
    ]
    column = helper.make_tensor("rank_column", TensorProto.INT64, [], [RETRIEVAL_RANK])
    return _model(nodes, [column], "retrieval order")


def _model(nodes, initializers, name: str, ml_opset: int = 1):
    from onnx import TensorProto, checker, helper

    x = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", "n", len(FEATURES)])
    y = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", "n"])
    graph = helper.make_graph(nodes, f"towerline_ranker ({name})", [x], [y], initializers)
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ml_opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="towerline.ranking")
    model.ir_version = min(model.ir_version, 9)  # what Triton 2.51's onnxruntime reads
    checker.check_model(model)
    return model


class OnnxRanker:
    """The exported ranker in this process (onnxruntime): the service's fallback when Triton
    does not answer, and the reference the served ranker is tested against."""

    def __init__(self, path: str | Path, threads: int = 1):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"ranker {self.path} not found; train one with `python -m ranking train`"
            )
        self.session = session(self.path, threads)

    def score(self, x: np.ndarray) -> np.ndarray:
        """[B, N] scores for features [B, N, F]."""
        if x.ndim != 3 or x.shape[2] != len(FEATURES):
            raise ValueError(f"ranker features have shape {list(x.shape)}; it takes [B, N, "
                             f"{len(FEATURES)}] (ranking.features.FEATURES)")  # fmt: skip
        feed = {INPUT: np.ascontiguousarray(x, dtype=np.float32)}
        return self.session.run([OUTPUT], feed)[0]

    def encode(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """`score` under the name the serving providers call (inputs by name, as on Triton)."""
        return self.score(inputs[INPUT])
