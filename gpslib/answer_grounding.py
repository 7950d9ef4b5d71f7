"""The answer grounding loss: one attention head is told where the objects a question names are.

Why (the search for a base model that sees; notebook 00): trained on the language loss alone,
the embedded base model learns to *retrieve* (the shape of the red object: 0.945 of the test
questions in the record's ``rerun-recipe``) but never to *detect*: it gives one answer to every
existence and relation question and answers "zero" to
every count of a named colour or shape. Whether "a red square" is in the image depends on the
image only through an interaction of the question's words with the patches (some patch is red
*and* square): at the start of training neither the attention that would find that patch nor
the read-out that would use what it found carries any signal, so the gradient that would align
them is near zero and the yes/no token's loss stays at ln 2 (the trials in
``records/base_model_trials.csv``: wider, deeper, more heads, other learning rates, reweighted
answer tokens, one-attribute questions, chain-of-thought answers all stayed there). A retrieval
answer (a shape name) has a signal from the first step: it is one of the shapes in the image.

The loss gives one head that signal directly. While the model writes its answer (every position
whose next token is labelled), head ``head`` of the last language-model layer should put its
attention on the patches of the objects the question names (ShapesVQA's ``mentions``: for
"Is there a red square?" the red square's patches when it is there, nothing when it is not; for
"What shape is the red object?" the red object's). The loss is the mean over those positions of
``-log(attention mass on the named objects' patches)``, over the rows that name an object in the
image (a row that names none adds nothing). It is added to the language loss with a weight
(:class:`gpslib.pretrain.PretrainConfig` ``grounding_loss``). Nothing changes at inference: the
model is a plain LLaVA, evaluated like any other. Where image tokens sit at positions other than
their place in ``input_ids`` (a reordering model), the masks would not line up, so the loss is
for the image-first layout only.
"""

from __future__ import annotations

import torch

from gpslib.checkpoints import ResumableTrainer
from gpslib.chat_format import IGNORE_INDEX
from gpslib.generation import unwrap_model

__all__ = ["answer_positions", "answer_grounding_loss", "check_head", "GroundingTrainer"]


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: True at the positions whose next token is labelled (they predict the answer)."""
    out = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    out[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return out


def answer_grounding_loss(attention: torch.Tensor, labels: torch.Tensor, input_ids: torch.Tensor,
                          image_token_id: int, mentioned: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean ``-log`` attention mass on the named objects' patches, over answer positions.

    attention: (B, L, L) one head's attention probabilities (rows: queries); labels, input_ids:
    (B, L); mentioned: (B, M) bool, True on the patches of the objects the question names, in
    the order of the image tokens in ``input_ids`` (each row has exactly M of them). Rows with
    no named patch are left out; returns 0 (with a gradient path) when no row names one.
    """
    if attention.ndim != 3 or attention.shape[0] != labels.shape[0] or attention.shape[1:] != (labels.shape[1],) * 2:
        raise ValueError(f"attention must be (B, L, L) for labels of shape {tuple(labels.shape)}; "
                         f"got {tuple(attention.shape)}")
    image = input_ids == image_token_id
    per_row = image.sum(1)
    if not bool((per_row == mentioned.shape[1]).all()):
        raise ValueError(f"every row needs exactly M={mentioned.shape[1]} image tokens to line up with mentioned; "
                         f"got {per_row.tolist()}")
    target = torch.zeros(image.shape, dtype=attention.dtype, device=attention.device)
    target[image] = mentioned.reshape(-1).to(attention.dtype)
    rows = (answer_positions(labels) & mentioned.any(1, keepdim=True))
    if not bool(rows.any()):
        return attention.sum() * 0.0
    mass = (attention * target[:, None, :]).sum(-1)  # (B, L): mass on the named patches per query
    return -(mass[rows] + eps).log().mean()


def check_head(num_heads: int, head: int) -> None:
    """Raise ValueError naming ``head`` unless it is one of the last layer's ``num_heads`` heads."""
    if not 0 <= head < num_heads:
        raise ValueError(f"grounding head {head} does not exist: the last layer has {num_heads} heads")


class GroundingTrainer(ResumableTrainer):
    """``ResumableTrainer`` whose loss adds ``weight`` x :func:`answer_grounding_loss` of head ``head`` of the last layer.

    ``image_token_id``: the ``<image>`` token's id in ``input_ids``. The batch carries ``mentioned_patches`` (:class:`gpslib.data.VQACollator` with
    ``mentioned=True``). The trainer checks ``head`` (:func:`check_head`) and switches the model to
    eager attention (the others return no probabilities). Each logged step carries its (unweighted) grounding loss as
    ``grounding_loss`` beside the (weighted, total) ``loss`` in ``state.log_history``.
    """

    # compute_loss returns a mean over this micro-batch: Trainer divides it by the gradient-accumulation steps
    loss_is_scaled_for_ga = False

    def __init__(self, *args, weight: float, head: int, image_token_id: int, **kwargs):
        super().__init__(*args, **kwargs)
        inner = unwrap_model(self.model)
        check_head(inner.config.text_config.num_attention_heads, head)
        inner.set_attn_implementation("eager")  # the loss reads attention probabilities
        self.weight, self.head, self.image_token_id = weight, head, image_token_id
        self._grounding: list[float] = []  # since the last log

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mentioned = inputs.pop("mentioned_patches")
        outputs = model(**inputs, output_attentions=True)
        if outputs.attentions is None or outputs.attentions[-1] is None:
            raise ValueError("the grounding loss needs attention probabilities: set the model's attention "
                             "implementation to 'eager'")
        grounding = answer_grounding_loss(outputs.attentions[-1][:, self.head], inputs["labels"], inputs["input_ids"],
                                          self.image_token_id, mentioned)
        self._grounding.append(float(grounding.detach()))
        loss = outputs.loss + self.weight * grounding
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self._grounding:
            logs["grounding_loss"] = sum(self._grounding) / len(self._grounding)
            self._grounding = []
        super().log(logs, *args, **kwargs)
