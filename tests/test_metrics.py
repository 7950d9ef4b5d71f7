"""Properties of gpslib.metrics on fixed sentence pairs."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

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


def test_per_sample_scores_average_to_the_corpus_scores_and_rank_the_samples(scored):
    corpus, each = metrics.compute_metrics(PREDICTIONS, REFERENCES, per_sample=True)
    assert corpus == scored and len(each) == len(PREDICTIONS)
    assert set(each.columns) == {"bleu", "bertscore_f1", "meteor", "cider", "rouge_l"}
    for name in ("bleu", "bertscore_f1", "cider", "rouge_l"):
        assert each[name].mean() == pytest.approx(corpus[name], rel=1e-9), name
    for name in each.columns:  # the exact copy scores highest, the empty prediction lowest
        assert each[name].iloc[0] > each[name].iloc[1] >= each[name].iloc[2], name


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


@pytest.mark.parametrize(
    "predictions, references, match",
    [("abc", ["abd"], "predictions .* not a bare str"), (["abc"], "abd", "references .* not a bare str"),
     (b"abc", [b"abd"], "predictions .* not a bare bytes")],
)
def test_a_bare_string_is_rejected_naming_its_type(predictions, references, match):
    with pytest.raises(ValueError, match=match):
        metrics.compute_metrics(predictions, references)
    with pytest.raises(ValueError, match="list of strings"):
        metrics.paper_bleu(predictions, references)


CJK = ["红色的圆在左边。", "图片里有两个形状", "青い四角があります。"]


@pytest.fixture(scope="module")
def identical_cjk():
    return metrics.compute_metrics(CJK, CJK)


def test_identical_cjk_text_scores_one(identical_cjk):
    for name in ("bleu", "sacrebleu", "bertscore_f1", "meteor", "rouge_l"):
        assert identical_cjk[name] == pytest.approx(1.0, abs=1e-3), name


def test_cjk_characters_count_one_word_each():
    # 7 of 8 characters (with the full stop) and 5 of 7 character pairs agree
    pred, ref = "红色的圆在右边。", "红色的圆在左边。"
    assert metrics._RougeTokenizer().tokenize(pred) == list("红色的圆在右边")
    assert metrics.paper_bleu([pred], [ref]) == pytest.approx(math.sqrt(7 / 8 * 5 / 7), abs=1e-12)


def test_rouge_l_keeps_the_words_of_every_script():
    tok = metrics._RougeTokenizer()
    assert tok.tokenize("Красный круг, café_au lait") == ["красный", "круг", "café", "au", "lait"]
    assert tok.tokenize("नमस्ते दुनिया") == ["नमस्ते", "दुनिया"]  # vowel signs stay in their word


def test_rouge_l_tokens_of_ascii_text_are_rouge_scores_own():
    from rouge_score.tokenizers import DefaultTokenizer

    ours, theirs = metrics._RougeTokenizer(), DefaultTokenizer(use_stemmer=True)
    for text in PREDICTIONS + REFERENCES + ["Running_dogs ran 3.5 km; it's GREAT!!", "  x-ray\tA1b2 ", "~"]:
        assert ours.tokenize(text) == theirs.tokenize(text), text


def test_text_without_spaces_between_words_warns_plainly():
    with pytest.warns(UserWarning, match="without spaces between words"):
        metrics.paper_bleu(["แมวสีแดง"], ["แมวสีแดง"])


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


# --------------------------------------------------------------------------- METEOR failures
ROOT = Path(__file__).resolve().parents[1]


def _run_isolated(script: str, timeout: float = 300.0) -> list[dict]:
    """Run ``script`` in a fresh Python, in its own process group, and return the JSON lines it
    prints. Past ``timeout`` the whole group (Java included) is killed and the test fails: a
    regression to the old hang fails instead of stalling the suite."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"hung for {timeout:g} s; stdout {out[-2000:]!r}, stderr {err[-2000:]!r}")
    assert proc.returncode == 0, err[-3000:]
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_java_that_cannot_start_raises_naming_java_and_the_next_call_works(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "java").write_text("#!/bin/sh\necho 'fake java: cannot start' >&2\nexit 1\n")
    (fake / "java").chmod(0o755)
    first, second = _run_isolated(f"""
        import json, os
        from gpslib import metrics
        real = os.environ["PATH"]
        os.environ["PATH"] = {str(fake)!r} + os.pathsep + real
        try:
            metrics.compute_metrics(["a red circle"], ["a red circle"])
            print(json.dumps({{"error": None}}))
        except RuntimeError as e:
            print(json.dumps({{"error": str(e)}}))
        os.environ["PATH"] = real
        print(json.dumps(metrics.compute_metrics(["a red circle"], ["a red circle"])))
    """)
    assert first["error"] is not None and "Java" in first["error"] and str(fake / "java") in first["error"]
    assert second["meteor"] == pytest.approx(1.0, abs=1e-3)


def test_long_repetitive_text_scores_or_raises_naming_it_and_the_next_call_works():
    # 2100 words of "the red circle" as both prediction and reference: METEOR 1.5's aligner
    # runs for minutes (without a limit, for ever) on it.
    first, second = _run_isolated("""
        import json
        from gpslib import metrics
        metrics.METEOR_TIMEOUT_S = 5.0
        text = " ".join(["the red circle"] * 700)
        try:
            out = metrics.compute_metrics(["a blue square", text], ["a blue square", text])
            print(json.dumps({"error": None, "meteor": out["meteor"]}))
        except RuntimeError as e:
            print(json.dumps({"error": str(e)}))
        print(json.dumps(metrics.compute_metrics(["a red circle"], ["a red circle"])))
    """)
    if first["error"] is None:
        assert math.isfinite(first["meteor"])
    else:
        assert "sample 1" in first["error"] and "2100 words" in first["error"], first["error"]
    assert second["meteor"] == pytest.approx(1.0, abs=1e-3)
