"""The tasks on a class-label (`kind: label`) source: zero-shot classification with a prompt ensemble, and a
linear probe on frozen visual features (trained on `eval.probe_train[source]`, scored on the source)."""

from __future__ import annotations

from omnivl import storage
from omnivl.eval import classify, report
from omnivl.eval.embedding import Embedded
from omnivl.eval.probe import linear_probe as fit_probe
from omnivl.eval.results import Score, TaskResult
from omnivl.eval.source import EvalSource
from omnivl.eval.tasks.context import EvalContext

ZERO_SHOT_TOP_K = (1, 5)


def zero_shot(source: EvalSource, ctx: EvalContext, emb: Embedded) -> TaskResult:
    """Each class is the normalized mean of its prompt embeddings; a row is classified as its most similar
    class, among every class of the source's manifest."""
    name_of = source.class_names_by_id()
    classes = sorted(name_of.values())
    index_of = {lid: classes.index(c) for lid, c in name_of.items()}
    templates = source.config.prompt_templates()
    prompts = classify.class_prompts(classes, templates)
    class_CE = classify.class_embeddings(ctx.driver.embed_texts(prompts), len(classes))
    truth = [index_of[int(lid)] for lid in emb.label_id_N]
    acc = classify.topk_accuracy(emb.visual_NE, class_CE, truth, ks=ZERO_SHOT_TOP_K)
    matrix = classify.confusion(emb.visual_NE, class_CE, truth)
    png = report.plot_confusion(matrix, classes, ctx.out / f"{source.name}_confusion.png",
                                f"{source.name}: zero-shot")
    chance = 100.0 / len(classes)
    table = {f"zero-shot top{k}": Score(acc[f"top{k}"], min(100.0, k * chance)) for k in ZERO_SHOT_TOP_K}
    majority = classify.majority_share(truth)
    note = (f"zero-shot: chance is a uniform guess among {len(classes)} classes; always answering the most "
            f"frequent class of these {len(truth)} rows would score {majority:.1f} %")
    payload = {"classes": classes, "templates": templates, "accuracy": acc, "confusion": matrix.tolist(),
               "majority_class": majority}
    return TaskResult(payload, table, notes=[note], figures=[png.name], rows=len(truth))


def linear_probe(source: EvalSource, ctx: EvalContext, emb: Embedded) -> TaskResult:
    """Logistic regression on the frozen pooled visual features ([CLS] or the max over patches, as the model pools) of the train split (embedded here, in one more
    media pass), scored on the source's rows."""
    train = EvalSource.read(source.with_manifest(storage.absolute(ctx.cfg.probe_train[source.name])))
    train_emb = ctx.media.embed(train)
    names = {**train.class_names_by_id(), **source.class_names_by_id()}
    truth = [names[int(lid)] for lid in emb.label_id_N]
    res = fit_probe(train_emb.features_ND, [names[int(lid)] for lid in train_emb.label_id_N], emb.features_ND,
                    truth, C=ctx.cfg.probe_C)
    res.pop("predictions")
    majority = classify.majority_share(truth)
    note = (f"linear probe: logistic regression on frozen pooled visual features (as the model pools them), "
            f"trained on {res['train_rows']} rows of {train.manifest}, scored on {res['test_rows']} held-out rows "
            f"(always answering their most frequent class would score {majority:.1f} %)")
    payload = {**res, "train_manifest": train.manifest, "majority_class": majority}
    return TaskResult(payload, {"linear probe top1": Score(res["accuracy"], res["chance"])}, notes=[note])
