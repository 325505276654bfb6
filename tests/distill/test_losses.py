import pytest
import torch

from distill.losses import default_hidden_pairs, distill_kl, hidden_mse, label_smoothed_ce


def test_kl_is_zero_for_identical_logits_and_positive_otherwise():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)  # (B, T, V)
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert distill_kl(logits, logits, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert distill_kl(logits, torch.randn(2, 5, 11), mask).item() > 0


def test_kl_ignores_masked_positions_and_scales_with_t_squared():
    torch.manual_seed(1)
    s, t = torch.randn(1, 4, 7), torch.randn(1, 4, 7)
    mask = torch.tensor([[True, True, False, False]])
    changed = t.clone()
    changed[0, 2:] += 5.0  # only masked positions differ
    assert distill_kl(s, t, mask).item() == pytest.approx(distill_kl(s, changed, mask).item())
    # T^2 factor: at large T, KL(p/T||q/T) ~ ||ds||^2 / (2 T^2 V) ..., so T^2 * KL tends to a constant
    assert distill_kl(s, t, mask, 50.0).item() == pytest.approx(distill_kl(s, t, mask, 100.0).item(), rel=0.05)


def test_losses_of_an_all_padding_batch_are_zero_not_nan():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    kl = distill_kl(logits, torch.randn(2, 3, 5), mask)
    hid = hidden_mse([torch.randn(2, 3, 4)], [torch.randn(2, 3, 4)], mask)
    ce = label_smoothed_ce(logits, torch.full((2, 3), -100), 0.1)
    for value in (kl, hid, ce):
        assert torch.isfinite(value) and value.item() == 0.0
    ce.backward()  # still differentiable
    assert logits.grad is not None and logits.grad.abs().sum() == 0


def test_hidden_mse_masks_and_normalizes():
    torch.manual_seed(2)
    h = torch.randn(2, 3, 8)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert hidden_mse([h], [h.clone()], mask).item() == pytest.approx(0.0, abs=1e-6)
    other = h.clone()
    other[:, 2] += 10  # masked position
    other[1, 1] += 10
    assert hidden_mse([h], [other], mask).item() == pytest.approx(0.0, abs=1e-6)
    assert hidden_mse([h], [3 * h], mask, normalize=True).item() == pytest.approx(0.0, abs=1e-4)
    assert hidden_mse([h], [3 * h], mask, normalize=False).item() > 1.0
    with pytest.raises(ValueError, match="as many"):
        hidden_mse([h, h], [h], mask)


def test_default_hidden_pairs_follow_the_copied_layers():
    assert default_hidden_pairs([0, 5], 6) == [(0, 4), (1, 5)]
    assert default_hidden_pairs([0, 2, 4, 7, 9, 11], 12) == [(0, 1), (1, 3), (2, 6), (3, 8), (4, 10), (5, 11)]
    assert default_hidden_pairs([0], 6) == [(0, 5)]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_label_smoothed_ce_is_torch_mean_over_kept_tokens(smoothing):
    torch.manual_seed(3)
    logits, labels = torch.randn(2, 4, 7), torch.randint(0, 7, (2, 4))
    labels[0, 2:] = -100
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100,
                                                 label_smoothing=smoothing)
    assert label_smoothed_ce(logits, labels, smoothing).item() == pytest.approx(expected.item(), rel=1e-6)
