"""The OmniVL model, composed by injection, and its inference API (what evaluation and serving call).

Legend: B batch, T frames, L text length, S visual tokens, D width, E shared embedding dim, N new tokens.

Pixels enter as the data plane produces them: uint8 RGB, `[B,3,H,W]` (image) or `[B,T,3,H,W]` (video); they
are converted to float and normalized with ImageNet mean/std here, on the model's device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from omnivl.models import generation
from omnivl.models.bert import AlignmentDecoder, GenerationDecoder, TextEncoder, TextOutput
from omnivl.models.config import ModelConfig, TokenIds
from omnivl.models.sizes import OmniVLArch, resolve_arch
from omnivl.models.visual import VisualEncoder, VisualOutput

Modality = Literal["image", "video"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class OmniVL(nn.Module):
    """Visual encoder + text encoder + alignment decoder + generation decoder + projections to the shared space.

    `gen_decoder` must have been built with `shared_from=align_decoder` (all but self-attention shared)."""

    def __init__(self, visual: VisualEncoder, text: TextEncoder, align_decoder: AlignmentDecoder,
                 gen_decoder: GenerationDecoder, embed_dim: int, tokens: TokenIds = TokenIds()) -> None:
        super().__init__()
        self.visual = visual
        self.text = text
        self.align_decoder = align_decoder
        self.gen_decoder = gen_decoder
        self.vision_proj = nn.Linear(visual.width, embed_dim)
        self.text_proj = nn.Linear(text.width, embed_dim)
        for proj in (self.vision_proj, self.text_proj):
            nn.init.normal_(proj.weight, std=proj.in_features**-0.5)
            nn.init.zeros_(proj.bias)
        self.tokens = tokens
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    # ---- features -------------------------------------------------------------------------------------------

    def normalize_pixels(self, pixels: torch.Tensor, modality: Modality | None = None) -> torch.Tensor:
        """uint8 `[B,3,H,W]`/`[B,T,3,H,W]` -> normalized float. Raises ValueError on a wrong dtype or rank."""
        if pixels.dtype != torch.uint8:
            raise ValueError(f"pixels must be uint8 RGB (the data plane's contract), got {pixels.dtype}")
        expected = {"image": 4, "video": 5}.get(modality or "", pixels.dim())
        if pixels.dim() != expected or pixels.dim() not in (4, 5):
            raise ValueError(f"{modality or 'pixels'}: expected rank {expected} (4 image, 5 video), got {tuple(pixels.shape)}")
        x = pixels.to(self.pixel_mean.device, non_blocking=True).float().div_(255.0)
        return (x - self.pixel_mean) / self.pixel_std

    def visual_features(self, pixels: torch.Tensor, modality: Modality | None = None) -> VisualOutput:
        return self.visual(self.normalize_pixels(pixels, modality))

    def text_features(self, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor) -> TextOutput:
        return self.text(input_ids_BL, attention_mask_BL)

    def project_visual(self, pooled_BD: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_proj(pooled_BD), dim=-1)

    def project_text(self, pooled_BD: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(pooled_BD), dim=-1)

    # ---- inference API --------------------------------------------------------------------------------------

    def encode_visual(self, pixels: torch.Tensor, modality: Modality | None = None) -> torch.Tensor:
        """L2-normalized visual embedding [B, E] (rank 4: image, rank 5: video)."""
        return self.project_visual(self.visual_features(pixels, modality).pooled_BD)

    def encode_image(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:
        return self.encode_visual(pixels_BCHW, "image")

    def encode_video(self, pixels_BTCHW: torch.Tensor) -> torch.Tensor:
        return self.encode_visual(pixels_BTCHW, "video")

    def encode_text(self, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor) -> torch.Tensor:
        """L2-normalized text embedding [B, E]; ids start with [CLS]."""
        return self.project_text(self.text_features(input_ids_BL, attention_mask_BL).pooled_BD)

    def match_logits(self, visual_tokens_BSD, input_ids_BL, attention_mask_BL) -> torch.Tensor:
        return self.align_decoder(input_ids_BL, attention_mask_BL, visual_tokens_BSD)

    def match_prob(self, visual: torch.Tensor | VisualOutput, input_ids_BL: torch.Tensor,
                   attention_mask_BL: torch.Tensor, modality: Modality | None = None) -> torch.Tensor:
        """Probability [B] that visual i and text i match, from the alignment decoder's head. `visual` is uint8
        pixels or a `VisualOutput` computed once (retrieval re-ranking reuses it across texts)."""
        if not isinstance(visual, VisualOutput):
            visual = self.visual_features(visual, modality)
        return self.match_logits(visual.tokens_BSD, input_ids_BL, attention_mask_BL).softmax(-1)[:, 1]

    def lm_logits(self, visual_tokens_BSD, input_ids_BL, attention_mask_BL, detach_visual: bool = False,
                  is_video: bool = False) -> torch.Tensor:
        """Next-token logits; `detach_visual`: no gradient reaches the visual encoder or its projection."""
        if detach_visual:
            visual_tokens_BSD = visual_tokens_BSD.detach()
        embedding_BE = None
        if self.gen_decoder.visual_prefix is not None:
            # token 0 is the visual representation (VisualOutput), so this is the item's contrastive embedding
            embedding_BE = self.project_visual(visual_tokens_BSD[:, 0])
            embedding_BE = embedding_BE.detach() if detach_visual else embedding_BE
        return self.gen_decoder(input_ids_BL, attention_mask_BL, visual_tokens_BSD, embedding_BE, is_video)

    @torch.no_grad()
    def generate(self, pixels: torch.Tensor | VisualOutput, modality: Modality | None = None,
                 prompt_ids: torch.Tensor | None = None, method: Literal["greedy", "beam", "nucleus"] = "greedy",
                 max_new_tokens: int = 30, num_beams: int = 3, top_p: float = 0.9, temperature: float = 1.0,
                 min_new_tokens: int = 0, length_penalty: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Generated token ids [B, N] after the prompt, ending before the first [EOS], padded with PAD.

        `prompt_ids`: ids that follow the [DEC] start token, without [CLS]/[SEP]: `[P]` (same for every row) or
        `[B, P]` right-padded with PAD (rows are then generated in groups of equal prompt length)."""
        visual = pixels if isinstance(pixels, VisualOutput) else self.visual_features(pixels, modality)
        B = visual.tokens_BSD.shape[0]
        prompts = _prompt_rows(prompt_ids, B, self.tokens.pad, visual.tokens_BSD.device)
        decode = dict(method=method, max_new=max_new_tokens, num_beams=num_beams, top_p=top_p,
                      temperature=temperature, min_new=min_new_tokens, length_penalty=length_penalty,
                      generator=generator)
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(len(p), []).append(i)
        out = [None] * B
        for rows in groups.values():
            idx = torch.tensor(rows, device=visual.tokens_BSD.device)
            new_BN = self._generate_group(visual.tokens_BSD[idx], visual.is_video,
                                          torch.stack([prompts[i] for i in rows]), **decode)
            for j, i in enumerate(rows):
                out[i] = new_BN[j]
        return _pad_rows(out, self.tokens.pad)

    def _generate_group(self, tokens_BSD, is_video, prompt_BP, method, max_new, num_beams, top_p, temperature, min_new,
                        length_penalty, generator) -> torch.Tensor:
        start_B1 = torch.full((tokens_BSD.shape[0], 1), self.tokens.cls, dtype=torch.long, device=tokens_BSD.device)
        ids_BL = torch.cat([start_B1, prompt_BP], dim=1)
        eos, pad = self.tokens.eos, self.tokens.pad
        if method == "beam":
            tokens_bSD = tokens_BSD.repeat_interleave(num_beams, dim=0)
            new = generation.beam_search(self._step_fn(tokens_bSD, is_video), ids_BL, max_new, eos, pad, num_beams,
                                         length_penalty, min_new)
        elif method == "greedy":
            new = generation.greedy(self._step_fn(tokens_BSD, is_video), ids_BL, max_new, eos, pad, min_new)
        elif method == "nucleus":
            new = generation.nucleus(self._step_fn(tokens_BSD, is_video), ids_BL, max_new, eos, pad, top_p, temperature,
                                     min_new, generator)
        else:
            raise ValueError(f"method must be greedy, beam or nucleus, got {method!r}")
        return generation.trim_at_eos(new, eos, pad)

    def _step_fn(self, tokens_BSD: torch.Tensor, is_video: bool):
        def step(ids_BL: torch.Tensor) -> torch.Tensor:
            # Padding after a row's [EOS] only follows positions we never read, so a full mask is safe (causal).
            return self.lm_logits(tokens_BSD, ids_BL, torch.ones_like(ids_BL), is_video=is_video)[:, -1]

        return step


def _prompt_rows(prompt_ids: torch.Tensor | None, B: int, pad: int, device) -> list[torch.Tensor]:
    if prompt_ids is None:
        return [torch.zeros(0, dtype=torch.long, device=device)] * B
    prompt_ids = prompt_ids.to(device=device, dtype=torch.long)
    if prompt_ids.dim() == 1:
        return [prompt_ids] * B
    if prompt_ids.shape[0] != B:
        raise ValueError(f"prompt_ids has {prompt_ids.shape[0]} rows for a batch of {B}")
    return [row[row != pad] for row in prompt_ids]


def _pad_rows(rows: list[torch.Tensor], pad: int) -> torch.Tensor:
    n = max(r.shape[0] for r in rows)
    return torch.stack([F.pad(r, (0, n - r.shape[0]), value=pad) for r in rows])


# ---- building -----------------------------------------------------------------------------------------------


@dataclass
class BuiltModel:
    model: OmniVL
    arch: OmniVLArch
    init_reports: dict = field(default_factory=dict)


def build_omnivl(arch: OmniVLArch, tokens: TokenIds = TokenIds()) -> OmniVL:
    """Randomly initialized OmniVL of the given architecture."""
    visual = VisualEncoder(arch.visual)
    align = AlignmentDecoder(arch.text, visual.width, start_id=tokens.enc)
    gen = GenerationDecoder(arch.text, visual.width, start_id=tokens.dec, shared_from=align, embed_dim=arch.embed_dim)
    return OmniVL(visual, TextEncoder(arch.text), align, gen, arch.embed_dim, tokens)


def build_model(cfg: ModelConfig, load_pretrained: bool = True) -> BuiltModel:
    """The model `cfg` describes, initialized from `cfg.init` checkpoints when `load_pretrained`."""
    from omnivl.models.checkpoints import load_text_checkpoint, load_visual_checkpoint

    arch = resolve_arch(cfg)
    model = build_omnivl(arch, cfg.tokens)
    reports: dict = {}
    if load_pretrained and cfg.init.visual:
        reports["visual"] = load_visual_checkpoint(model.visual, cfg.init.visual)
    if load_pretrained and cfg.init.text:
        targets = {"text": model.text, "align_decoder": model.align_decoder, "gen_decoder": model.gen_decoder}
        reports.update(load_text_checkpoint(targets, cfg.init.text))
    return BuiltModel(model=model, arch=arch, init_reports=reports)
