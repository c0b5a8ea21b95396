"""Model inference on decoded batches (torch, no Ray): embeddings, matching-head scores, generation.

The Ray actors of the `evaluate` job call these on the batches the data plane produces (columns of
`omnivl.data.decode.OUTPUT_COLUMNS`); the single-process reference path calls the same functions. Each takes the
job's `precision` (`fp32 | bf16 | fp16`: the autocast of its forward passes); outputs are float32 either way.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from omnivl.data.text import detokenize, prompt_ids
from omnivl.eval.config import GenerationSettings
from omnivl.models.precision import autocast


def _pixels(batch: dict) -> torch.Tensor:
    return torch.from_numpy(np.array(batch["pixels"]))  # a copy: Ray hands out read-only buffers


def _autocast(model, precision: str):
    return autocast(model.pixel_mean.device, precision)


@torch.no_grad()
def embed_batch(model, batch: dict, modality: str, *, keep_tokens: bool = False, precision: str = "fp32") -> dict:
    """visual [N,E] (normalized, shared space), features [N,D] (the pooled visual feature before projection: what a
    linear probe reads), text_emb [N,E], plus label_id, text and row_key passed through. With `keep_tokens`
    also tokens [N,S,D] float32: every visual token, what the decoders cross-attend to (`match_pairs`)."""
    device = model.pixel_mean.device  # pixels move in `normalize_pixels`; token ids must be moved here
    ids = torch.as_tensor(np.asarray(batch["input_ids"]), device=device)
    mask = torch.as_tensor(np.asarray(batch["attention_mask"]), device=device)
    with _autocast(model, precision):
        visual = model.visual_features(_pixels(batch), modality)
        visual_NE, text_NE = model.project_visual(visual.pooled_BD), model.encode_text(ids, mask)
    out = {"visual": visual_NE.float().cpu().numpy(),
           "features": visual.pooled_BD.float().cpu().numpy(),
           "text_emb": text_NE.float().cpu().numpy(),
           "label_id": np.asarray(batch["label_id"]), "text": np.asarray(batch["text"], dtype=object),
           "row_key": np.asarray(batch["row_key"], dtype=object)}
    if keep_tokens:
        out["tokens"] = visual.tokens_BSD.float().cpu().numpy()
    return out


@torch.no_grad()
def visual_token_shape(model, modality: str, image_size: int, num_frames: int) -> tuple[int, int]:
    """(S, D): visual tokens per row and their width, for pixels of this size (one forward pass of a blank
    item: exact for any tokenizer geometry)."""
    shape = (1, 3, image_size, image_size) if modality == "image" else (1, num_frames, 3, image_size, image_size)
    tokens_BSD = model.visual_features(torch.zeros(shape, dtype=torch.uint8), modality).tokens_BSD
    return int(tokens_BSD.shape[1]), int(tokens_BSD.shape[2])


@torch.no_grad()
def match_pairs(model, tokens_of: Sequence[np.ndarray], text_ids_TL: np.ndarray, text_mask_TL: np.ndarray,
                pairs_P2: np.ndarray, batch_size: int = 64, precision: str = "fp32") -> np.ndarray:
    """float64 [P]: matching-head probability of each (visual v, text t) row of `pairs_P2`, from visual v's
    tokens `tokens_of[v]` [S, D] (kept by `embed_batch(keep_tokens=True)`) and text t's row of `text_ids_TL`.
    Pairs are scored `batch_size` at a time."""
    device = model.pixel_mean.device
    pairs_P2 = np.asarray(pairs_P2, dtype=np.int64).reshape(-1, 2)
    out = []
    with _autocast(model, precision):
        for start in range(0, len(pairs_P2), batch_size):
            v, t = pairs_P2[start:start + batch_size].T
            tokens_PSD = torch.from_numpy(np.stack([tokens_of[i] for i in v])).to(device)
            ids = torch.as_tensor(np.asarray(text_ids_TL)[t], device=device)
            mask = torch.as_tensor(np.asarray(text_mask_TL)[t], device=device)
            out.append(model.match_logits(tokens_PSD, ids, mask).float().softmax(-1)[:, 1].double().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.float64)


@torch.no_grad()
def encode_texts(model, ids_TL: np.ndarray, mask_TL: np.ndarray, batch_size: int = 256,
                 precision: str = "fp32") -> np.ndarray:
    """float32 [T, E]: normalized text embeddings of tokenized texts (class prompts, probe captions), in chunks."""
    device = model.pixel_mean.device
    with _autocast(model, precision):
        out = [model.encode_text(torch.as_tensor(np.asarray(ids_TL[i:i + batch_size]), device=device),
                                 torch.as_tensor(np.asarray(mask_TL[i:i + batch_size]), device=device)).float().cpu()
               for i in range(0, len(ids_TL), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


@torch.no_grad()
def match_batch(model, batch: dict, modality: str, pairs: dict[int, list[int]], text_ids_TL: np.ndarray,
                text_mask_TL: np.ndarray, precision: str = "fp32") -> dict:
    """Matching-head probabilities of the (visual row, text) pairs asked for: `pairs[label_id]` lists the text
    indices (rows of `text_ids_TL`) to score against the batch row with that label id. Rows not in `pairs`
    are skipped. Returns flat columns label_id, text_index, score (one row per pair)."""
    label_ids = [int(x) for x in np.asarray(batch["label_id"])]
    rows = [i for i, lid in enumerate(label_ids) if pairs.get(lid)]
    out = {"label_id": [], "text_index": [], "score": []}
    with _autocast(model, precision):
        visual = model.visual_features(_pixels(batch)[rows], modality) if rows else None
        for j, i in enumerate(rows):
            texts = pairs[label_ids[i]]
            tokens_PSD = visual.tokens_BSD[j:j + 1].expand(len(texts), -1, -1)
            ids = torch.as_tensor(text_ids_TL[texts], device=visual.tokens_BSD.device)
            mask = torch.as_tensor(text_mask_TL[texts], device=visual.tokens_BSD.device)
            logits = model.match_logits(tokens_PSD, ids, mask)
            out["label_id"] += [label_ids[i]] * len(texts)
            out["text_index"] += list(texts)
            out["score"] += logits.float().softmax(-1)[:, 1].cpu().tolist()
    return {"label_id": np.asarray(out["label_id"], dtype=np.int64),
            "text_index": np.asarray(out["text_index"], dtype=np.int64),
            "score": np.asarray(out["score"], dtype=np.float64)}


@torch.no_grad()
def generate_batch(model, batch: dict, modality: str, tokenizer, settings: GenerationSettings,
                   answer: bool, precision: str = "fp32") -> dict:
    """Generated text per row: a caption (no prompt), or with `answer` the answer to the row's question
    (`text.prompt_ids` of the row: `question: {q} answer:`). Columns row_key, generated (`text.detokenize`)."""
    row_key = np.asarray(batch["row_key"], dtype=object)
    if len(row_key) == 0:
        return {"row_key": row_key, "generated": np.asarray([], dtype=object)}
    prompts = torch.from_numpy(prompt_ids(tokenizer, batch["input_ids"], batch["prompt_len"])) if answer else None
    with _autocast(model, precision):
        new_BN = model.generate(_pixels(batch), modality, prompt_ids=prompts, method=settings.method,
                                max_new_tokens=settings.max_new_tokens, num_beams=settings.num_beams)
    texts = [detokenize(tokenizer, ids) for ids in new_BN.cpu().tolist()]
    return {"row_key": row_key, "generated": np.asarray(texts, dtype=object)}
