"""Pairing schedules of collaborative N-video sampling: which video attends to which at every denoising step.

CVD's synchronization modules see two videos at a time. To denoise N videos, every *evaluation* (one noise
estimate for every video) runs a set of video pairs; each pair gives two UNet rows that attend to each other
(video ``a`` conditioned on ``b`` and ``b`` on ``a``), and each video's noise estimate is the weighted sum of the
predictions of its rows. The weights of every video sum to one in every evaluation.

Vocabulary (the release's names):

* a :class:`PairSet` is one draw of pairs — a perfect matching for ``partition``, all pairs for ``exhaustive``;
* an :class:`Evaluation` averages ``Q`` pair sets (*accumulations*);
* a denoising step runs ``R`` evaluations (*recurrences*): evaluate, take the scheduler step, re-noise back to the
  same timestep, repeat; the last step runs ``last_step_recurrences`` (released: 1).

Strategies (one interface, :class:`PairingStrategy`):

* ``partition`` — random perfect matchings (the release). Odd ``N``: the left-over video joins one pair, so one
  video sits in two pairs with weights 1/2 + 1/2. ``order="round-robin"`` walks a random 1-factorisation of the
  complete graph instead of drawing independently, so every pair is seen once per ``N-1`` (even ``N``) draws.
* ``exhaustive`` — all ``N(N-1)/2`` pairs in one set; each video's predictions divided by its partner count.
* ``covisibility`` — ``Q`` edge-disjoint matchings per evaluation, each pair drawn with probability proportional to
  the plan's co-visibility (``covisibility[i][j][k]``, symmetrised, averaged over the frames after the common
  first one), so videos that see the same things are paired more often; every video gets exactly ``Q`` distinct
  partners per evaluation when ``N - 1 >= Q`` (``Q >= N - 1`` is exhaustive).

``N == 1`` is plain camera-controlled video: a *solo* set with one row and no cross-view attention (the CVSMs are
skipped, which is exactly CameraCtrl on AnimateDiff; pairing a video with itself would feed the synchronization
modules identical cameras at every frame, which they never saw in training), one evaluation per step whatever
the schedule says. A model built without synchronization modules samples every video solo the same way.

:func:`call_groups` turns an evaluation into UNet calls: ``batching="per-set"`` runs one call per pair set (the
release: calls per scene ``(S-1)·R·Q + Q``), ``"merged"`` runs every distinct pair of the evaluation once (duplicate
pairs across accumulations computed once, weights summed) in as few calls as ``max_pairs_per_call`` allows.

Pure numpy; must never import ``cvd_scene`` (nor torch).
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "PRESETS",
    "CovisibilityPairing",
    "Evaluation",
    "ExhaustivePairing",
    "PairSet",
    "PairingSchedule",
    "PairingStrategy",
    "PartitionPairing",
    "ScheduleCost",
    "call_groups",
    "check_weights",
    "covisibility_affinity",
    "released_schedule",
    "schedule_cost",
    "schedule_preset",
    "solo_set",
]

_WEIGHT_ATOL = 1e-9


# ---------------------------------------------------------------------------------------------- pair sets


@dataclass(frozen=True, eq=False)
class PairSet:
    """One draw of pairs over ``num_videos`` videos: each pair is two mutually attending UNet rows."""

    num_videos: int
    """``N``."""
    pairs: np.ndarray
    """[P, 2] int64 video indices ``(a, b)``, ``a != b``; empty for a solo set."""
    weights: np.ndarray
    """[P, 2] float64: the weight of ``a``'s prediction from this pair and that of ``b``'s."""
    solo: bool = False
    """Videos alone (no partner, no cross-view attention), weight 1 each: ``N == 1``, or a model without
    synchronization modules."""
    solo_videos: tuple[int, ...] | None = None
    """Solo sets: the videos given a row (None: all)."""

    def __post_init__(self) -> None:
        pairs = np.asarray(self.pairs, dtype=np.int64).reshape(-1, 2)
        weights = np.asarray(self.weights, dtype=np.float64).reshape(-1, 2)
        object.__setattr__(self, "pairs", pairs)
        object.__setattr__(self, "weights", weights)
        if pairs.shape != weights.shape:
            raise ValueError(f"pairs {pairs.shape} and weights {weights.shape} must both be [P, 2]")
        if self.solo:
            if len(pairs):
                raise ValueError(f"a solo set has no pairs, got {len(pairs)} pairs")
            videos = (
                tuple(range(self.num_videos))
                if self.solo_videos is None
                else tuple(int(v) for v in self.solo_videos)
            )
            if any(not 0 <= v < self.num_videos for v in videos) or len(set(videos)) != len(videos):
                raise ValueError(
                    f"solo_videos must be distinct indices in [0, {self.num_videos}), got {videos}"
                )
            object.__setattr__(self, "solo_videos", videos)
            return
        if len(pairs) and (pairs.min() < 0 or pairs.max() >= self.num_videos):
            raise ValueError(f"pair indices must lie in [0, {self.num_videos}), got {pairs.tolist()}")
        if np.any(pairs[:, 0] == pairs[:, 1]):
            raise ValueError(f"a video cannot be paired with itself: {pairs.tolist()}")

    @property
    def num_pairs(self) -> int:
        return len(self.pairs)

    @property
    def num_rows(self) -> int:
        """UNet rows per guidance branch."""
        return len(self.solo_videos) if self.solo else 2 * len(self.pairs)

    def video_weights(self) -> np.ndarray:  # [N]
        """Sum of the weights of every video's predictions."""
        out = np.zeros(self.num_videos)
        if self.solo:
            out[list(self.solo_videos)] = 1.0
            return out
        np.add.at(out, self.pairs.reshape(-1), self.weights.reshape(-1))
        return out

    def partner_counts(self) -> np.ndarray:  # [N]
        """Pairs each video sits in."""
        out = np.zeros(self.num_videos, dtype=np.int64)
        np.add.at(out, self.pairs.reshape(-1), 1)
        return out

    def canonical(self) -> dict[tuple[int, int], tuple[float, float]]:
        """``{(min, max): (weight of min, weight of max)}`` with duplicate pairs summed."""
        out: dict[tuple[int, int], list[float]] = {}
        for (a, b), (wa, wb) in zip(self.pairs.tolist(), self.weights.tolist()):
            key, w = ((a, b), (wa, wb)) if a < b else ((b, a), (wb, wa))
            acc = out.setdefault(key, [0.0, 0.0])
            acc[0] += w[0]
            acc[1] += w[1]
        return {k: (v[0], v[1]) for k, v in out.items()}

    def scaled(self, factor: float) -> PairSet:
        return dataclasses.replace(self, weights=self.weights * factor)


def solo_set(num_videos: int) -> PairSet:
    """Every video alone (no cross-view attention), weight 1 each."""
    return PairSet(num_videos=num_videos, pairs=np.zeros((0, 2)), weights=np.zeros((0, 2)), solo=True)


def _matching_set(num_videos: int, pairs: list[tuple[int, int]], extra: tuple[int, int] | None) -> PairSet:
    """A perfect matching of the even part plus, for odd ``N``, the left-over video's pair ``(v, u)``: ``v``
    weighs 1 there, ``u`` splits 1/2 + 1/2 between its matching pair and this one."""
    rows = [list(p) for p in pairs]
    weights = [[1.0, 1.0] for _ in pairs]
    if extra is not None:
        v, u = extra
        for p, w in zip(rows, weights):
            if u in p:
                w[p.index(u)] = 0.5
        rows.append([v, u])
        weights.append([1.0, 0.5])
    return PairSet(
        num_videos=num_videos, pairs=np.array(rows).reshape(-1, 2), weights=np.array(weights).reshape(-1, 2)
    )


@dataclass(frozen=True, eq=False)
class Evaluation:
    """One noise estimate of every video: the average of ``Q`` pair sets (accumulations)."""

    pair_sets: tuple[PairSet, ...]
    """The ``Q`` draws; their weights are already divided by ``Q``."""

    @property
    def num_videos(self) -> int:
        return self.pair_sets[0].num_videos

    @property
    def solo(self) -> bool:
        return self.pair_sets[0].solo

    def video_weights(self) -> np.ndarray:  # [N]
        return sum(s.video_weights() for s in self.pair_sets)

    def merged(self) -> PairSet:
        """Every distinct pair once, the weights of duplicates summed (one computation instead of several)."""
        if self.solo:
            return self.pair_sets[0]
        acc: dict[tuple[int, int], list[float]] = {}
        for s in self.pair_sets:
            for k, (wa, wb) in s.canonical().items():
                a = acc.setdefault(k, [0.0, 0.0])
                a[0] += wa
                a[1] += wb
        keys = sorted(acc)
        return PairSet(
            num_videos=self.num_videos,
            pairs=np.array(keys, dtype=np.int64).reshape(-1, 2),
            weights=np.array([acc[k] for k in keys]).reshape(-1, 2),
        )


# ---------------------------------------------------------------------------------------------- strategies


class PairingStrategy(ABC):
    """Draws the pair sets of one evaluation. Stateful within one sampling run (round-robin walks)."""

    name: str = "?"

    def __init__(self, num_videos: int) -> None:
        if not isinstance(num_videos, (int, np.integer)) or num_videos < 1:
            raise ValueError(f"num_videos must be a positive integer, got {num_videos!r}")
        self.num_videos = int(num_videos)

    def evaluation(self, accumulations: int, rng: np.random.Generator) -> Evaluation:
        """``Q`` pair sets, weights divided by ``Q`` (every video's weights sum to one)."""
        if self.num_videos == 1:
            return Evaluation(pair_sets=(solo_set(1),))
        sets = self.draw(accumulations, rng)
        return Evaluation(pair_sets=tuple(s.scaled(1.0 / len(sets)) for s in sets))

    @abstractmethod
    def draw(self, count: int, rng: np.random.Generator) -> list[PairSet]:
        """``count`` pair sets, each with every video's weights summing to one (``N >= 2``)."""


class PartitionPairing(PairingStrategy):
    """Random perfect matchings (the release's strategy), odd ``N`` handled by one video joining two pairs."""

    name = "partition"

    def __init__(self, num_videos: int, order: Literal["random", "round-robin"] = "random") -> None:
        super().__init__(num_videos)
        if order not in ("random", "round-robin"):
            raise ValueError(f"order must be 'random' or 'round-robin', got {order!r}")
        self.order = order
        self._queue: list[list[tuple[int, int]]] = []

    def draw(self, count: int, rng: np.random.Generator) -> list[PairSet]:
        return [self._one(rng) for _ in range(count)]

    def _one(self, rng: np.random.Generator) -> PairSet:
        n = self.num_videos
        if self.order == "random":
            perm = rng.permutation(n).tolist()
            pairs = [(perm[2 * i], perm[2 * i + 1]) for i in range(n // 2)]
            left = perm[-1] if n % 2 else None
        else:
            if not self._queue:
                self._queue = _one_factorisation(n, rng)
            matching = self._queue.pop()
            pairs = [p for p in matching if -1 not in p]
            left = next((a if b == -1 else b for a, b in matching if -1 in (a, b)), None)
        extra = None
        if left is not None:
            others = [v for v in range(n) if v != left]
            extra = (left, int(rng.choice(others)))
        return _matching_set(n, pairs, extra)


def _one_factorisation(n: int, rng: np.random.Generator) -> list[list[tuple[int, int]]]:
    """The ``M - 1`` perfect matchings of the complete graph on ``M = n`` (even) or ``n + 1`` (odd, vertex -1 a
    dummy) vertices that together hold every pair exactly once (circle method), randomly relabelled and ordered."""
    m = n + (n % 2)
    labels = rng.permutation(n).tolist() + ([-1] if n % 2 else [])
    out = []
    for r in range(m - 1):
        ring = [m - 1] + [(r + i) % (m - 1) for i in range(m - 1)]  # vertex m-1 fixed, the rest rotating
        out.append([(labels[ring[i]], labels[ring[m - 1 - i]]) for i in range(m // 2)])
    order = rng.permutation(len(out))
    return [out[i] for i in order]


class ExhaustivePairing(PairingStrategy):
    """All pairs in one set; each video's predictions weighted ``1 / (N - 1)``."""

    name = "exhaustive"

    def draw(self, count: int, rng: np.random.Generator) -> list[PairSet]:
        n = self.num_videos
        pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
        w = 1.0 / (n - 1)
        one = PairSet(num_videos=n, pairs=np.array(pairs).reshape(-1, 2), weights=np.full((len(pairs), 2), w))
        return [one] * count


class CovisibilityPairing(PairingStrategy):
    """``Q`` edge-disjoint matchings per evaluation, pairs drawn with probability proportional to an affinity."""

    name = "covisibility"

    def __init__(self, num_videos: int, affinity: np.ndarray | None = None, floor: float = 0.02) -> None:
        super().__init__(num_videos)
        n = self.num_videos
        if affinity is None:
            affinity = np.ones((n, n))
        a = np.asarray(affinity, dtype=np.float64)
        if a.shape != (n, n) or not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError(f"affinity must be a finite non-negative [{n}, {n}] matrix, got shape {a.shape}")
        if not floor >= 0:
            raise ValueError(f"floor must be >= 0, got {floor=}")
        a = 0.5 * (a + a.T) + floor
        np.fill_diagonal(a, 0.0)
        self.affinity = a

    retries: int = 16
    """Greedy draws tried per matching before accepting one that repeats a pair of the same evaluation."""

    def draw(self, count: int, rng: np.random.Generator) -> list[PairSet]:
        used = np.zeros((self.num_videos, self.num_videos), dtype=bool)
        out = []
        for _ in range(count):
            best = None
            for _ in range(self.retries):  # greedy matching can dead-end on used pairs: redraw a few times
                pairs, extra, repeats = self._greedy(rng, used)
                if best is None or repeats < best[2]:
                    best = (pairs, extra, repeats)
                if repeats == 0:
                    break
            pairs, extra, _ = best
            for a, b in pairs + ([extra] if extra else []):
                used[a, b] = used[b, a] = True
            out.append(_matching_set(self.num_videos, pairs, extra))
        return out

    def _greedy(self, rng: np.random.Generator, used: np.ndarray):
        """One matching drawn pair by pair (probability ∝ affinity, pairs used earlier in the evaluation avoided
        while possible); returns the pairs, the odd video's extra pair and how many pairs repeat."""
        n = self.num_videos
        used = used.copy()
        unmatched = rng.permutation(n).tolist()
        pairs, repeats = [], 0
        while len(unmatched) >= 2:
            a = unmatched.pop(0)
            b = self._pick(a, unmatched, used, rng)
            unmatched.remove(b)
            repeats += int(used[a, b])
            pairs.append((a, b))
            used[a, b] = used[b, a] = True
        extra = None
        if unmatched:
            v = unmatched[0]
            u = self._pick(v, [x for x in range(n) if x != v], used, rng)
            repeats += int(used[v, u])
            extra = (v, u)
        return pairs, extra, repeats

    def _pick(self, a: int, candidates: list[int], used: np.ndarray, rng: np.random.Generator) -> int:
        w = self.affinity[a, candidates] * ~used[a, candidates]
        if w.sum() <= 0:  # every candidate already paired with a in this evaluation: allow a repeat
            w = self.affinity[a, candidates]
        return int(candidates[rng.choice(len(candidates), p=w / w.sum())])


def covisibility_affinity(covisibility: np.ndarray, skip_first: bool = True) -> np.ndarray:  # [V, V]
    """Pair affinity from a plan's co-visibility ``[V, V, F]`` (``[i][j][k]``: share of video i's view at frame k
    that video j also sees) or an already reduced ``[V, V]``: symmetrised and averaged over the frames (after the
    common first frame, which every video shares)."""
    c = np.asarray(covisibility, dtype=np.float64)
    if c.ndim == 3:
        if c.shape[0] != c.shape[1]:
            raise ValueError(f"covisibility must be [V, V, F] or [V, V], got shape {c.shape}")
        frames = c[..., 1:] if skip_first and c.shape[-1] > 1 else c
        c = frames.mean(axis=-1)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"covisibility must be [V, V, F] or [V, V], got shape {c.shape}")
    if not np.all(np.isfinite(c)) or c.min() < -1e-9 or c.max() > 1 + 1e-9:
        raise ValueError("covisibility values must be finite fractions in [0, 1]")
    return 0.5 * (c + c.T)


# ---------------------------------------------------------------------------------------------- schedules


@dataclass(kw_only=True)
class PairingSchedule:
    """Which strategy, how often per step, and how evaluations map to UNet calls."""

    strategy: Literal["partition", "exhaustive", "covisibility"] = "covisibility"
    """How the pairs of an evaluation are drawn (module docstring)."""
    recurrences: int = 1
    """``R``: evaluations per denoising step (with re-noising to the same timestep in between)."""
    accumulations: int = 2
    """``Q``: pair sets averaged per evaluation (covisibility: edge-disjoint matchings, i.e. partners per video)."""
    last_step_recurrences: int = 1
    """Recurrences of the last step (the release: 1)."""
    order: Literal["random", "round-robin"] = "random"
    """partition only: independent random matchings, or a walk through a random 1-factorisation."""
    batching: Literal["merged", "per-set"] = "merged"
    """``merged``: every distinct pair of an evaluation once, batched in as few calls as memory allows;
    ``per-set``: one UNet call per pair set (the release)."""
    covisibility_floor: float = 0.02
    """covisibility: added to every pair's affinity, so pairs that share nothing are still drawn now and then."""

    def __post_init__(self) -> None:
        if self.strategy not in ("partition", "exhaustive", "covisibility"):
            raise ValueError(f"strategy must be partition, exhaustive or covisibility, got {self.strategy!r}")
        for name in ("recurrences", "accumulations", "last_step_recurrences"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {name}={v!r}")
        if self.order not in ("random", "round-robin"):
            raise ValueError(f"order must be 'random' or 'round-robin', got {self.order!r}")
        if self.batching not in ("merged", "per-set"):
            raise ValueError(f"batching must be 'merged' or 'per-set', got {self.batching!r}")

    def make_strategy(self, num_videos: int, covisibility: np.ndarray | None = None) -> PairingStrategy:
        if self.strategy == "partition":
            return PartitionPairing(num_videos, order=self.order)
        if self.strategy == "exhaustive":
            return ExhaustivePairing(num_videos)
        affinity = None if covisibility is None else covisibility_affinity(covisibility)
        if affinity is None and num_videos > 2:
            log.info("no co-visibility given: covisibility pairing draws partners uniformly")
        return CovisibilityPairing(num_videos, affinity, floor=self.covisibility_floor)

    def recurrences_at(self, step: int, num_steps: int) -> int:
        return self.last_step_recurrences if step == num_steps - 1 else self.recurrences

    def plan(
        self,
        num_videos: int,
        num_steps: int,
        rng: np.random.Generator,
        covisibility: np.ndarray | None = None,
        cross_view: bool = True,
    ) -> list[list[Evaluation]]:  # [step][recurrence]
        """Every evaluation of a sampling run, drawn up front (so they can be inspected and counted).
        ``cross_view=False`` (a model without synchronization modules): every video alone, one evaluation per step."""
        if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
        if not cross_view or num_videos == 1:
            return [[Evaluation(pair_sets=(solo_set(num_videos),))] for _ in range(num_steps)]
        strategy = self.make_strategy(num_videos, covisibility)
        return [
            [strategy.evaluation(self.accumulations, rng) for _ in range(self.recurrences_at(s, num_steps))]
            for s in range(num_steps)
        ]

    def describe(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, PairingSchedule] = {
    # Ours (R = 1: no re-noising; every evaluation one batched call).
    "covisibility": PairingSchedule(strategy="covisibility", recurrences=1, accumulations=2),
    "exhaustive": PairingSchedule(strategy="exhaustive", recurrences=1, accumulations=1),
    "partition": PairingSchedule(strategy="partition", recurrences=1, accumulations=1, order="round-robin"),
    # The release, call for call.
    "released-pair": PairingSchedule(
        strategy="partition", recurrences=1, accumulations=1, batching="per-set"
    ),
    "released-4": PairingSchedule(strategy="partition", recurrences=3, accumulations=1, batching="per-set"),
    "released-6": PairingSchedule(strategy="partition", recurrences=6, accumulations=2, batching="per-set"),
}
"""Named schedules. ``released`` (not a key) picks the release's setting by N (:func:`released_schedule`)."""

DEFAULT_PRESET = "covisibility"


def released_schedule(num_videos: int) -> PairingSchedule:
    """The release's schedule for ``N`` videos: pairs R=1, Q=1; 4 views R=3, Q=1; 6 views R=6, Q=2 (other N: the
    setting of the nearest released N at or above it, 6 beyond)."""
    if num_videos <= 2:
        return dataclasses.replace(PRESETS["released-pair"])
    if num_videos <= 4:
        return dataclasses.replace(PRESETS["released-4"])
    return dataclasses.replace(PRESETS["released-6"])


def schedule_preset(name: str, num_videos: int | None = None, **changes) -> PairingSchedule:
    """A named schedule (``PRESETS`` keys or ``released``), with fields replaced by ``changes`` (None skipped)."""
    if name == "released":
        if num_videos is None:
            raise ValueError("the 'released' preset depends on the number of videos: pass num_videos")
        base = released_schedule(num_videos)
    elif name in PRESETS:
        base = dataclasses.replace(PRESETS[name])
    else:
        raise ValueError(f"unknown pairing {name!r}; presets: {', '.join([*PRESETS, 'released'])}")
    changes = {k: v for k, v in changes.items() if v is not None}
    return dataclasses.replace(base, **changes) if changes else base


# ---------------------------------------------------------------------------------------------- calls


def call_groups(
    evaluation: Evaluation,
    batching: Literal["merged", "per-set"],
    max_pairs_per_call: int | None = None,
    skip_videos: Sequence[int] = (),
) -> list[PairSet]:
    """The UNet calls of one evaluation, each a :class:`PairSet` of whole pairs (a pair's two rows must share a
    call: they attend to each other). Weights are the final ones (accumulations included). Pairs whose two videos
    are both in ``skip_videos`` (fixed ground-truth partners) are dropped: no prediction of theirs is used."""
    if max_pairs_per_call is not None and max_pairs_per_call < 1:
        raise ValueError(f"max_pairs_per_call must be >= 1 or None, got {max_pairs_per_call}")
    if evaluation.solo:
        n = evaluation.num_videos
        skip = {int(x) for x in skip_videos}
        videos = [v for v in range(n) if v not in skip]
        step = max_pairs_per_call * 2 if max_pairs_per_call else len(videos)
        return [
            dataclasses.replace(solo_set(n), solo_videos=tuple(videos[i : i + step]))
            for i in range(0, len(videos), step)
        ]
    sets = [evaluation.merged()] if batching == "merged" else list(evaluation.pair_sets)
    skip = {int(v) for v in skip_videos}
    out = []
    for s in sets:
        keep = np.array([not (int(a) in skip and int(b) in skip) for a, b in s.pairs], dtype=bool)
        pairs, weights = s.pairs[keep], s.weights[keep]
        step = max_pairs_per_call or max(len(pairs), 1)
        for i in range(0, len(pairs), step):
            out.append(
                PairSet(num_videos=s.num_videos, pairs=pairs[i : i + step], weights=weights[i : i + step])
            )
    return out


@dataclass
class ScheduleCost:
    """What a schedule costs for one scene."""

    unet_calls: int
    """UNet forward calls."""
    unet_rows: int
    """Rows over all calls (videos x guidance branches): the compute, in units of one video's denoising pass."""
    evaluations: int
    """Noise estimates of every video."""
    max_rows_per_call: int
    """Largest call."""


def schedule_cost(
    schedule: PairingSchedule,
    num_videos: int,
    num_steps: int,
    *,
    guidance: bool = True,
    max_rows_per_call: int | None = None,
    covisibility: np.ndarray | None = None,
    seed: int = 0,
) -> ScheduleCost:
    """UNet calls and rows of a scene under ``schedule`` without running anything (draws with ``seed``)."""
    branches = 2 if guidance else 1
    max_pairs = None if max_rows_per_call is None else max(1, max_rows_per_call // (2 * branches))
    plan = schedule.plan(num_videos, num_steps, np.random.default_rng(seed), covisibility)
    calls = rows = evals = biggest = 0
    for step in plan:
        for ev in step:
            evals += 1
            for group in call_groups(ev, schedule.batching, max_pairs):
                calls += 1
                rows += group.num_rows * branches
                biggest = max(biggest, group.num_rows * branches)
    return ScheduleCost(unet_calls=calls, unet_rows=rows, evaluations=evals, max_rows_per_call=biggest)


def released_call_count(num_steps: int, recurrences: int, accumulations: int) -> int:
    """The release's formula: ``(S - 1)·R·Q + Q``."""
    return (num_steps - 1) * recurrences * accumulations + accumulations


def check_weights(evaluation: Evaluation) -> None:
    """Internal invariant: every video's predictions weigh one in total in an evaluation."""
    w = evaluation.video_weights()
    if not np.allclose(w, 1.0, atol=_WEIGHT_ATOL):
        raise AssertionError(f"the predictions of a video must weigh one in total, got {w.tolist()}")
