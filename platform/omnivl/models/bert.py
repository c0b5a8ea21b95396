"""BERT building blocks (our own implementation, key-compatible with Hugging Face through
`omnivl.models.checkpoints`): the text encoder and the two visual-grounded decoders.

Legend: B batch, L text length, S visual tokens, D hidden width, V vocabulary, h heads.

The alignment decoder (bidirectional) and the generation decoder (causal) share every weight except
self-attention, as BLIP does: the generation decoder is built with `shared_from=<alignment decoder>` and holds
the very same embedding, cross-attention and feed-forward modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from omnivl.models.sizes import TextArch


@dataclass
class TextOutput:
    """`pooled_BD`: the text representation, pooled as `TextArch.pool` says (the hidden state at position 0, [CLS],
    or the mean over the unpadded positions); `tokens_BLD`: every position."""

    pooled_BD: torch.Tensor
    tokens_BLD: torch.Tensor


class BertEmbeddings(nn.Module):
    """Word + absolute position + token-type (always type 0) embeddings, LayerNorm. HF names on purpose."""

    def __init__(self, arch: TextArch) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(arch.vocab, arch.hidden)
        self.position_embeddings = nn.Embedding(arch.max_position, arch.hidden)
        self.token_type_embeddings = nn.Embedding(arch.type_vocab, arch.hidden)
        self.LayerNorm = nn.LayerNorm(arch.hidden, eps=arch.eps)
        self.dropout = nn.Dropout(arch.dropout)

    def forward(self, input_ids_BL: torch.Tensor) -> torch.Tensor:
        L = input_ids_BL.shape[1]
        if L > self.position_embeddings.num_embeddings:
            raise ValueError(f"text length {L} exceeds max_position {self.position_embeddings.num_embeddings}")
        positions_L = torch.arange(L, device=input_ids_BL.device)
        x_BLD = self.word_embeddings(input_ids_BL) + self.position_embeddings(positions_L)
        x_BLD = x_BLD + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(x_BLD))


class BertAttention(nn.Module):
    """Multi-head attention with BERT's post-LN residual: `norm(x + out(attn(x, context)))`.
    `kv_width` differs from the hidden width for cross-attention to visual tokens."""

    def __init__(self, arch: TextArch, kv_width: int | None = None) -> None:
        super().__init__()
        kv_width = kv_width or arch.hidden
        self.heads = arch.heads
        self.dropout_p = arch.dropout
        self.query = nn.Linear(arch.hidden, arch.hidden)
        self.key = nn.Linear(kv_width, arch.hidden)
        self.value = nn.Linear(kv_width, arch.hidden)
        self.out = nn.Linear(arch.hidden, arch.hidden)
        self.norm = nn.LayerNorm(arch.hidden, eps=arch.eps)

    def forward(self, x_BLD: torch.Tensor, mask: torch.Tensor | None, context_BSD: torch.Tensor | None = None):
        """`mask`: bool, broadcastable to [B, h, L, S], True = may attend. Every query must be allowed at least
        one key (position 0 always is, for text)."""
        context_BSD = x_BLD if context_BSD is None else context_BSD
        q = self._split(self.query(x_BLD))
        k, v = self._split(self.key(context_BSD)), self._split(self.value(context_BSD))
        p = self.dropout_p if self.training else 0.0
        o_BhLd = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        o_BLD = o_BhLd.transpose(1, 2).flatten(2)
        return self.norm(x_BLD + F.dropout(self.out(o_BLD), p, self.training))

    def _split(self, x_BLD: torch.Tensor) -> torch.Tensor:
        B, L, D = x_BLD.shape
        return x_BLD.view(B, L, self.heads, D // self.heads).transpose(1, 2)


class FeedForward(nn.Module):
    def __init__(self, arch: TextArch) -> None:
        super().__init__()
        self.dropout_p = arch.dropout
        self.up = nn.Linear(arch.hidden, arch.intermediate)
        self.down = nn.Linear(arch.intermediate, arch.hidden)
        self.norm = nn.LayerNorm(arch.hidden, eps=arch.eps)

    def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
        h = self.down(F.gelu(self.up(x_BLD)))
        return self.norm(x_BLD + F.dropout(h, self.dropout_p, self.training))


class BertLayer(nn.Module):
    """Self-attention, optional cross-attention (when `cross_width` is given), feed-forward. With `shared`, the
    cross-attention and feed-forward modules are *the same objects* as `shared`'s."""

    def __init__(self, arch: TextArch, cross_width: int | None = None, shared: "BertLayer | None" = None) -> None:
        super().__init__()
        self.self_attn = BertAttention(arch)
        if cross_width is not None:
            self.cross_attn = shared.cross_attn if shared is not None else BertAttention(arch, cross_width)
        self.ffn = shared.ffn if shared is not None else FeedForward(arch)

    def forward(self, x_BLD, self_mask, context_BSD=None):
        x_BLD = self.self_attn(x_BLD, self_mask)
        if context_BSD is not None:
            x_BLD = self.cross_attn(x_BLD, None, context_BSD)
        return self.ffn(x_BLD)


def init_bert_weights(module: nn.Module) -> None:
    """BERT's random init (normal 0.02, zero biases, unit LayerNorm)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def padding_mask(attention_mask_BL: torch.Tensor) -> torch.Tensor:
    """[B,1,1,L] bool key mask from a 0/1 attention mask."""
    return attention_mask_BL.bool()[:, None, None, :]


def causal_padding_mask(attention_mask_BL: torch.Tensor) -> torch.Tensor:
    """[B,1,L,L] bool mask: query i may attend key j <= i that is not padding."""
    L = attention_mask_BL.shape[1]
    causal_LL = torch.ones(L, L, dtype=torch.bool, device=attention_mask_BL.device).tril()
    return causal_LL[None, None] & padding_mask(attention_mask_BL)


class _LayerStack(nn.Module):
    """Shared forward of the text encoder and the decoders."""

    arch: TextArch

    def _run_layers(self, x_BLD, mask, context_BSD=None):
        for layer in self.layers:
            if self.arch.grad_checkpointing and self.training:
                x_BLD = checkpoint(layer, x_BLD, mask, context_BSD, use_reentrant=False)
            else:
                x_BLD = layer(x_BLD, mask, context_BSD)
        return x_BLD


class TextEncoder(_LayerStack):
    """BERT text encoder. Input ids start with [CLS]; the text representation is its output at position 0 (pool
    `cls`, BERT's), or the mean over the unpadded positions (pool `mean`)."""

    def __init__(self, arch: TextArch) -> None:
        super().__init__()
        self.arch = arch
        self.embeddings = BertEmbeddings(arch)
        self.layers = nn.ModuleList(BertLayer(arch) for _ in range(arch.layers))
        init_bert_weights(self)

    @property
    def width(self) -> int:
        return self.arch.hidden

    def forward(self, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor) -> TextOutput:
        x_BLD = self._run_layers(self.embeddings(input_ids_BL), padding_mask(attention_mask_BL))
        if self.arch.pool == "cls":
            return TextOutput(pooled_BD=x_BLD[:, 0], tokens_BLD=x_BLD)
        keep_BL1 = attention_mask_BL[..., None].to(x_BLD.dtype)
        pooled_BD = (x_BLD * keep_BL1).sum(dim=1) / keep_BL1.sum(dim=1).clamp_min(1.0)
        return TextOutput(pooled_BD=pooled_BD, tokens_BLD=x_BLD)


class GroundedDecoder(_LayerStack):
    """BERT layers with cross-attention to visual tokens. Position 0 of the input ids ([CLS] from the data plane)
    is replaced by this decoder's task token `start_id` ([ENC] or [DEC])."""

    causal: bool = False

    def __init__(self, arch: TextArch, visual_width: int, start_id: int,
                 shared_from: "GroundedDecoder | None" = None) -> None:
        super().__init__()
        self.arch = arch
        self.start_id = start_id
        src = shared_from
        self.embeddings = src.embeddings if src is not None else BertEmbeddings(arch)
        self.layers = nn.ModuleList(
            BertLayer(arch, visual_width, shared=src.layers[i] if src is not None else None) for i in range(arch.layers)
        )
        # Only the modules created here get a fresh init; shared ones keep their owner's weights.
        for layer in self.layers:
            init_bert_weights(layer.self_attn)
        if src is None:
            init_bert_weights(self)

    def hidden(self, input_ids_BL, attention_mask_BL, visual_tokens_BSD, offset_BD=None) -> torch.Tensor:
        """`offset_BD`, if given, is added to every position's input embedding."""
        ids_BL = input_ids_BL.clone()
        ids_BL[:, 0] = self.start_id
        mask = causal_padding_mask(attention_mask_BL) if self.causal else padding_mask(attention_mask_BL)
        x_BLD = self.embeddings(ids_BL)
        if offset_BD is not None:
            x_BLD = x_BLD + offset_BD[:, None]
        return self._run_layers(x_BLD, mask, visual_tokens_BSD)


class AlignmentDecoder(GroundedDecoder):
    """Bidirectional; the [ENC] output feeds a 2-way matching head (index 1 = matched)."""

    causal = False

    def __init__(self, arch: TextArch, visual_width: int, start_id: int) -> None:
        super().__init__(arch, visual_width, start_id)
        self.match_head = nn.Linear(arch.hidden, 2)
        init_bert_weights(self.match_head)

    def forward(self, input_ids_BL, attention_mask_BL, visual_tokens_BSD) -> torch.Tensor:
        """Matching logits [B, 2]."""
        return self.match_head(self.hidden(input_ids_BL, attention_mask_BL, visual_tokens_BSD)[:, 0])


class LMHead(nn.Module):
    """BERT's prediction head; `decoder.weight` is tied to the word embeddings by the owner."""

    def __init__(self, arch: TextArch) -> None:
        super().__init__()
        self.dense = nn.Linear(arch.hidden, arch.hidden)
        self.norm = nn.LayerNorm(arch.hidden, eps=arch.eps)
        self.decoder = nn.Linear(arch.hidden, arch.vocab, bias=False)
        self.bias = nn.Parameter(torch.zeros(arch.vocab))

    def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(x_BLD)))) + self.bias


PREFIX_INIT_STD = 0.5


class GenerationDecoder(GroundedDecoder):
    """Causal; [DEC] start, [EOS] end. Shares all but self-attention with `shared_from` (the alignment decoder)."""

    causal = True

    def __init__(self, arch: TextArch, visual_width: int, start_id: int, shared_from: AlignmentDecoder,
                 embed_dim: int) -> None:
        super().__init__(arch, visual_width, start_id, shared_from=shared_from)
        self.lm_head = LMHead(arch)
        init_bert_weights(self.lm_head)
        nn.init.zeros_(self.lm_head.bias)
        self.lm_head.decoder.weight = self.embeddings.word_embeddings.weight
        # `arch.visual_prefix`: every position's input also gets a projection of the item's visual embedding in the
        # shared space, which contrastive learning spreads apart from the first steps, plus a learnt vector per
        # modality: that embedding is the same for an image and a video of it, but their captions differ (a
        # video's states the motion; an image caption may end where a video caption goes on).
        self.visual_prefix = nn.Linear(embed_dim, arch.hidden) if arch.visual_prefix else None
        self.modality_prefix = nn.Embedding(2, arch.hidden) if arch.visual_prefix else None  # 0 image, 1 video
        if self.visual_prefix is not None:
            # a unit-norm embedding through weights of std PREFIX_INIT_STD: each offset component has about that std,
            # on the scale of the LayerNorm-ed word embeddings it is added to
            nn.init.normal_(self.visual_prefix.weight, std=PREFIX_INIT_STD)
            nn.init.zeros_(self.visual_prefix.bias)
            nn.init.normal_(self.modality_prefix.weight, std=PREFIX_INIT_STD)

    def forward(self, input_ids_BL, attention_mask_BL, visual_tokens_BSD, embedding_BE=None,
                is_video: bool = False) -> torch.Tensor:
        """Next-token logits [B, L, V]: position i predicts token i+1. `embedding_BE`: the item's visual embedding
        in the shared space, required with `arch.visual_prefix` (see `TextArch`), unused without; so is
        `is_video`, the modality the prefix states."""
        offset_BD = None
        if self.visual_prefix is not None:
            if embedding_BE is None:
                raise ValueError("this generation decoder has a visual prefix: pass the visual embedding_BE")
            offset_BD = self.visual_prefix(embedding_BE) + self.modality_prefix.weight[int(is_video)]
        return self.lm_head(self.hidden(input_ids_BL, attention_mask_BL, visual_tokens_BSD, offset_BD))
