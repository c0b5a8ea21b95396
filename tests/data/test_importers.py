"""Dataset importers on small files in each dataset's published format, with real media files: rows,
columns, path resolution, splits, the missing-media report, --drop-missing, and errors that name the file."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import get_args

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import datafactory as mk
from omnivl.cli import main
from omnivl.data import importers as imp
from omnivl.spec.loader import validate_spec


@pytest.fixture(scope="module")
def mp4_bytes() -> bytes:
    return mk.mp4(n=4, size=32, fps=4)


def jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path, format="JPEG")
    return path


def video(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_json(path: Path, doc: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return str(path)


def write_csv(path: Path, header: list[str], rows: list[list]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def read_back(out: Path) -> tuple[list[dict], pa.Schema]:
    table = pq.read_table(out)
    return table.to_pylist(), table.schema


def resolved(out: Path, path: str) -> str:
    """What the manifest reader makes of a `path` value: relative ones resolve against the manifest's dir."""
    return os.path.normpath(os.path.join(out.parent, path))


# --- COCO captions, through the CLI ----------------------------------------------------------------------

def coco_doc(captions_per_image: dict[int, list[str]]) -> dict:
    images = [{"license": 3, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": 480, "width": 640, "id": i}
              for i in captions_per_image]
    annotations, ann_id = [], 48
    for image_id, captions in captions_per_image.items():
        for caption in captions:
            annotations.append({"image_id": image_id, "id": ann_id, "caption": caption})
            ann_id += 1
    return {"info": {"description": "COCO 2014 Dataset"}, "licenses": [], "images": images,
            "annotations": annotations}


@pytest.fixture
def coco(tmp_path):
    ann = write_json(tmp_path / "coco" / "annotations" / "captions_train2014.json", coco_doc({
        9: ["Closeup of bins of food that include broccoli and bread.",
            "A meal is presented in brightly colored plastic trays."],
        25: ["A giraffe eating food from the top of the tree. ", "A giraffe standing up nearby a tree "],
        30: ["A flower vase is sitting on a porch stand.", "White vase with different colored flowers."],
    }))
    media = tmp_path / "coco" / "train2014"
    for i in (9, 25):  # image 30 is deliberately absent
        jpeg(media / f"COCO_train2014_{i:012d}.jpg")
    return ann, media


def test_coco_through_cli_keeps_and_reports_missing(coco, tmp_path, capsys):
    ann, media = coco
    out = tmp_path / "manifests" / "coco.parquet"
    assert main(["data", "import", "coco", ann, "--media-root", str(media), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    absent = str(media / "COCO_train2014_000000000030.jpg")
    assert "wrote 6 rows" in printed and "missing media: 2 rows" in printed and absent in printed

    rows, schema = read_back(out)
    assert schema.names == ["path", "text"] and schema.field("path").type == pa.string()
    assert len(rows) == 6
    assert rows[0] == {"path": "../coco/train2014/COCO_train2014_000000000009.jpg",
                       "text": "Closeup of bins of food that include broccoli and bread."}
    assert rows[2]["text"] == "A giraffe eating food from the top of the tree."  # whitespace stripped
    present = [r for r in rows if os.path.exists(resolved(out, r["path"]))]
    assert len(present) == 4 and {resolved(out, r["path"]) for r in rows if r not in present} == {absent}


def test_coco_drop_missing_still_reports(coco, tmp_path):
    ann, media = coco
    out = tmp_path / "coco.parquet"
    summary = imp.import_dataset("coco", [ann], str(out), media_root=str(media), drop_missing=True)
    rows, _ = read_back(out)
    assert len(rows) == summary.rows == 4 and summary.missing == summary.dropped == 2
    assert summary.missing_examples == (str(media / "COCO_train2014_000000000030.jpg"),) * 2
    assert all(os.path.exists(resolved(out, r["path"])) for r in rows)
    assert summary.splits == {imp.NO_SPLIT: 4} and (summary.modality, summary.kind) == ("image", "text")


def test_row_groups_and_one_listing_per_directory(tmp_path, monkeypatch):
    n = imp.MANIFEST_ROW_GROUP_ROWS + 5
    ann = write_json(tmp_path / "captions.json", coco_doc({1: [f"caption {i}" for i in range(n)]}))
    jpeg(tmp_path / "COCO_train2014_000000000001.jpg")
    calls = []
    real_scandir = os.scandir
    monkeypatch.setattr(imp.os, "scandir", lambda d: calls.append(d) or real_scandir(d))
    summary = imp.import_dataset("coco", [ann], str(tmp_path / "out" / "m.parquet"))  # media root: ann's dir
    meta = pq.ParquetFile(tmp_path / "out" / "m.parquet").metadata
    assert summary.rows == n and summary.missing == 0
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [imp.MANIFEST_ROW_GROUP_ROWS, 5]
    assert calls == [str(tmp_path)]


# --- Karpathy splits ---------------------------------------------------------------------------------------

def karpathy_image(filename: str, split: str, sentences: list[str], filepath: str | None = None) -> dict:
    image = {"filename": filename, "imgid": 0, "split": split, "cocoid": 1,
             "sentids": list(range(len(sentences))),
             "sentences": [{"tokens": s.lower().split(), "raw": s, "imgid": 0, "sentid": j}
                           for j, s in enumerate(sentences)]}
    if filepath is not None:
        image["filepath"] = filepath
    return image


@pytest.fixture
def karpathy(tmp_path):
    src = write_json(tmp_path / "dataset_coco.json", {"dataset": "coco", "images": [
        karpathy_image("COCO_val2014_000000391895.jpg", "test", ["A man with a red helmet.", "Man riding a bike."],
                       "val2014"),
        karpathy_image("COCO_val2014_000000522418.jpg", "restval", ["A woman cutting a cake."], "val2014"),
        karpathy_image("COCO_train2014_000000318556.jpg", "train", ["A bathroom sink."], "train2014"),
        karpathy_image("1000092795.jpg", "val", ["Two young guys with shaggy hair."]),  # Flickr30k: no filepath
    ]})
    media = tmp_path / "images"
    jpeg(media / "val2014" / "COCO_val2014_000000391895.jpg")
    jpeg(media / "val2014" / "COCO_val2014_000000522418.jpg")
    jpeg(media / "1000092795.jpg")  # train2014/COCO_train2014_000000318556.jpg is absent
    return src, media


def test_karpathy_splits_filepaths_and_restval(karpathy, tmp_path):
    src, media = karpathy
    out = tmp_path / "karpathy.parquet"
    summary = imp.import_dataset("karpathy", [src], str(out), media_root=str(media))
    rows, schema = read_back(out)
    assert schema.names == ["path", "text", "split"]
    assert [(r["path"], r["split"]) for r in rows] == [
        ("images/val2014/COCO_val2014_000000391895.jpg", "test"),
        ("images/val2014/COCO_val2014_000000391895.jpg", "test"),
        ("images/val2014/COCO_val2014_000000522418.jpg", "train"),  # restval counts as train
        ("images/train2014/COCO_train2014_000000318556.jpg", "train"),
        ("images/1000092795.jpg", "val"),
    ]
    assert rows[1]["text"] == "Man riding a bike."
    assert summary.splits == {"test": 2, "train": 2, "val": 1}
    assert summary.missing_examples == (str(media / "train2014" / "COCO_train2014_000000318556.jpg"),)


def test_karpathy_split_filter_and_drop(karpathy, tmp_path):
    src, media = karpathy
    out = tmp_path / "train.parquet"
    summary = imp.import_dataset("karpathy", [src], str(out), media_root=str(media), split="train", drop_missing=True)
    rows, _ = read_back(out)
    assert [r["text"] for r in rows] == ["A woman cutting a cake."]
    assert summary.missing == 1 and summary.dropped == 1 and summary.splits == {"train": 1}
    with pytest.raises(ValueError, match=r"split='tset': no rows of that split in .*dataset_coco.json.*test=2"):
        imp.import_dataset("karpathy", [src], str(tmp_path / "x.parquet"), media_root=str(media), split="tset")
    assert not (tmp_path / "x.parquet").exists()  # a failed import publishes nothing


# --- MSR-VTT -----------------------------------------------------------------------------------------------

@pytest.fixture
def msrvtt(tmp_path, mp4_bytes):
    src = write_json(tmp_path / "msrvtt" / "videodatainfo.json", {
        "info": {"year": "2016"},
        "videos": [
            {"category": 9, "url": "https://www.youtube.com/watch?v=9lZi22qLlEo", "video_id": "video0",
             "start time": 137.72, "end time": 149.44, "split": "train", "id": 0},
            {"category": 16, "url": "https://www.youtube.com/watch?v=w4JM08PDEng", "video_id": "video1",
             "start time": 184.33, "end time": 206.89, "split": "validate", "id": 1},
            {"category": 9, "url": "https://www.youtube.com/watch?v=QA7KVQq9vKA", "video_id": "video2",
             "start time": 31.17, "end time": 41.28, "split": "test", "id": 2},
        ],
        "sentences": [
            {"caption": "a car is shown", "video_id": "video0", "sen_id": 0},
            {"caption": "a person is cooking", "video_id": "video1", "sen_id": 1},
            {"caption": "a man plays a guitar", "video_id": "video2", "sen_id": 2},
            {"caption": "a red car drives", "video_id": "video0", "sen_id": 3},
        ],
    })
    media = tmp_path / "msrvtt" / "TrainValVideo"
    video(media / "video0.mp4", mp4_bytes)
    video(media / "video1.mp4", mp4_bytes)  # video2.mp4 is absent
    return src, media


def test_msrvtt_rows_splits_and_missing(msrvtt, tmp_path):
    src, media = msrvtt
    out = tmp_path / "msrvtt" / "manifest.parquet"
    summary = imp.import_dataset("msrvtt", [src], str(out), media_root=str(media))
    rows, schema = read_back(out)
    assert schema.names == ["path", "text", "split"]
    assert rows == [
        {"path": "TrainValVideo/video0.mp4", "text": "a car is shown", "split": "train"},
        {"path": "TrainValVideo/video1.mp4", "text": "a person is cooking", "split": "val"},  # "validate"
        {"path": "TrainValVideo/video2.mp4", "text": "a man plays a guitar", "split": "test"},
        {"path": "TrainValVideo/video0.mp4", "text": "a red car drives", "split": "train"},
    ]
    assert summary.missing_examples == (str(media / "video2.mp4"),)
    assert (summary.modality, summary.kind) == ("video", "text")
    val = imp.import_dataset("msrvtt", [src], str(tmp_path / "val.parquet"), media_root=str(media), split="validate")
    assert val.rows == 1 and val.splits == {"val": 1}


# --- WebVid ------------------------------------------------------------------------------------------------

def test_webvid_nested_then_flat_layout(tmp_path, mp4_bytes):
    src = write_csv(tmp_path / "results_2M_val.csv", ["videoid", "contentUrl", "duration", "page_dir", "name"], [
        [31353427, "https://ak.picdn.net/shutterstock/videos/31353427/preview/stock-footage-a.mp4", "PT00H00M15S",
         "1066_1070", "Merida, mexico - may 23, 2017: tourists walking"],
        [14781349, "https://ak.picdn.net/shutterstock/videos/14781349/preview/stock-footage-b.mp4", "PT00H00M32S",
         "1066_1070", "Aerial, sunset"],
        [1024354880, "https://ak.picdn.net/shutterstock/videos/1024354880/preview/stock-footage-c.mp4", "PT00H00M10S",
         "336_340", "Ocean waves"],
    ])
    media = tmp_path / "videos"
    video(media / "1066_1070" / "31353427.mp4", mp4_bytes)
    video(media / "14781349.mp4", mp4_bytes)  # 1024354880 is in neither layout
    out = tmp_path / "webvid.parquet"
    summary = imp.import_dataset("webvid", [src], str(out), media_root=str(media))
    rows, schema = read_back(out)
    assert schema.names == ["path", "text"]
    assert rows == [
        {"path": "videos/1066_1070/31353427.mp4", "text": "Merida, mexico - may 23, 2017: tourists walking"},
        {"path": "videos/14781349.mp4", "text": "Aerial, sunset"},
        {"path": "videos/1024354880.mp4", "text": "Ocean waves"},
    ]
    assert summary.missing == 1 and summary.missing_examples == (str(media / "1024354880.mp4"),)
    dropped = imp.import_dataset("webvid", [src], str(out), media_root=str(media), drop_missing=True)
    assert dropped.rows == 2 and dropped.dropped == 1 and len(read_back(out)[0]) == 2


# --- Kinetics ----------------------------------------------------------------------------------------------

KINETICS_HEADER = ["label", "youtube_id", "time_start", "time_end", "split"]


def test_kinetics_trimmed_clip_or_window(tmp_path, mp4_bytes):
    src = write_csv(tmp_path / "kinetics400" / "validate.csv", KINETICS_HEADER, [
        ["abseiling", "-3B32lodo2M", 59, 69, "val"],
        ["air drumming", "--07WQ2iBlw", 1, 11, "val"],
        ["zumba", "zzx0G1FOSOE", 13, 23, "train"],
    ])
    media = tmp_path / "kinetics400" / "clips"
    video(media / "-3B32lodo2M_000059_000069.mp4", mp4_bytes)  # trimmed by the official crawler
    video(media / "--07WQ2iBlw.mp4", mp4_bytes)  # a full video: the row gets a window
    out = tmp_path / "kinetics400" / "val.parquet"
    summary = imp.import_dataset("kinetics", [src], str(out), media_root=str(media))
    rows, schema = read_back(out)
    assert schema.names == ["path", "label", "split", "start_s", "end_s"]
    assert schema.field("start_s").type == pa.float64()
    assert rows == [
        {"path": "clips/-3B32lodo2M_000059_000069.mp4", "label": "abseiling", "split": "val",
         "start_s": None, "end_s": None},
        {"path": "clips/--07WQ2iBlw.mp4", "label": "air drumming", "split": "val", "start_s": 1.0, "end_s": 11.0},
        {"path": "clips/zzx0G1FOSOE.mp4", "label": "zumba", "split": "train", "start_s": 13.0, "end_s": 23.0},
    ]
    assert summary.missing_examples == (str(media / "zzx0G1FOSOE.mp4"),) and summary.kind == "label"
    val = imp.import_dataset("kinetics", [src], str(out), media_root=str(media), split="val", drop_missing=True)
    assert val.rows == 2 and val.missing == 0  # the missing row is of another split


def test_kinetics_bad_number_names_file_line_and_column(tmp_path):
    src = write_csv(tmp_path / "train.csv", KINETICS_HEADER, [["abseiling", "a", 0, 10, "train"],
                                                              ["abseiling", "b", "ten", 20, "train"]])
    with pytest.raises(ValueError, match=r"train\.csv: line 3: column 'time_start' must be seconds >= 0, got 'ten'"):
        imp.import_dataset("kinetics", [src], str(tmp_path / "k.parquet"))


# --- image folder ------------------------------------------------------------------------------------------

def test_imagefolder_labels_from_folders(tmp_path):
    root = tmp_path / "flowers"
    jpeg(root / "daisy" / "1.jpg")
    jpeg(root / "daisy" / "2.jpeg")
    jpeg(root / "tulip" / "sub" / "3.jpg")  # nested under its class folder
    (root / "tulip" / "LICENSE.txt").write_text("cc-by")  # not an image
    jpeg(root / "stray.jpg")  # in no class folder
    os.symlink(tmp_path / "nowhere.jpg", root / "tulip" / "gone.jpg")  # a dangling link: missing media
    out = tmp_path / "flowers.parquet"
    summary = imp.import_dataset("imagefolder", [str(root)], str(out))
    rows, schema = read_back(out)
    assert schema.names == ["path", "label"]
    assert rows == [{"path": "flowers/daisy/1.jpg", "label": "daisy"},
                    {"path": "flowers/daisy/2.jpeg", "label": "daisy"},
                    {"path": "flowers/tulip/gone.jpg", "label": "tulip"},
                    {"path": "flowers/tulip/sub/3.jpg", "label": "tulip"}]
    assert summary.missing_examples == (str(root / "tulip" / "gone.jpg"),)
    assert imp.import_dataset("imagefolder", [str(root)], str(out), drop_missing=True).rows == 3
    with pytest.raises(ValueError, match="media_root=.*imagefolder importer does not read it"):
        imp.import_dataset("imagefolder", [str(root)], str(out), media_root=str(root))


# --- VQA ---------------------------------------------------------------------------------------------------

def vqa_files(tmp_path: Path, data_subtype: str | None = "val2014") -> tuple[str, str]:
    questions = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "questions": [
        {"image_id": 42, "question": "What is the man holding?", "question_id": 420},
        {"image_id": 42, "question": "Is it raining?", "question_id": 421},
        {"image_id": 73, "question": "How many dogs are there?", "question_id": 730},
    ]}
    if data_subtype:
        questions["data_subtype"] = data_subtype
    annotations = {"info": {}, "license": {}, "data_subtype": data_subtype, "annotations": [
        {"question_type": "what is the man", "multiple_choice_answer": "umbrella", "answer_type": "other",
         "image_id": 42, "question_id": 420,
         "answers": [{"answer": "umbrella", "answer_confidence": "yes", "answer_id": 1}]},
        {"question_type": "is it", "multiple_choice_answer": "yes", "answer_type": "yes/no",
         "image_id": 42, "question_id": 421, "answers": []},
        {"question_type": "how many", "multiple_choice_answer": "2", "answer_type": "number",
         "image_id": 73, "question_id": 730, "answers": []},
    ]}
    return (write_json(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", questions),
            write_json(tmp_path / "v2_mscoco_val2014_annotations.json", annotations))


def test_vqa_join_pattern_and_missing(tmp_path):
    q, a = vqa_files(tmp_path)
    media = tmp_path / "val2014"
    jpeg(media / "COCO_val2014_000000000042.jpg")  # image 73 is absent
    out = tmp_path / "vqa.parquet"
    summary = imp.import_dataset("vqa", [a, q], str(out), media_root=str(media))  # any order
    rows, schema = read_back(out)
    assert schema.names == ["path", "question", "answer", "qtype"]
    assert rows == [
        {"path": "val2014/COCO_val2014_000000000042.jpg", "question": "What is the man holding?", "answer": "umbrella",
         "qtype": "other"},
        {"path": "val2014/COCO_val2014_000000000042.jpg", "question": "Is it raining?", "answer": "yes",
         "qtype": "yes/no"},
        {"path": "val2014/COCO_val2014_000000000073.jpg", "question": "How many dogs are there?", "answer": "2",
         "qtype": "number"},
    ]
    assert summary.missing_examples == (str(media / "COCO_val2014_000000000073.jpg"),) and summary.kind == "qa"


def test_vqa_subset_option_and_custom_pattern(tmp_path):
    q, a = vqa_files(tmp_path, data_subtype=None)
    with pytest.raises(ValueError, match=r"questions\.json: no 'data_subtype' key"):
        imp.import_dataset("vqa", [q, a], str(tmp_path / "v.parquet"))
    jpeg(tmp_path / "COCO_train2014_000000000073.jpg")
    summary = imp.import_dataset("vqa", [q, a], str(tmp_path / "v.parquet"), subset="train2014", drop_missing=True)
    assert summary.rows == 1 and summary.missing == 2
    jpeg(tmp_path / "img" / "42.jpg")
    summary = imp.import_dataset("vqa", [q, a], str(tmp_path / "v.parquet"), image_pattern="img/{image_id}.jpg")
    assert summary.rows == 3 and summary.missing == 1


# --- malformed input ---------------------------------------------------------------------------------------

def test_not_json_names_the_file(tmp_path):
    src = tmp_path / "captions_val2014.json"
    src.write_text('{"images": [')
    with pytest.raises(ValueError, match=r"captions_val2014\.json: not JSON \(line 1"):
        imp.import_dataset("coco", [str(src)], str(tmp_path / "o.parquet"))


def test_missing_key_names_file_and_entry(tmp_path):
    doc = coco_doc({1: ["a", "b"]})
    del doc["annotations"][1]["caption"]
    src = write_json(tmp_path / "captions.json", doc)
    with pytest.raises(ValueError, match=r"captions\.json: annotations\[1\]: missing required key 'caption'"):
        imp.import_dataset("coco", [src], str(tmp_path / "o.parquet"))
    doc = coco_doc({1: ["a"]})
    doc["annotations"][0]["image_id"] = 2
    src = write_json(tmp_path / "captions.json", doc)
    with pytest.raises(ValueError, match=r"annotations\[0\]\.image_id: 2 is the id of no entry of 'images'"):
        imp.import_dataset("coco", [src], str(tmp_path / "o.parquet"))


def test_csv_missing_column_names_file_and_header(tmp_path):
    src = write_csv(tmp_path / "results_10M_train.csv", ["videoid", "contentUrl", "duration", "name"],
                    [[1, "u", "d", "n"]])
    with pytest.raises(ValueError, match=r"results_10M_train\.csv: line 1: header lacks column\(s\) page_dir"):
        imp.import_dataset("webvid", [src], str(tmp_path / "o.parquet"))


def test_option_errors(tmp_path, coco):
    ann, _ = coco
    with pytest.raises(ValueError, match="unknown import format 'laion'; known: coco"):
        imp.import_dataset("laion", [ann], str(tmp_path / "o.parquet"))
    with pytest.raises(ValueError, match=r"split='train': the coco importer does not read it"):
        imp.import_dataset("coco", [ann], str(tmp_path / "o.parquet"), split="train")
    q, _ = vqa_files(tmp_path)
    with pytest.raises(ValueError, match="vqa needs one questions JSON .* and one annotations JSON"):
        imp.import_dataset("vqa", [q], str(tmp_path / "o.parquet"))
    with pytest.raises(ValueError, match=r"no such file"):
        imp.import_dataset("msrvtt", [str(tmp_path / "absent.json")], str(tmp_path / "o.parquet"))


def test_cli_error_exit_code_and_message(tmp_path, capsys):
    src = tmp_path / "videodatainfo.json"
    src.write_text("not json at all")
    out = tmp_path / "o.parquet"
    assert main(["data", "import", "msrvtt", str(src), "--out", str(out)]) == 2
    assert f"error: {src}: not JSON" in capsys.readouterr().err
    assert not out.exists()


# --- the `import` job kind ---------------------------------------------------------------------------------

def test_import_job_validates_and_runs(msrvtt, tmp_path):
    from omnivl.runners import run_job
    from omnivl.spec.errors import SpecError
    from omnivl.spec.jobs import ImportFormat

    assert set(get_args(ImportFormat)) == set(imp.IMPORTERS)
    src, media = msrvtt
    job = validate_spec({"kind": "import", "format": "msrvtt", "sources": [src], "media_root": str(media),
                         "split": "train"})
    summary = run_job(job.model_copy(update={"output": str(tmp_path / "run")}))
    manifest = tmp_path / "run" / imp.MANIFEST_NAME
    assert summary["manifest"] == str(manifest) and summary["rows"] == 2 and summary["splits"] == {"train": 2}
    assert [resolved(manifest, r["path"]) for r in read_back(manifest)[0]] == [str(media / "video0.mp4")] * 2
    with pytest.raises(SpecError, match="format"):
        validate_spec({"kind": "import", "format": "laion", "sources": [src]})
    with pytest.raises(SpecError, match="sources"):
        validate_spec({"kind": "import", "format": "coco", "sources": []})


def test_import_step_in_a_pipeline_validates(tmp_path):
    job = validate_spec({"kind": "pipeline", "output_root": str(tmp_path), "steps": [
        {"name": "coco", "job": {"kind": "import", "format": "coco", "sources": ["captions_train2014.json"]}},
        {"name": "coco_val", "job": {"kind": "import", "format": "karpathy", "sources": ["${steps.coco}/x.json"],
                                     "split": "val", "drop_missing": True}},
    ]})
    assert [j.kind for j in job.step_jobs] == ["import", "import"] and job.step_jobs[1].drop_missing


# --- S3 ----------------------------------------------------------------------------------------------------

def test_s3_sources_media_and_manifest(s3_bucket, tmp_path, mp4_bytes):
    from omnivl import storage

    local_csv = write_csv(tmp_path / "results_2M_val.csv", ["videoid", "contentUrl", "duration", "page_dir", "name"],
                          [[1, "u", "PT00H00M15S", "000_005", "a"], [2, "u", "PT00H00M15S", "000_005", "b"],
                           [3, "u", "PT00H00M15S", "000_005", "c"]])
    storage.write_bytes(f"{s3_bucket}/webvid/results_2M_val.csv", Path(local_csv).read_bytes())
    storage.write_bytes(f"{s3_bucket}/webvid/000_005/1.mp4", mp4_bytes)
    storage.write_bytes(f"{s3_bucket}/webvid/2.mp4", mp4_bytes)  # 3.mp4 is absent
    out = f"{s3_bucket}/manifests/webvid.parquet"
    summary = imp.import_dataset("webvid", [f"{s3_bucket}/webvid/results_2M_val.csv"], out)  # media root: the CSV's dir
    fs, path = storage.filesystem(out)
    rows = pq.read_table(path, filesystem=fs).to_pylist()
    assert [r["path"] for r in rows] == [f"{s3_bucket}/webvid/000_005/1.mp4", f"{s3_bucket}/webvid/2.mp4",
                                         f"{s3_bucket}/webvid/3.mp4"]
    assert summary.missing_examples == (f"{s3_bucket}/webvid/3.mp4",)
    # local media written into an S3 manifest stay absolute
    jpeg(tmp_path / "img" / "COCO_train2014_000000000001.jpg")
    ann = write_json(tmp_path / "c.json", coco_doc({1: ["x"]}))
    imp.import_dataset("coco", [ann], out, media_root=str(tmp_path / "img"))
    assert pq.read_table(path, filesystem=fs).column("path").to_pylist() == [
        str(tmp_path / "img" / "COCO_train2014_000000000001.jpg")]
