"""The draft length schedules of assisted decoding: the cost model's choice of k, and what each schedule drafts after
the rounds it is told about (times given, not measured)."""

from __future__ import annotations

import pytest

from export.runtime.draft_length import (
    K_MAX,
    PROBE_EVERY,
    DraftLength,
    best_draft_length,
    default_schedule,
    expected_tokens,
)


def test_expected_tokens_of_a_round():
    # 1 + a + a^2 + ... + a^k: the accepted drafts and the model's own token
    assert expected_tokens(0.5, 0) == 1.0
    assert expected_tokens(0.5, 3) == pytest.approx(1 + 0.5 + 0.25 + 0.125)
    assert expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.0, 6) == 1.0


def test_best_draft_length_is_the_known_optimum():
    # a = 0.8, d = 1, v = 4: E(k)/T(k) = 1/4, 1.8/5, 2.44/6, 2.952/7 = 0.4217, 3.3616/8 = 0.4202, ...: k = 3
    assert best_draft_length(0.8, 1.0, 4.0, 0.0) == 3
    # the verification's cost per draft counts like a draft step: d = 0.5, v1 = 0.5 is the same round cost
    assert best_draft_length(0.8, 0.5, 4.0, 0.5) == 3
    # a dear verification per draft: 1/4 < 1.8/7 = 0.257 > 2.44/10: k = 1
    assert best_draft_length(0.8, 1.0, 4.0, 2.0) == 1


def test_no_draft_when_a_draft_step_costs_as_much_as_the_model():
    # E(k) < k + 1 while T(k) = (k + 1) v0: the model alone gains more per second, however often drafts are accepted
    assert best_draft_length(0.9, 1.0, 1.0, 0.0) == 0
    assert best_draft_length(0.99, 2.0, 1.5, 0.1) == 0
    assert best_draft_length(0.0, 0.01, 1.0, 0.0) == 0  # nothing is ever accepted: any draft time is lost
    assert best_draft_length(0.9, 1.0, 1.0, 0.0, k_min=1) == 1  # a probe drafts the least costly length


def test_long_drafts_when_almost_all_are_accepted_and_drafting_is_almost_free():
    assert best_draft_length(0.999, 1e-4, 1.0, 1e-4) == K_MAX
    assert best_draft_length(0.999, 1e-4, 1.0, 1e-4, k_max=10) == 10
    assert best_draft_length(1.0, 0.0, 1.0, 0.0, k_max=7) == 7


@pytest.mark.parametrize("args", [(1.1, 1.0, 1.0, 0.0), (0.5, -1.0, 1.0, 0.0), (0.5, 1.0, 0.0, 0.0),
                                  (0.5, 1.0, 1.0, -0.1)])
def test_best_draft_length_refuses_meaningless_costs(args):
    with pytest.raises(ValueError, match="best_draft_length: needs"):
        best_draft_length(*args)


def test_heuristic_and_constant_schedules():
    heuristic, constant = DraftLength("heuristic", 5), DraftLength("constant", 4)
    got = []
    for drafted, accepted in ((5, 5), (7, 2), (6, 0), (5, 0), (4, 0), (3, 0), (2, 0), (1, 0), (1, 1)):
        assert heuristic.next() == drafted
        heuristic.update(drafted, accepted, 0.01, 0.01)
        got.append(constant.next())
        constant.update(4, 0, 0.01, 0.01)
    assert heuristic.next() == 3  # +2 after a full acceptance, -1 otherwise, never below 1
    assert got == [4] * 9


def _cost_rounds(lengths: DraftLength, rounds: int, accepted_share: float, d: float, v0: float, v1: float) -> list[int]:
    """Run `rounds` rounds on `lengths`, accepting `accepted_share` of each draft, with exact costs; the lengths."""
    chosen = []
    for _ in range(rounds):
        k = lengths.next()
        chosen.append(k)
        lengths.update(k, round(accepted_share * k), k * d, v0 + v1 * k)
    return chosen


def test_cost_drafts_the_given_length_until_a_round_is_measured():
    lengths = DraftLength("cost", 6)
    assert lengths.next() == 6
    lengths.update(6, 6, 100.0, 100.0)  # the first round: both models' first steps, not fitted
    assert lengths.n == 0 and lengths.draft_steps == 0 and lengths.next() == 6
    assert lengths.acceptance() == pytest.approx(7 / 8)  # its acceptances count (Laplace: (6 + 1) / (6 + 0 + 2))


def test_cost_fits_the_verification_and_falls_back_to_a_flat_cost():
    lengths = DraftLength("cost", 2)
    lengths.update(2, 2, 0.0, 99.0)  # not fitted
    lengths.update(2, 2, 0.2, 3.0 + 2 * 0.5)
    assert lengths.verification() == (pytest.approx(4.0), 0.0)  # one k seen: a flat cost
    for k in (1, 4, 0):
        lengths.update(k, 0, 0.1 * k, 3.0 + k * 0.5)
    v0, v1 = lengths.verification()
    assert v0 == pytest.approx(3.0) and v1 == pytest.approx(0.5)
    noisy = DraftLength("cost", 2)
    for k, seconds in ((2, 99.0), (2, 1.0), (9, 30.0)):  # the line through the fitted two crosses 0 at k = 1.8
        noisy.update(k, 0, 0.1 * k, seconds)
    assert noisy.verification() == (pytest.approx(15.5), 0.0)


def test_cost_stops_drafting_when_it_does_not_pay_and_probes_now_and_then():
    lengths = DraftLength("cost", 5)
    # a draft step as dear as the model's, half the drafts accepted: the model alone wins
    chosen = _cost_rounds(lengths, 2 + 3 * (PROBE_EVERY + 1), 0.5, d=1.0, v0=1.0, v1=0.05)
    assert chosen[:2] == [5, 5]
    alone = chosen[2:]
    probes = [i for i, k in enumerate(alone) if k]
    assert probes == [PROBE_EVERY - 1, 2 * PROBE_EVERY - 1, 3 * PROBE_EVERY - 1]
    assert all(alone[i] == 1 for i in probes)


def test_cost_drafts_long_when_the_draft_agrees_and_is_cheap():
    lengths = DraftLength("cost", 2)
    chosen = _cost_rounds(lengths, 12, 1.0, d=0.001, v0=1.0, v1=0.001)
    assert chosen[-1] == K_MAX and chosen == sorted(chosen)


def test_cost_settles_on_the_best_length_for_its_measured_costs():
    lengths = DraftLength("cost", 5)
    # rounds keep about 3 in 4 drafts (rounded), at lengths that vary while the estimates settle
    chosen = _cost_rounds(lengths, 40, 0.75, d=0.25, v0=1.0, v1=0.05)
    assert len(set(chosen)) > 1  # the fit has seen several lengths
    assert lengths.next() == best_draft_length(lengths.acceptance(), 0.25, 1.0, 0.05) > 0


def test_seeded_sampling_keeps_a_schedule_that_does_not_depend_on_time():
    assert default_schedule(do_sample=False, seed=None) == "cost"
    assert default_schedule(do_sample=False, seed=3) == "cost"
    assert default_schedule(do_sample=True, seed=None) == "cost"
    assert default_schedule(do_sample=True, seed=3) == "heuristic"
