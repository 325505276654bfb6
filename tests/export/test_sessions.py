"""`export.runtime.sessions.session_options`: when each session's worker threads spin-wait for work."""

from __future__ import annotations

import pytest

from export.runtime.sessions import session_options


def config_entry(options, key):
    """The entry `key` of `options`, None where it was not set (onnxruntime raises then)."""
    try:
        return options.get_session_config_entry(key)
    except RuntimeError:
        return None


@pytest.mark.parametrize(("spin", "allowed", "stopped"), [("always", "1", None), ("in_run", "1", "1"),
                                                          ("never", "0", None)])
def test_spin_modes(spin, allowed, stopped):
    """"in_run": the pool spins between a run's nodes and onnxruntime stops it when the run returns, so that it takes
    no core from the next session's run; "always" spins on after the run, "never" not even within it."""
    options = session_options(2, spin=spin)
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == allowed
    assert config_entry(options, "session.force_spinning_stop") == stopped


def test_unknown_spin_mode_is_named():
    with pytest.raises(ValueError, match="spin must be one of always, in_run, never, got 'sometimes'"):
        session_options(2, spin="sometimes")  # type: ignore[arg-type]
