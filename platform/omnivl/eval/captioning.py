"""Captioning metrics through `pycocoevalcap`: BLEU-4 and CIDEr(-D) always, METEOR when a Java runtime is on
PATH, SPICE never (it downloads Stanford CoreNLP jars at first use, impossible offline).

Scales are pycocoevalcap's: BLEU and METEOR in [0, 1], CIDEr in [0, 10]; reports multiply by 100 as papers do.
Captions are tokenized here (lowercase, punctuation dropped), not with the PTB tokenizer, which needs Java.
"""

from __future__ import annotations

import re
import shutil
from typing import Hashable

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
SPICE_UNAVAILABLE = ("SPICE needs the Stanford CoreNLP jars, which pycocoevalcap downloads on first use; "
                     "this platform evaluates offline")


def tokenize_caption(text: str) -> str:
    """Lowercase words and numbers joined by single spaces (what the n-gram metrics compare)."""
    return " ".join(_TOKEN.findall(str(text).lower()))


def caption_metrics(references: dict[Hashable, list[str]], hypotheses: dict[Hashable, str],
                    java: str | None | bool = True) -> dict:
    """Corpus-level scores of `hypotheses` (one caption per item) against `references` (one or more per item).

    `java`: True finds `java` on PATH (METEOR runs if found), a path uses that, False/None skips METEOR.
    Returns {"BLEU-4", "CIDEr", "METEOR" (None when skipped), "unavailable": {metric: reason}}.
    Raises ValueError if the keys differ or an item has no reference."""
    if set(references) != set(hypotheses):
        missing = set(references) ^ set(hypotheses)
        raise ValueError(f"references and hypotheses cover different items, e.g. {sorted(map(str, missing))[:3]}")
    if not references:
        raise ValueError("no captions to score")
    keys = list(references)
    gts = {i: [tokenize_caption(r) for r in references[k]] for i, k in enumerate(keys)}
    res = {i: [tokenize_caption(hypotheses[k])] for i, k in enumerate(keys)}
    for i, k in enumerate(keys):
        if not gts[i]:
            raise ValueError(f"item {k!r} has no reference caption")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    out = {"BLEU-4": float(bleu[3]), "CIDEr": float(cider), "METEOR": None,
           "unavailable": {"SPICE": SPICE_UNAVAILABLE}}
    java_bin = shutil.which("java") if java is True else (java or None)
    if java_bin:
        out["METEOR"] = meteor(gts, res)
    else:
        out["unavailable"]["METEOR"] = "no Java runtime on PATH (METEOR runs meteor-1.5.jar)"
    return out


def meteor(gts: dict, res: dict) -> float:
    """METEOR 1.5 through pycocoevalcap's wrapper (a `java -jar` subprocess, closed afterwards)."""
    return meteor_many(gts, [res])[0]


def meteor_many(gts: dict, results: list[dict]) -> list[float]:
    """METEOR of several hypothesis sets against the same references, in one Java process (it takes ~10 s
    to start)."""
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        return [float(scorer.compute_score(gts, res)[0]) for res in results]
    finally:
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()
        scorer.meteor_p = _Closed()


class _Closed:
    """Stands in for the killed subprocess so the wrapper's __del__ does nothing harmful."""

    class _Stdin:
        def close(self) -> None: ...

    stdin = _Stdin()

    def kill(self) -> None: ...

    def wait(self) -> None: ...


def scores_with_chance(references: dict[Hashable, list[str]], hypotheses: dict[Hashable, str],
                       java: str | None | bool = True) -> dict:
    """{"scores": caption_metrics(...), "chance": the same metrics for `random_caption_baseline`'s captions}.
    METEOR runs in one Java process for both."""
    java_bin = shutil.which("java") if java is True else (java or None)
    scores = caption_metrics(references, hypotheses, java=False)
    chance = random_caption_baseline(references, java=False)
    if java_bin:
        keys = list(references)
        gts, hyp = _coco(references, hypotheses)
        sets = [hyp]
        if len(keys) >= 2:
            sets.append({i: [tokenize_caption(references[keys[(i + 1) % len(keys)]][0])] for i in range(len(keys))})
        values = meteor_many(gts, sets)
        scores["METEOR"] = values[0]
        chance["METEOR"] = values[1] if len(values) > 1 else 0.0
        scores["unavailable"].pop("METEOR", None)
    return {"scores": scores, "chance": chance}


def _coco(references, hypotheses) -> tuple[dict, dict]:
    keys = list(references)
    return ({i: [tokenize_caption(r) for r in references[k]] for i, k in enumerate(keys)},
            {i: [tokenize_caption(hypotheses[k])] for i, k in enumerate(keys)})


def random_caption_baseline(references: dict[Hashable, list[str]], java: str | None | bool = False) -> dict:
    """The 'chance' scores: every item captioned with the first reference of another item (the next one in
    order, a derangement), i.e. a fluent caption that ignores the picture."""
    keys = list(references)
    if len(keys) < 2:
        return {"BLEU-4": 0.0, "CIDEr": 0.0, "METEOR": None}
    hyps = {k: references[keys[(i + 1) % len(keys)]][0] for i, k in enumerate(keys)}
    return caption_metrics(references, hyps, java)
