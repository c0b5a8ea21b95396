"""The pretraining task: model + momentum encoders + losses + loss weights + the batch keys it reads.

Legend: B batch, E embed dim, S visual tokens, L text length.

Batch contract (one modality per batch, from the data plane): `pixels` uint8 `[B,3,H,W]` (image) or
`[B,T,3,H,W]` (video), `input_ids` int64 `[B,L]` starting with [CLS] and padded with 0, `attention_mask` int64
`[B,L]`, `label_id` int64 `[B]` (same id = same class; caption pairs have unique ids). Optional:
`prompt_len` int64 `[B]`, the number of leading tokens the LM loss does not train on (a QA question).

The task's `state_dict()` holds everything a resume needs from the model side: online and momentum weights,
the temperature, the queues with their pointers and fill counts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import torch
from torch import nn

from omnivl.losses import CaptionLoss, GatherFn, MatchingLoss, UniVLCLoss, identity_gather
from omnivl.losses.univlc import is_class_label
from omnivl.models.config import ModelConfig
from omnivl.models.omnivl import OmniVL, build_model
from omnivl.models.sizes import OmniVLArch
from omnivl.models.visual import VisualOutput

Modality = Literal["image", "video"]
BATCH_KEYS = ("pixels", "input_ids", "attention_mask", "label_id")
LOSS_NAMES = ("vlc", "vlm", "lm", "cls")


@dataclass
class TaskOutput:
    """`loss`: the weighted sum to backpropagate; `losses`: each objective (unweighted, 'vlc', 'vlm', 'lm', 'cls');
    `metrics`: floats for logging (temperature, queue_fill, vlm_accuracy, ...)."""

    loss: torch.Tensor
    losses: dict[str, torch.Tensor]
    metrics: dict[str, float] = field(default_factory=dict)


class MomentumEncoders(nn.Module):
    """EMA copies of the visual encoder, text encoder and both projections (no gradients).

    Deep copies of plain modules: gradient checkpointing is a forward-time switch in our encoders, not a wrapper,
    so the copies own separate tensors (the BLIP-family bug of momentum weights aliasing online ones cannot
    arise; a test checks it)."""

    def __init__(self, model: OmniVL) -> None:
        super().__init__()
        self.visual = copy.deepcopy(model.visual)
        self.text = copy.deepcopy(model.text)
        self.vision_proj = copy.deepcopy(model.vision_proj)
        self.text_proj = copy.deepcopy(model.text_proj)
        for p in self.parameters():
            p.requires_grad_(False)

    def pairs(self, model: OmniVL):
        for name in ("visual", "text", "vision_proj", "text_proj"):
            yield from zip(getattr(self, name).parameters(), getattr(model, name).parameters())

    @torch.no_grad()
    def update(self, model: OmniVL, momentum: float) -> None:
        for p_m, p in self.pairs(model):
            p_m.mul_(momentum).add_(p.detach(), alpha=1.0 - momentum)

    @torch.no_grad()
    def embed(self, pixels_normalized: torch.Tensor, input_ids_BL, attention_mask_BL):
        """(visual [B,E], text [B,E]) L2-normalized momentum features."""
        v_BE = self.vision_proj(self.visual(pixels_normalized).pooled_BD)
        t_BE = self.text_proj(self.text(input_ids_BL, attention_mask_BL).pooled_BD)
        return torch.nn.functional.normalize(v_BE, dim=-1), torch.nn.functional.normalize(t_BE, dim=-1)


class PretrainTask(nn.Module):
    """`task(batch, modality) -> TaskOutput`.

    In training mode the forward first moves the momentum encoders one EMA step towards the online ones (as BLIP
    does, so a train loop needs no extra call) and enqueues this batch's momentum features after computing the
    contrastive loss. Set `momentum_in_forward=False` to call `momentum_update()` yourself (e.g. once per
    optimizer step under gradient accumulation). Objectives with weight 0 are skipped (reported as 0). The LM
    loss leaves out rows of class-label sources (bit 62 of `label_id`) unless `lm_on_class_labels`; a batch of
    such rows only has LM loss 0. With `lm_detach_visual` it does not back-propagate into the visual encoder or
    its projection (`ModelConfig.lm_detach_visual`).

    `cls` is a supervised warm-up, not an OmniVL objective: cross-entropy of a linear head on the pooled visual
    feature over `classes` (class names of label sources; rows of other ids are left out). It stands in for the
    supervised ImageNet initialization the paper starts from, for runs that start from random weights: there
    the text encoder maps every class prompt to nearly the same feature, so UniVLC on label data alone sits at
    log(batch) and the visual side never learns classes that the mean of its patches does not show (shape).
    The head belongs to the task, not to the model: exports and the next stage leave it out."""

    batch_keys = BATCH_KEYS

    def __init__(self, model: OmniVL, vlc: UniVLCLoss, vlm: MatchingLoss, lm: CaptionLoss,
                 weights: Mapping[str, float] | Any | None = None, momentum: float = 0.995,
                 share_queues: bool = True, momentum_in_forward: bool = True,
                 lm_on_class_labels: bool = False, classes: list[str] | None = None,
                 lm_detach_visual: bool = False) -> None:
        super().__init__()
        self.lm_on_class_labels = lm_on_class_labels
        self.lm_detach_visual = lm_detach_visual
        self.model = model
        self.classes = list(classes or [])
        self.classifier = nn.Linear(model.visual.width, len(self.classes)) if self.classes else None
        if self.classifier is not None:
            from omnivl.data.text import label_id_for_class

            self.register_buffer("class_ids", torch.tensor([label_id_for_class(c) for c in self.classes]),
                                 persistent=False)
        self.momentum_encoders = MomentumEncoders(model)
        self.vlc, self.vlm, self.lm = vlc, vlm, lm
        self.momentum = momentum
        self.share_queues = share_queues
        self.momentum_in_forward = momentum_in_forward
        self.set_loss_weights(weights)

    def set_loss_weights(self, weights: Mapping[str, float] | Any | None) -> None:
        """Weights per objective: a mapping or a config with `vlc`/`vlm`/`lm`/`cls` fields (train's
        `LossWeights`). Missing ones default to 1, except `cls` (0: it needs `classes`)."""
        weights = weights or {}
        if not isinstance(weights, Mapping):
            weights = {k: getattr(weights, k) for k in LOSS_NAMES}
        unknown = set(weights) - set(LOSS_NAMES)
        if unknown:
            raise ValueError(f"unknown loss weights {sorted(unknown)}; known: {', '.join(LOSS_NAMES)}")
        self.loss_weights = {k: float(weights.get(k, 0.0 if k == "cls" else 1.0)) for k in LOSS_NAMES}
        if self.loss_weights["cls"] > 0 and getattr(self, "classifier", None) is None:
            raise ValueError("loss weight cls > 0 needs the class names of the label sources (`classes`)")

    def queue_key(self, modality: Modality) -> str:
        return "shared" if self.share_queues else modality

    @torch.no_grad()
    def start_from(self, model_state: Mapping[str, torch.Tensor]) -> None:
        """Load online model weights (a pretraining export, for fine-tuning); the momentum encoders start as
        copies of them and the queues stay empty. Raises RuntimeError if the tensors do not fit the model."""
        self.model.load_state_dict(model_state)
        self.momentum_encoders.update(self.model, momentum=0.0)

    @torch.no_grad()
    def momentum_update(self) -> None:
        self.momentum_encoders.update(self.model, self.momentum)

    def after_optimizer_step(self) -> None:
        """What the train loop calls after each optimizer step: the temperature's clamp (see
        `UniVLCLoss.clamp_temperature`)."""
        self.vlc.clamp_temperature()

    @property
    def uses_momentum(self) -> bool:
        """Whether a training forward moves the momentum encoders (only the contrastive and matching losses
        read them)."""
        return self.loss_weights["vlc"] > 0 or self.loss_weights["vlm"] > 0

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer should own (the momentum encoders are excluded)."""
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, batch: Mapping[str, torch.Tensor], modality: Modality) -> TaskOutput:
        pixels, ids_BL, mask_BL, labels_B = self._read(batch, modality)
        x = self.model.normalize_pixels(pixels, modality)
        vis = self.model.visual(x)
        if not self.uses_momentum:
            # language modelling only (captioning, QA fine-tuning): no embeddings, momentum step or queue
            zero = vis.tokens_BSD.new_zeros(())
            losses, metrics = {"vlc": zero, "vlm": zero}, {}
        else:
            losses, metrics = self._align(x, vis, ids_BL, mask_BL, labels_B, modality)
        losses["lm"] = self._lm(vis, ids_BL, mask_BL, labels_B, batch.get("prompt_len"))
        losses["cls"], accuracy = self._cls(vis.pooled_BD, labels_B)
        if accuracy is not None:
            metrics["cls_accuracy"] = accuracy
        total = sum(self.loss_weights[k] * losses[k] for k in LOSS_NAMES)
        return TaskOutput(loss=total, losses=losses, metrics=metrics)

    def _align(self, x, vis, ids_BL, mask_BL, labels_B, modality: Modality):
        """Contrastive (UniVLC) and matching losses, with the momentum step and the enqueue they imply."""
        if self.training and self.momentum_in_forward:
            self.momentum_update()
        v_BE = self.model.project_visual(vis.pooled_BD)
        t_BE = self.model.project_text(self.model.text_features(ids_BL, mask_BL).pooled_BD)
        v_m_BE, t_m_BE = self.momentum_encoders.embed(x, ids_BL, mask_BL)
        vlc = self.vlc(v_BE, t_BE, labels_B, v_m_BE, t_m_BE, self.queue_key(modality), enqueue=self.training)
        losses = {"vlc": vlc.loss}
        metrics = {"temperature": vlc.temperature, "queue_fill": vlc.queue_fill}
        losses["vlm"], metrics["vlm_accuracy"] = self._vlm(vis.tokens_BSD, ids_BL, mask_BL, labels_B, v_BE, t_BE)
        return losses, metrics

    def _vlm(self, tokens_BSD, ids_BL, mask_BL, labels_B, v_BE, t_BE):
        if self.loss_weights["vlm"] == 0:
            return tokens_BSD.new_zeros(()), float("nan")
        sim_BB = (v_BE @ t_BE.T).detach() / self.vlc.temp.detach()
        out = self.vlm(self.model.match_logits, tokens_BSD, ids_BL, mask_BL, labels_B, sim_BB)
        return out.loss, out.accuracy

    def _lm(self, vis: VisualOutput, ids_BL, mask_BL, labels_B, prompt_len_B=None):
        tokens_BSD = vis.tokens_BSD
        if self.loss_weights["lm"] == 0:
            return tokens_BSD.new_zeros(())
        if prompt_len_B is not None:
            prompt_len_B = prompt_len_B.to(ids_BL.device, torch.long)
        if not self.lm_on_class_labels:
            # the captioner learns from captions (and QA answers), not from class-name prompts
            keep_B = ~is_class_label(labels_B)
            if not bool(keep_B.any()):
                return tokens_BSD.new_zeros(())
            if not bool(keep_B.all()):
                tokens_BSD, ids_BL, mask_BL = tokens_BSD[keep_B], ids_BL[keep_B], mask_BL[keep_B]
                prompt_len_B = None if prompt_len_B is None else prompt_len_B[keep_B]
        logits_BLV = self.model.lm_logits(tokens_BSD, ids_BL, mask_BL, detach_visual=self.lm_detach_visual,
                                          is_video=vis.is_video)
        return self.lm(logits_BLV, ids_BL, mask_BL, prompt_len_B)

    def _cls(self, pooled_BD: torch.Tensor, labels_B: torch.Tensor):
        """(cross-entropy over `classes` of the rows whose id is one of them, their accuracy or None)."""
        if self.loss_weights["cls"] == 0:
            return pooled_BD.new_zeros(()), None
        hit_BK = labels_B[:, None] == self.class_ids[None]
        keep_B = hit_BK.any(dim=1)
        if not bool(keep_B.any()):
            # no labelled row in this batch: a zero that still touches the head, so DDP sees its gradient
            return 0.0 * self.classifier(pooled_BD[:1]).sum(), None
        logits_BK = self.classifier(pooled_BD[keep_B])
        target_B = hit_BK[keep_B].float().argmax(dim=1)
        accuracy = float((logits_BK.argmax(dim=1) == target_B).float().mean())
        return nn.functional.cross_entropy(logits_BK.float(), target_B), accuracy

    def _read(self, batch: Mapping[str, torch.Tensor], modality: Modality):
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise KeyError(f"{modality} batch lacks {missing}; the task reads {list(BATCH_KEYS)}")
        device = self.model.pixel_mean.device
        ids_BL = batch["input_ids"].to(device, torch.long)
        mask_BL = batch["attention_mask"].to(device, torch.long)
        return batch["pixels"], ids_BL, mask_BL, batch["label_id"].to(device, torch.long)


def build_task(cfg: ModelConfig, weights: Mapping[str, float] | Any | None = None,
               gather_fn: GatherFn = identity_gather, load_pretrained: bool = True,
               classes: list[str] | None = None) -> PretrainTask:
    """Model (initialized from `cfg.init` when `load_pretrained`), momentum encoders and the losses
    (`classes`: the label classes of the supervised `cls` warm-up, if the stage has one)."""
    built = build_model(cfg, load_pretrained=load_pretrained)
    return task_for(built.model, built.arch, cfg, weights, gather_fn, classes)


def task_for(model: OmniVL, arch: OmniVLArch, cfg: ModelConfig, weights=None,
             gather_fn: GatherFn = identity_gather, classes: list[str] | None = None) -> PretrainTask:
    keys = ("shared",) if cfg.share_queues else ("image", "video")
    vlc = UniVLCLoss(arch.embed_dim, arch.queue_size, keys, cfg.temp_init, cfg.temp_min, cfg.temp_max, gather_fn,
                     cross_kind=cfg.class_caption_pairs)
    return PretrainTask(model, vlc, MatchingLoss(cfg.class_caption_pairs), CaptionLoss(cfg.label_smoothing), weights,
                        momentum=cfg.momentum, share_queues=cfg.share_queues,
                        lm_on_class_labels=cfg.lm_on_class_labels, classes=classes,
                        lm_detach_visual=cfg.lm_detach_visual)
