"""Pairing schedules (cvd.pairing): matching properties and weight sums at every step for every strategy and
N = 1…9, round-robin coverage, co-visibility preference, the released call counts, batching into calls."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from cvd.pairing import (
    PRESETS,
    CovisibilityPairing,
    Evaluation,
    ExhaustivePairing,
    PairingSchedule,
    PairSet,
    PartitionPairing,
    call_groups,
    covisibility_affinity,
    released_call_count,
    schedule_cost,
    schedule_preset,
)

STRATEGIES = [
    ("partition", {"order": "random"}),
    ("partition", {"order": "round-robin"}),
    ("exhaustive", {}),
    ("covisibility", {}),
]


def _check_pair_set(s: PairSet) -> None:
    """Every video's weights sum to one in a pair set of its own (Q = 1), pairs are real pairs."""
    n = s.num_videos
    assert np.allclose(s.video_weights(), 1.0, atol=1e-12), s.video_weights()
    if s.solo:
        assert n == 1 or s.solo_videos is not None
        return
    assert np.all(s.pairs[:, 0] != s.pairs[:, 1])
    assert np.all((s.weights > 0) & (s.weights <= 1))


def _check_matching(s: PairSet) -> None:
    """A perfect matching; odd N: exactly one video in two pairs, weighted 1/2 + 1/2."""
    n = s.num_videos
    counts = s.partner_counts()
    assert len(s.pairs) == (n + 1) // 2
    if n % 2 == 0:
        assert np.all(counts == 1)
        assert np.all(s.weights == 1.0)
    else:
        assert sorted(counts.tolist()) == [1] * (n - 1) + [2]
        twice = int(np.argmax(counts))
        w = s.weights[s.pairs == twice]
        assert sorted(w.tolist()) == [0.5, 0.5]
        assert np.all(s.weights[s.pairs != twice] == 1.0)


@pytest.mark.parametrize("n", range(1, 10))
@pytest.mark.parametrize("strategy,extra", STRATEGIES)
@pytest.mark.parametrize("r,q", [(1, 1), (2, 2), (3, 3)])
def test_every_step_every_video_weighs_one(n, strategy, extra, r, q):
    schedule = PairingSchedule(strategy=strategy, recurrences=r, accumulations=q, **extra)
    plan = schedule.plan(n, 6, np.random.default_rng(n * 100 + q))
    # The last step runs one recurrence; one video alone needs none (nothing to synchronise).
    assert [len(step) for step in plan] == ([1] * 6 if n == 1 else [r] * 5 + [1])
    for step in plan:
        for ev in step:
            assert len(ev.pair_sets) == (1 if n == 1 else q)
            assert np.allclose(ev.video_weights(), 1.0, atol=1e-12)
            merged = ev.merged()
            assert np.allclose(merged.video_weights(), 1.0, atol=1e-12)
            for s in ev.pair_sets:
                _check_pair_set(s.scaled(len(ev.pair_sets)))
                if n == 1:
                    assert s.solo and s.num_rows == 1
                elif strategy in ("partition", "covisibility"):
                    _check_matching(s.scaled(len(ev.pair_sets)))
                else:
                    assert {tuple(p) for p in s.pairs.tolist()} == set(itertools.combinations(range(n), 2))
                    assert np.allclose(s.weights * q, 1.0 / (n - 1))


@pytest.mark.parametrize("n", [2, 4, 6, 8, 3, 5, 7, 9])
def test_round_robin_sees_every_pair_once_per_round(n):
    """Even N: N-1 consecutive draws hold every pair exactly once; odd N: the N draws of a round hold every pair
    at least once (the left-over video of each draw joins one extra pair)."""
    strategy = PartitionPairing(n, order="round-robin")
    rng = np.random.default_rng(n)
    for _ in range(3):  # three rounds, each reshuffled
        draws = strategy.draw(n - 1 if n % 2 == 0 else n, rng)
        seen = Counter(tuple(sorted(p)) for s in draws for p in s.pairs.tolist())
        assert set(seen) == set(itertools.combinations(range(n), 2))
        if n % 2 == 0:
            assert set(seen.values()) == {1}


def test_random_partition_is_uniform_over_pairs():
    """The release's random matchings: over many draws every pair turns up about equally often."""
    n, draws = 6, 3000
    strategy = PartitionPairing(n)
    seen = Counter(
        tuple(sorted(p)) for s in strategy.draw(draws, np.random.default_rng(0)) for p in s.pairs.tolist()
    )
    expected = draws * (n // 2) / (n * (n - 1) / 2)
    assert len(seen) == 15 and all(abs(c - expected) < 0.15 * expected for c in seen.values())


def test_covisibility_pairs_videos_that_see_the_same_things_more_often():
    n = 6
    cov = np.full((n, n, 4), 0.05)
    for a, b in [(0, 1), (2, 3), (4, 5)]:
        cov[a, b, 1:] = cov[b, a, 1:] = 0.9
    cov[np.arange(n), np.arange(n)] = 1.0
    cov[..., 0] = 1.0  # the common first frame carries no information and is skipped
    strategy = CovisibilityPairing(n, covisibility_affinity(cov))
    seen = Counter(
        tuple(sorted(p)) for s in strategy.draw(2000, np.random.default_rng(1)) for p in s.pairs.tolist()
    )
    favoured = sum(seen[p] for p in [(0, 1), (2, 3), (4, 5)]) / 3
    others = [c for p, c in seen.items() if p not in [(0, 1), (2, 3), (4, 5)]]
    assert favoured > 5 * max(others)
    assert all(c > 0 for c in others)  # the floor keeps every pair possible


@pytest.mark.parametrize("n", [4, 6, 8])
def test_covisibility_accumulations_are_distinct_partners(n):
    """Q edge-disjoint matchings: with Q <= N/2 every video gets Q distinct partners in every evaluation; Q >= N-1
    reaches every pair (exhaustive)."""
    strategy = CovisibilityPairing(n)
    rng = np.random.default_rng(2)
    for q in range(1, n // 2 + 1):
        for _ in range(50):
            merged = strategy.evaluation(q, rng).merged()
            assert np.all(merged.partner_counts() == q)
    full = strategy.evaluation(n - 1, rng).merged()
    assert full.num_pairs >= n * (n - 1) / 2 - 2


def test_covisibility_affinity_reduces_and_symmetrises():
    c = np.zeros((2, 2, 3))
    c[0, 1] = [1.0, 0.2, 0.4]
    c[1, 0] = [1.0, 0.6, 0.8]
    a = covisibility_affinity(c)
    np.testing.assert_allclose(a[0, 1], a[1, 0])
    np.testing.assert_allclose(a[0, 1], (0.3 + 0.7) / 2)  # frames 1.. only
    with pytest.raises(ValueError, match="covisibility"):
        covisibility_affinity(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        covisibility_affinity(np.full((2, 2), 2.0))


@pytest.mark.parametrize(
    "n,preset,calls", [(2, "released-pair", 25), (4, "released-4", 73), (6, "released-6", 290)]
)
def test_released_schedules_give_the_released_call_counts(n, preset, calls):
    cost = schedule_cost(schedule_preset(preset), n, 25)
    assert (
        cost.unet_calls
        == calls
        == released_call_count(25, PRESETS[preset].recurrences, PRESETS[preset].accumulations)
    )
    assert cost.max_rows_per_call == 2 * n  # all videos of one matching, both guidance branches, in one call
    assert schedule_preset("released", n).describe() == PRESETS[preset].describe()
    for steps in (1, 2, 7):
        s = PRESETS[preset]
        assert schedule_cost(s, n, steps).unet_calls == released_call_count(
            steps, s.recurrences, s.accumulations
        )


def test_ours_is_one_call_per_step_and_far_fewer_rows_than_the_release():
    for n in (4, 6, 8):
        ours = schedule_cost(schedule_preset("covisibility"), n, 25)
        rel = schedule_cost(schedule_preset("released", n), n, 25)
        assert ours.unet_calls == 25
        assert ours.unet_rows < rel.unet_rows
    six = schedule_cost(schedule_preset("covisibility"), 6, 25)
    assert six.unet_rows <= 25 * 24  # two partners per video per step, guided: at most 24 rows a step


def test_call_groups_merge_duplicates_and_never_split_pairs():
    s1 = PairSet(num_videos=4, pairs=[[0, 1], [2, 3]], weights=[[0.5, 0.5], [0.5, 0.5]])
    s2 = PairSet(num_videos=4, pairs=[[1, 0], [2, 1], [3, 0]], weights=np.full((3, 2), 0.25))
    ev = Evaluation(pair_sets=(s1, s2))
    merged = call_groups(ev, "merged")
    assert len(merged) == 1 and merged[0].num_pairs == 4  # (0, 1) computed once
    np.testing.assert_allclose(merged[0].video_weights(), ev.video_weights())
    assert len(call_groups(ev, "per-set")) == 2
    chunks = call_groups(ev, "merged", max_pairs_per_call=3)
    assert [c.num_pairs for c in chunks] == [3, 1]
    np.testing.assert_allclose(sum(c.video_weights() for c in chunks), ev.video_weights())
    skipped = call_groups(ev, "merged", skip_videos=[0, 1])  # both fixed: (0, 1) is not needed
    assert {tuple(p) for c in skipped for p in c.pairs.tolist()} == {(1, 2), (2, 3), (0, 3)}


def test_solo_sets_chunk_by_videos():
    from cvd.pairing import solo_set

    ev = Evaluation(pair_sets=(solo_set(5),))
    groups = call_groups(ev, "merged", max_pairs_per_call=1)  # one pair's worth of rows: two videos a call
    assert [g.solo_videos for g in groups] == [(0, 1), (2, 3), (4,)]
    assert [g.solo_videos for g in call_groups(ev, "merged", skip_videos=[1])] == [(0, 2, 3, 4)]
    plan = PairingSchedule().plan(3, 2, np.random.default_rng(0), cross_view=False)
    assert all(len(step) == 1 and step[0].solo for step in plan)


def test_exhaustive_weights_are_one_over_partner_count():
    s = ExhaustivePairing(5).draw(1, np.random.default_rng(0))[0]
    assert s.num_pairs == 10 and np.allclose(s.weights, 0.25)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"strategy": "greedy"}, "strategy"),
        ({"recurrences": 0}, "recurrences=0"),
        ({"accumulations": 1.5}, "accumulations=1.5"),
        ({"batching": "all"}, "batching"),
        ({"order": "sorted"}, "order"),
    ],
)
def test_schedule_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PairingSchedule(**kwargs)


def test_preset_lookup_errors():
    with pytest.raises(ValueError, match="unknown pairing 'pairs'"):
        schedule_preset("pairs")
    with pytest.raises(ValueError, match="num_videos"):
        schedule_preset("released")
    assert schedule_preset("exhaustive", recurrences=2).recurrences == 2
    with pytest.raises(ValueError, match="pair indices"):
        PairSet(num_videos=2, pairs=[[0, 2]], weights=[[1, 1]])
    with pytest.raises(ValueError, match="itself"):
        PairSet(num_videos=2, pairs=[[1, 1]], weights=[[1, 1]])
