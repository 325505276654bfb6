import itertools
import math

import pytest

from distill.schedule import lr_lambda


def test_lr_schedule_warms_up_then_decays():
    values = [lr_lambda(s, 10, 100, "linear", 0.1) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(values[9:]))
    assert values[-1] == pytest.approx(0.1, abs=0.02)
    assert lr_lambda(99, 10, 100, "cosine", 0.0) == pytest.approx(0.0, abs=1e-3)
    assert lr_lambda(39, 10, 100, "inverse_sqrt", 0.0) == pytest.approx(math.sqrt(10 / 40))
