"""DialogueRNN: an attentive RNN for emotion detection in conversations (Majumder et al., AAAI 2019).

Majumder, Poria, Hazarika, Mihalcea, Gelbukh, Cambria. "DialogueRNN: An Attentive RNN for
Emotion Detection in Conversations." AAAI 2019 (code: github.com/declare-lab/conv-emotion,
``DialogueRNN/model.py`` ``BiModel``, trained by ``train_IEMOCAP.py``). A baseline of most
later ERC papers.

Pipeline:

1. Utterance representation ``u_t``. The paper's multimodal setting concatenates the
   utterance's text, audio and visual features. merc encodes each modality with its own
   encoder, by default a ``linear`` map as wide as its features (``code_size``), and
   concatenates the codes in :meth:`DialogueRNN.fuse`: the recurrence reads the same
   concatenation up to a per-modality invertible linear reparameterisation (no
   bottleneck), and each modality has its own parameters, as merc's model contract asks.
2. The recurrence (:class:`merc.models.layers.party_rnn.PartyRNN`): a global GRU, a party
   GRU per speaker turn with attention over the previous global states, optionally a
   listener GRU (``listener_state``: the paper's DialogueRNN_l), an emotion GRU.
3. ``bidirectional``: BiDialogueRNN, a second recurrence (own parameters) over each
   dialogue reversed, ``e_t = e_t^fwd || e_t^bwd``.
4. ``emotion_attention``: DialogueRNN+Att, each utterance attends over the emotion states
   of all utterances of its dialogue, ``beta_t = softmax(e_t^T W_beta [e_1 .. e_N])``,
   ``e~_t = beta_t [e_1 .. e_N]^T`` (the code's ``general2`` attention, with a bias;
   merc scales the scores by ``1 / sqrt(width)``, ``scaled_emotion_attention``).
5. Classifier: ``l_t = ReLU(W_l e~_t + b_l)``, dropout, ``softmax(W_smax l_t + b_smax)``.

With both switches on (the defaults) this is BiDialogueRNN+Att, the paper's best variant
and the model ``train_IEMOCAP.py`` trains.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from merc.data.batching import Batch
from merc.errors import ConfigError
from merc.models.base import MercModel
from merc.models.layers.encoders import EncoderSpec, build_encoder, encoder_kinds
from merc.models.layers.party_rnn import PartyRNN, reverse_padded
from merc.models.output import ModelOutput
from merc.models.registry import register_model

#: The paper concatenates the modalities' features: one linear map per modality here.
DIALOGUERNN_ENCODERS: dict[str, str] = {"t": "linear", "a": "linear", "v": "linear"}


@register_model("dialoguernn")
class DialogueRNN(MercModel):
    """DialogueRNN (Majumder et al., 2019): global, party and emotion GRUs; BiDialogueRNN+Att.

    Defaults are the authors' IEMOCAP script (``train_IEMOCAP.py``).

    Args:
        in_dims: Feature dim per modality, e.g. ``{"t": 100, "a": 100, "v": 512}``.
        num_classes: Number of classes.
        global_size: Global state width ``D_g``. Default 500 (script ``D_g``).
        party_size: Party state width ``D_p``. Default 500 (script ``D_p``).
        emotion_size: Emotion state width ``D_e`` per direction. Default 300 (script ``D_e``).
        hidden_size: Classifier hidden width ``D_h`` per direction (the code's ``BiModel``
            has ``Linear(2 D_e, 2 D_h)``). Default 300 (script ``D_h``).
        listener_state: Update listeners with a listener GRU (paper's DialogueRNN_l).
            Default ``False`` (the paper's DialogueRNN; script ``--active-listener`` off).
        bidirectional: BiDialogueRNN. Default ``True`` (the script trains ``BiModel``).
        emotion_attention: Attention over the dialogue's emotion states before the
            classifier (DialogueRNN+Att). Default ``True`` (the script's ``att2=True``).
        scaled_emotion_attention: Divide the emotion attention's scores by
            ``sqrt(D_e * directions)`` (Vaswani et al.'s scaling; neither the paper nor the
            code has it). Default ``True``: a constant factor on ``W_beta`` and its bias,
            so the model's functions are the same, but with Adam an update moves every
            entry of the bilinear form (``600 x 600`` at the defaults) by about the
            learning rate, which
            moves the scores by about ``lr * (sum_i |e_i|)^2``: unscaled, one step
            saturates the softmax onto arbitrary utterances and its gradient vanishes (on
            the shared suite's tiny overfitting set, one seed, the unscaled model reaches
            66% training accuracy in 60 epochs at lr 3e-3 and 84% in 200 at the code's
            1e-4; scaled, 100% in both). ``False`` is the code's score.
        context_attention: Score of the attention over the previous global states:
            ``"general"`` (eq. 3, ``u_t^T W_alpha g_j``; script ``--attention general``)
            or ``"simple"`` (the code's ``w^T g_j``).
        dropout: Dropout on the classifier's hidden layer. Default 0.1 (script ``--dropout``).
        recurrent_dropout: Dropout on every new global, party and emotion state inside the
            recurrence. Default 0.1 (script ``--rec-dropout``).
        emotion_dropout: Dropout on the emotion states before the attention and the
            classifier. Default 0.25 (the code's ``dropout + 0.15``).
        encoders: Encoder kind per modality; default :data:`DIALOGUERNN_ENCODERS`.
        code_size: Width of each modality's code; ``None`` (default) makes it the
            modality's feature dim, so ``u_t`` is as wide as the concatenated features.
        unimodal_heads: Linear probes per modality on the codes (no effect on training).

    Shapes:
        - input: ``batch.features[m]`` ``[B, T, d_m]``, ``batch.parties`` ``[B, T]``
        - output: ``logits`` ``[N, C]``; ``embeddings`` ``[N, D_e * directions]``
    """

    def __init__(
        self,
        in_dims: Mapping[str, int],
        num_classes: int,
        global_size: int = 500,
        party_size: int = 500,
        emotion_size: int = 300,
        hidden_size: int = 300,
        listener_state: bool = False,
        bidirectional: bool = True,
        emotion_attention: bool = True,
        scaled_emotion_attention: bool = True,
        context_attention: Literal["general", "simple"] = "general",
        dropout: float = 0.1,
        recurrent_dropout: float = 0.1,
        emotion_dropout: float = 0.25,
        encoders: EncoderSpec = None,
        code_size: int | None = None,
        unimodal_heads: bool = True,
    ) -> None:
        super().__init__(in_dims, num_classes, unimodal_heads=unimodal_heads)
        sizes = {
            "global_size": global_size,
            "party_size": party_size,
            "emotion_size": emotion_size,
            "hidden_size": hidden_size,
        }
        for key, size in sizes.items():
            if size < 1:
                raise ConfigError(f"dialoguernn {key} must be >= 1, got {size}")
        if code_size is not None and code_size < 1:
            raise ConfigError(f"dialoguernn code_size must be >= 1 or null, got {code_size}")
        kinds = encoder_kinds(encoders, self.modalities, DIALOGUERNN_ENCODERS, "dialoguernn")
        built = {m: build_encoder(kinds[m], d, code_size or d) for m, d in self.in_dims.items()}
        self.add_encoders(built, {m: enc.output_size for m, enc in built.items()})
        fused = sum(self.code_dims.values())
        directions = 2 if bidirectional else 1

        def recurrence() -> PartyRNN:
            return PartyRNN(
                fused, global_size, party_size, emotion_size, listener_state, context_attention, recurrent_dropout
            )

        self.forward_rnn = recurrence()
        self.backward_rnn = recurrence() if bidirectional else None
        width = emotion_size * directions
        self.emotion_drop = nn.Dropout(emotion_dropout)
        self.emotion_attention = nn.Linear(width, width) if emotion_attention else None  # W_beta
        self.score_scale = width**-0.5 if scaled_emotion_attention else 1.0
        self.hidden = nn.Linear(width, hidden_size * directions)
        self.drop = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_size * directions, num_classes)

    def fuse(self, batch: Batch, codes: Mapping[str, Tensor]) -> ModelOutput:
        """Concatenated codes -> (Bi)DialogueRNN -> attention over emotion states -> classifier."""
        u = batch.unflatten(torch.cat([codes[m] for m in self.modalities], dim=-1))  # [B, T, D_m]
        emotions = self.forward_rnn(u, batch.parties, batch.lengths)  # [B, T, D_e]
        if self.backward_rnn is not None:
            rev = self.backward_rnn(
                reverse_padded(u, batch.lengths), reverse_padded(batch.parties, batch.lengths), batch.lengths
            )
            emotions = torch.cat([emotions, reverse_padded(rev, batch.lengths)], dim=-1)
        emotions = self.emotion_drop(emotions)
        if self.emotion_attention is not None:
            # Every utterance attends over all real utterances of its dialogue (past and future).
            score = torch.bmm(self.emotion_attention(emotions), emotions.transpose(1, 2))  # [B, T, T]
            score = score * self.score_scale
            score = score.masked_fill(~batch.mask[:, None, :], torch.finfo(score.dtype).min)
            emotions = torch.bmm(F.softmax(score, dim=-1), emotions)
        rep = batch.flatten(emotions)  # [N, D_e * directions]
        logits = self.output(self.drop(F.relu(self.hidden(rep))))
        return ModelOutput(logits=logits, embeddings=rep)
