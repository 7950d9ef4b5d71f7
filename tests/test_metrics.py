"""Properties of gpslib.metrics on fixed sentence pairs."""

import math

import pytest
import torch

from gpslib import metrics

PREDICTIONS = ["The red circle is on the left.", "There are two shapes in the picture.", ""]
REFERENCES = ["The red circle is on the left.", "I can see three shapes in the image.", "A blue square."]


@pytest.fixture(scope="module")
def scored():
    return metrics.compute_metrics(PREDICTIONS, REFERENCES)


@pytest.fixture(scope="module")
def identical():
    return metrics.compute_metrics(REFERENCES, REFERENCES)


def test_paper_bleu_matches_the_hand_computed_value():
    # p1 = 3/4, p2 = 2/3, equal lengths: BLEU = sqrt(3/4 * 2/3)
    assert metrics.paper_bleu(["A b c d"], ["a B c e"]) == pytest.approx(math.sqrt(0.5), abs=1e-12)


def test_every_metric_is_reported_and_finite(scored):
    assert list(scored) == list(metrics.METRIC_NAMES)
    assert all(math.isfinite(v) for v in scored.values())


def test_identical_texts_score_about_one(identical):
    for name in ("bleu", "sacrebleu", "bertscore_f1", "meteor", "rouge_l"):
        assert identical[name] == pytest.approx(1.0, abs=1e-3), name


def test_imperfect_predictions_score_below_identical_ones(scored, identical):
    for name in metrics.METRIC_NAMES:
        assert scored[name] < identical[name], name


def test_rouge_and_sacrebleu_agree_with_their_packages(scored):
    import sacrebleu
    from rouge_score import rouge_scorer

    r = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = sum(r.score(b, a)["rougeL"].fmeasure for a, b in zip(PREDICTIONS, REFERENCES)) / 3
    assert scored["rouge_l"] == pytest.approx(expected, abs=1e-12)
    assert scored["sacrebleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score / 100, abs=1e-12)


@pytest.mark.parametrize(
    "predictions, references, match",
    [
        (["a"], ["a", "b"], "1 predictions and 2 references"),
        ([], [], "empty"),
        (["a", None], ["a", "b"], "entry 1 is NoneType"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(predictions, references, match):
    with pytest.raises(ValueError, match=match):
        metrics.compute_metrics(predictions, references)


def test_missing_java_raises_an_error_naming_java(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="Java"):
        metrics.require_java()


class _Echo(torch.nn.Module):
    """Predicts a fixed distribution over a 3-token vocabulary; its loss is the mean shifted CE."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits))

    def forward(self, input_ids, labels, attention_mask=None):
        b, t = input_ids.shape
        logits = self.logits.expand(b, t, -1)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, 3), labels[:, 1:].reshape(-1), ignore_index=-100)
        return type("Out", (), {"logits": logits, "loss": loss})()


def test_validation_loss_weighs_every_label_token_once():
    model = _Echo([0.0, 0.0, math.log(2.0)])  # p = (1/4, 1/4, 1/2)
    batches = [
        {"input_ids": torch.zeros(1, 3, dtype=torch.long), "labels": torch.tensor([[-100, 2, 2]])},
        {"input_ids": torch.zeros(1, 2, dtype=torch.long), "labels": torch.tensor([[-100, 0]])},
    ]
    expected = (2 * math.log(2.0) + math.log(4.0)) / 3
    assert metrics.validation_loss(model, batches) == pytest.approx(expected, abs=1e-6)


def test_validation_loss_without_labels_raises():
    model = _Echo([0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="no label tokens"):
        metrics.validation_loss(model, [{"input_ids": torch.zeros(1, 2, dtype=torch.long), "labels": torch.full((1, 2), -100)}])
