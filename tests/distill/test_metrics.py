import pytest

from distill.metrics import score


def test_score_bleu_multi_reference_and_rouge():
    perfect = score(["le roi dit au peuple de partir"], [["le roi dit au peuple de partir"]], "bleu")
    assert perfect["bleu"] == pytest.approx(100) and perfect["chrf"] == pytest.approx(100)
    single = score(["le roi parla au peuple de partir"], [["le roi dit au peuple de partir"]], "bleu")
    multi = score(["le roi parla au peuple de partir"],
                  [["le roi dit au peuple de partir", "le roi parla au peuple de partir"]], "bleu")
    assert multi["bleu"] > single["bleu"]
    rouge = score(["the cats sat"], [["the cat sat"]], "rouge")
    assert rouge["rouge1"] == pytest.approx(100)  # stemming: cats -> cat
    assert set(rouge) == {"rouge1", "rouge2", "rougeL"}
