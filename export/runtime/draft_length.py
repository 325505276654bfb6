"""How many tokens the draft proposes in each round of assisted decoding (`num_assistant_tokens_schedule`).

- "heuristic", transformers' default: `num_assistant_tokens` first, +2 after a fully accepted draft, -1 otherwise.
- "constant": `num_assistant_tokens` every round.
- "cost": the length whose next round gains the most tokens per second, from what the call has measured so far.

The cost model (Leviathan et al. 2023): if each draft token is accepted with probability a once the tokens before it
were, a round that drafts k tokens keeps E(k) = (1 - a^(k+1)) / (1 - a) tokens (the model's own token included) and
costs T(k) = k d + v(k): k draft steps of d seconds, then the verification of k drafts, v(k) = v0 + v1 k. k = 0 is the
model alone, one token per v0 seconds. The schedule drafts the k in 0..K_MAX with the largest E(k) / T(k).

Why not slower than "heuristic": under that model rounds are independent, so any sequence of lengths k_1..k_R gains
sum E(k_i) tokens in sum T(k_i) seconds on average, and a ratio of sums is at most the largest ratio E(k) / T(k). The
heuristic's lengths are such a sequence (its reaction to past acceptances says nothing about the next round when
acceptances are independent), and its lengths are never 0, so with the true a, d and v this schedule's throughput is at
least the heuristic's. What it pays instead: estimating them (the first rounds, and a prior), and the model's
simplifications: acceptance comes in streaks (a name copied from the source), which the heuristic's +2 follows.

Estimates, updated after every round of the call:
- a = (accepted + 1) / (accepted + rejections + 2): Laplace's rule, so a few rounds cannot make it 0 or 1. A batch keeps
  what its least successful row accepted, so a round counts that number, and a rejection when it is below the number
  drafted. (Accepted / drafted, `AssistedStats.acceptance_rate`, is not a: drafts after the first rejection are never
  tested, yet count as drafted.)
- d = draft seconds / draft steps; v0 and v1 by least squares over the rounds' (k, seconds of the verification and
  its acceptance) points, v1 = 0 while a single k was seen (Leviathan et al.'s flat verification cost), and the mean
  with v1 = 0 when the fit's intercept is not positive (only noise does that).
- The first round's verification is the model's first step, which also computes the cross-attention cache, and its
  draft starts the same way: its times are not fitted, and until a round is, the schedule drafts `num_assistant_tokens`.

When k = 0 wins, the draft's cache falls behind; its next call feeds every token it lacks at once
(`assisted._Cache.advance`), so nothing has to keep it in step meanwhile. Without drafts the estimate of a cannot
change, so every PROBE_EVERY-th model-alone round in a row drafts the best k >= 1 instead; such a round is no slower,
in expectation, than any round of the heuristic.
"""

from __future__ import annotations

SCHEDULES = ("cost", "heuristic", "constant")
DRAFT_START = 5  # transformers' first draft length
# the search's bound: at a = 0.9, under 4 % of the most a round can gain, 1 / (1 - a), lies beyond 32 drafts
K_MAX = 32
# the PROBE_EVERY-th model-alone round in a row drafts, to measure a again: at most 1 round in PROBE_EVERY probes
PROBE_EVERY = 8


def default_schedule(do_sample: bool, seed: int | None) -> str:
    """"cost", except for seeded sampling: its lengths follow measured times, so the same seed would not draw the same
    tokens twice (their distribution is the model's either way); "heuristic"'s lengths follow the draws alone."""
    return "heuristic" if do_sample and seed is not None else "cost"


def expected_tokens(a: float, k: int) -> float:
    """Tokens a round of k drafts keeps on average, the model's own one included, at per-token acceptance a."""
    return float(k + 1) if a >= 1.0 else (1.0 - a ** (k + 1)) / (1.0 - a)


def best_draft_length(a: float, d: float, v0: float, v1: float, k_max: int = K_MAX, k_min: int = 0) -> int:
    """The k in k_min..k_max with the most expected tokens per second, E(k) / (k d + v0 + v1 k); the smallest k on a
    tie. 0: the model alone pays more than any draft.

    a: per-token acceptance in [0, 1]; d: seconds of one draft step (>= 0); v0 + v1 k: seconds of the verification of k
    drafts (v0 > 0, v1 >= 0); 0 <= k_min <= k_max.
    """
    if not (0.0 <= a <= 1.0 and d >= 0.0 and v0 > 0.0 and v1 >= 0.0 and 0 <= k_min <= k_max):
        raise ValueError(f"best_draft_length: needs 0 <= a <= 1, d >= 0, v0 > 0, v1 >= 0 and 0 <= k_min <= k_max, "
                         f"got a={a}, d={d}, v0={v0}, v1={v1}, k_min={k_min}, k_max={k_max}.")
    return max(range(k_min, k_max + 1), key=lambda k: (expected_tokens(a, k) / (k * d + v0 + v1 * k), -k))


class DraftLength:
    """The draft length of each round of one assisted `generate` call: `next()` before a round, `update` after it."""

    def __init__(self, schedule: str, start: int) -> None:
        self.schedule = schedule
        self.start = self.k = start
        self.accepted = self.rejections = 0
        self.rounds = 0
        self.draft_steps = 0
        self.draft_seconds = 0.0
        # sums for the least-squares fit of the verification's seconds against k
        self.n = self.sk = self.skk = 0
        self.st = self.skt = 0.0
        self.alone = 0  # model-alone rounds in a row

    def acceptance(self) -> float:
        """The estimate of a, the per-token acceptance."""
        return (self.accepted + 1) / (self.accepted + self.rejections + 2)

    def verification(self) -> tuple[float, float]:
        """(v0, v1): seconds of the verification of k drafts, v0 + v1 k; only once a round was fitted."""
        v1 = 0.0
        if self.n * self.skk - self.sk**2 > 0:
            v1 = max(0.0, (self.n * self.skt - self.sk * self.st) / (self.n * self.skk - self.sk**2))
        v0 = (self.st - v1 * self.sk) / self.n
        return (v0, v1) if v0 > 0.0 else (self.st / self.n, 0.0)

    def next(self) -> int:
        """The number of tokens to draft this round (0: the model alone)."""
        if self.schedule != "cost" or self.n == 0 or self.draft_steps == 0:
            return self.k
        v0, v1 = self.verification()
        if v0 <= 0.0:  # a clock too coarse to see the verification: nothing to compare
            return self.k
        a, d = self.acceptance(), self.draft_seconds / self.draft_steps
        self.k = best_draft_length(a, d, v0, v1)
        self.alone = self.alone + 1 if self.k == 0 else 0
        if self.alone and self.alone % PROBE_EVERY == 0:
            self.k = best_draft_length(a, d, v0, v1, k_min=1)
        return self.k

    def update(self, drafted: int, accepted: int, draft_seconds: float, verify_seconds: float) -> None:
        """After a round: `drafted` tokens proposed, the batch kept `accepted` of them (<= drafted), the draft steps
        took `draft_seconds` and the verification with its acceptance `verify_seconds`."""
        self.rounds += 1
        if self.schedule == "heuristic":
            self.k = self.k + 2 if accepted == drafted else max(1, self.k - 1)
        if self.schedule != "cost":
            return
        self.accepted += accepted
        self.rejections += int(accepted < drafted)
        if self.rounds == 1:  # the first steps of both models: other graphs than the rounds to come
            return
        self.draft_steps += drafted
        self.draft_seconds += draft_seconds
        self.n += 1
        self.sk += drafted
        self.skk += drafted * drafted
        self.st += verify_seconds
        self.skt += drafted * verify_seconds
