"""Tracking benchmark readers on tiny real layouts: JPEG/PNG frames and annotation files in each benchmark's format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dropmae.tracking.datasets import (
    BENCHMARKS,
    TrackingDataError,
    TrackingSequence,
    list_frames,
    read_benchmark,
    read_box_file,
    read_coco_boxes,
    read_got10k,
    read_label_file,
    read_lasot,
    read_tnl2k,
    read_trackingnet,
)


def write_frames(folder: Path, names: list[str]) -> list[Path]:
    """32x24 images, a different grey level each, format from the suffix."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, name in enumerate(names):
        Image.new("RGB", (32, 24), (20 * index % 256, 100, 150)).save(folder / name)
        paths.append(folder / name)
    return paths


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------- GOT-10k

GOT_TRAIN_BOXES = (
    "347.0000,443.0000,429.0000,272.0000\n"
    "348.0000,440.0000,430.0000,275.0000\n"
    "0.0000,0.0000,0.0000,0.0000\n"
    "350.5000,438.0000,428.0000,270.0000\n"
)
GOT_META = (
    "[METAINFO]\nurl: https://youtu.be/example\nbegin_time: 00:00:01\nend_time: 00:00:04\n"
    "anno_fps: 10Hz\nobject_class: ant\n"
)


def make_got10k(root: Path) -> Path:
    """train: two 4-frame sequences (frame 3 absent in the first); test: one with only the first box."""
    train = root / "train"
    names = ["GOT-10k_Train_000001", "GOT-10k_Train_000002"]
    write_text(train / "list.txt", "\n".join(names) + "\n")
    for name in names:
        folder = train / name
        write_frames(folder, [f"{k:08d}.jpg" for k in range(1, 5)])
        write_text(folder / "groundtruth.txt", GOT_TRAIN_BOXES)
        write_text(folder / "absence.label", "0\n0\n1\n0\n")
        write_text(folder / "cover.label", "8\n5\n0\n3\n")
        write_text(folder / "cut_by_image.label", "0\n0\n0\n1\n")
        write_text(folder / "meta_info.ini", GOT_META)
    test = root / "test"
    write_text(test / "list.txt", "GOT-10k_Test_000001\n")
    write_frames(test / "GOT-10k_Test_000001", [f"{k:08d}.jpg" for k in range(1, 4)])
    write_text(test / "GOT-10k_Test_000001" / "groundtruth.txt", "10.0000,20.0000,30.0000,40.0000\n")
    return root


def test_got10k_train_and_test(tmp_path):
    root = make_got10k(tmp_path / "got10k")
    train = read_got10k(root, "train")
    assert [s.name for s in train] == ["GOT-10k_Train_000001", "GOT-10k_Train_000002"]
    first = train[0]
    assert first.dataset == "got10k" and len(first) == 4
    assert [p.name for p in first.frames] == ["00000001.jpg", "00000002.jpg", "00000003.jpg", "00000004.jpg"]
    np.testing.assert_array_equal(first.boxes[3], [350.5, 438.0, 428.0, 270.0])
    assert first.boxes.dtype == np.float64 and first.boxes.shape == (4, 4)
    np.testing.assert_array_equal(first.visible, [True, True, False, True])
    np.testing.assert_array_equal(first.cover, [8, 5, 0, 3])
    assert first.language is None
    with pytest.raises(ValueError):  # records are frozen, their arrays too
        first.boxes[0, 0] = 1.0

    (test,) = read_got10k(root, "test")
    assert len(test) == 3 and test.boxes.shape == (1, 4)
    np.testing.assert_array_equal(test.boxes, [[10, 20, 30, 40]])
    np.testing.assert_array_equal(test.visible, [True])
    assert test.cover is None


def test_got10k_missing_list_and_root(tmp_path):
    root = make_got10k(tmp_path / "got10k")
    (root / "train" / "list.txt").unlink()
    with pytest.raises(TrackingDataError, match=r"train/list\.txt"):
        read_got10k(root, "train")
    with pytest.raises(TrackingDataError, match="nowhere: GOT-10k root does not exist"):
        read_got10k(tmp_path / "nowhere", "val")
    with pytest.raises(TrackingDataError, match="val: GOT-10k split folder does not exist"):
        read_got10k(root, "val")
    with pytest.raises(ValueError, match="split"):
        read_got10k(root, "training")


def test_got10k_list_names_missing_folder(tmp_path):
    root = make_got10k(tmp_path / "got10k")
    write_text(root / "train" / "list.txt", "GOT-10k_Train_000001\nGOT-10k_Train_000009\n")
    with pytest.raises(TrackingDataError, match=r"list\.txt:2: .*GOT-10k_Train_000009"):
        read_got10k(root, "train")


def test_got10k_missing_frame_named(tmp_path):
    root = make_got10k(tmp_path / "got10k")
    (root / "train" / "GOT-10k_Train_000002" / "00000002.jpg").unlink()
    with pytest.raises(TrackingDataError, match=r"GOT-10k_Train_000002: frame 00000002\.jpg is missing"):
        read_got10k(root, "train")


def test_got10k_malformed_groundtruth_line(tmp_path):
    root = make_got10k(tmp_path / "got10k")
    gt = root / "train" / "GOT-10k_Train_000001" / "groundtruth.txt"
    write_text(gt, "1,2,3,4\n5,6,7,8\n9,10,abc,12\n13,14,15,16\n")
    with pytest.raises(TrackingDataError, match="groundtruth.txt:3") as error:
        read_got10k(root, "train")
    assert "abc" in str(error.value)
    write_text(gt, "1,2,3,4\n5,6,7,8\n9,10,11\n13,14,15,16\n")
    with pytest.raises(TrackingDataError, match=r"groundtruth\.txt:3: expected 4 fields .*'9,10,11'"):
        read_got10k(root, "train")


def test_got10k_label_errors(tmp_path):
    root = make_got10k(tmp_path / "got10k")
    folder = root / "train" / "GOT-10k_Train_000001"
    write_text(folder / "absence.label", "0\n0\n1\n")
    with pytest.raises(TrackingDataError, match=r"absence\.label: 3 labels but 4 frames"):
        read_got10k(root, "train")
    write_text(folder / "absence.label", "0\n0\n1\n0\n")
    write_text(folder / "cover.label", "8\nfive\n0\n3\n")
    with pytest.raises(TrackingDataError, match=r"cover\.label:2: not an integer label: 'five'"):
        read_got10k(root, "train")
    write_text(folder / "cover.label", "8\n5\n9\n3\n")
    with pytest.raises(TrackingDataError, match=r"cover\.label:3: label 9 is not one of"):
        read_got10k(root, "train")
    (folder / "cover.label").unlink()
    with pytest.raises(TrackingDataError, match=r"cover\.label: file is missing"):
        read_got10k(root, "train")


def test_got10k_row_count_mismatch(tmp_path):
    root = make_got10k(tmp_path / "got10k")
    write_text(root / "train" / "GOT-10k_Train_000002" / "groundtruth.txt", GOT_TRAIN_BOXES + "1,1,1,1\n")
    with pytest.raises(TrackingDataError, match=r"GOT-10k_Train_000002/groundtruth\.txt: 5 rows but 4 frames"):
        read_got10k(root, "train")


# ---------------------------------------------------------------------------- box and label parsing


def test_box_parser_separators_nan_and_blank_lines(tmp_path):
    path = write_text(
        tmp_path / "groundtruth.txt",
        "1,2,3,4\r\n5\t6\t7\t8\n9 10  11 12\n13, 14,15\t16\nNaN,NaN,NaN,NaN\n\n  \n",
    )
    boxes = read_box_file(path)
    assert boxes.shape == (5, 4)
    np.testing.assert_array_equal(boxes[:4].ravel(), np.arange(1, 17))
    assert np.isnan(boxes[4]).all()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2,3,4\n\n5,6,7,8\n", r"groundtruth\.txt:2: empty line"),
        ("1,2,3,4\n5,,6,7\n", r"groundtruth\.txt:2: non-numeric field in '5,,6,7'"),
        ("1,2,3,4\n1,2,3,4,5\n", r"groundtruth\.txt:2: expected 4 fields x,y,w,h, got 5: '1,2,3,4,5'"),
        ("1,2,3,4\n1,2,inf,4\n", r"groundtruth\.txt:2: infinite value"),
    ],
)
def test_box_parser_errors(tmp_path, text, message):
    path = write_text(tmp_path / "groundtruth.txt", text)
    with pytest.raises(TrackingDataError, match=message):
        read_box_file(path)


def test_label_parser_both_layouts(tmp_path):
    per_line = read_label_file(write_text(tmp_path / "absence.label", "0\n1\n0\n"), (0, 1))
    one_line = read_label_file(write_text(tmp_path / "full_occlusion.txt", "0,1,0"), (0, 1))
    np.testing.assert_array_equal(per_line, [0, 1, 0])
    np.testing.assert_array_equal(one_line, [0, 1, 0])
    with pytest.raises(TrackingDataError, match=r"out_of_view\.txt:1: not an integer label: '0\.5'"):
        read_label_file(write_text(tmp_path / "out_of_view.txt", "0,0.5,1\n"))


def test_list_frames_errors(tmp_path):
    with pytest.raises(TrackingDataError, match="frame folder is missing"):
        list_frames(tmp_path / "img")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrackingDataError, match="no frames"):
        list_frames(tmp_path / "empty")
    write_frames(tmp_path / "gap", ["00000002.jpg", "00000003.jpg"])
    with pytest.raises(TrackingDataError, match=r"frame 00000001\.jpg is missing"):
        list_frames(tmp_path / "gap", first_number=1)
    write_frames(tmp_path / "named", ["00000001.jpg", "cover.jpg"])
    with pytest.raises(TrackingDataError, match="'cover.jpg' is not named by its frame number"):
        list_frames(tmp_path / "named", first_number=1)


# ---------------------------------------------------------------------------- LaSOT


def make_lasot_sequence(folder: Path, frames: int = 4, language: str = "white airplane landing on the runway") -> None:
    write_frames(folder / "img", [f"{k:08d}.jpg" for k in range(1, frames + 1)])
    write_text(folder / "groundtruth.txt", "".join(f"{10 + k},{20 + k},30,40\n" for k in range(frames)))
    write_text(folder / "full_occlusion.txt", ",".join("1" if k == 1 else "0" for k in range(frames)))
    write_text(folder / "out_of_view.txt", ",".join("1" if k == 2 else "0" for k in range(frames)))
    write_text(folder / "nlp.txt", language + "\n")


def make_lasot(root: Path) -> Path:
    for name in ("airplane-1", "airplane-2", "airplane-10"):
        make_lasot_sequence(root / "airplane" / name)
    make_lasot_sequence(root / "bird" / "bird-3", language="bird flying over the sea")
    write_text(root / "testing_set.txt", "airplane-1\nbird-3\n")
    return root


def test_lasot_nested_layout_and_splits(tmp_path):
    root = make_lasot(tmp_path / "LaSOTBenchmark")
    test = read_lasot(root, "test")
    assert [s.name for s in test] == ["airplane-1", "bird-3"]
    airplane = test[0]
    assert airplane.dataset == "lasot" and len(airplane) == 4
    np.testing.assert_array_equal(airplane.boxes[:, 0], [10, 11, 12, 13])
    np.testing.assert_array_equal(airplane.visible, [True, False, False, True])
    assert airplane.language == "white airplane landing on the runway" and airplane.cover is None
    assert [s.name for s in read_lasot(root, "train")] == ["airplane-2", "airplane-10"]
    assert [s.name for s in read_lasot(root, "all")] == ["airplane-1", "airplane-2", "airplane-10", "bird-3"]


def test_lasot_flat_layout_without_split_file(tmp_path):
    root = tmp_path / "LaSOT_test_flat"
    for name in ("bird-3", "airplane-1"):
        make_lasot_sequence(root / name, frames=3)
    (root / "airplane-1" / "nlp.txt").unlink()
    test = read_lasot(root)
    assert [s.name for s in test] == ["airplane-1", "bird-3"]
    assert test[0].language is None and test[1].language == "white airplane landing on the runway"
    with pytest.raises(TrackingDataError, match=r"testing_set\.txt: missing"):
        read_lasot(root, "train")


def test_lasot_errors(tmp_path):
    root = make_lasot(tmp_path / "LaSOT")
    write_text(root / "testing_set.txt", "airplane-1\ncat-5\n")
    with pytest.raises(TrackingDataError, match=r"testing_set\.txt:2: sequence 'cat-5' not found"):
        read_lasot(root, "test")
    write_text(root / "testing_set.txt", "airplane-1\n")
    write_text(root / "airplane" / "airplane-1" / "out_of_view.txt", "0,0,0")
    with pytest.raises(TrackingDataError, match=r"airplane-1/out_of_view\.txt: 3 labels but 4 frames"):
        read_lasot(root, "test")
    make_lasot_sequence(root / "airplane" / "airplane-1")
    write_text(root / "airplane" / "airplane-1" / "full_occlusion.txt", "0,2,0,0")
    with pytest.raises(TrackingDataError, match=r"full_occlusion\.txt:1: label 2"):
        read_lasot(root, "test")
    make_lasot_sequence(root / "airplane" / "airplane-1")
    (root / "airplane" / "airplane-1" / "img" / "00000003.jpg").unlink()
    with pytest.raises(TrackingDataError, match=r"airplane-1/img: frame 00000003\.jpg is missing"):
        read_lasot(root, "test")
    shutil.rmtree(root / "airplane" / "airplane-1")
    make_lasot_sequence(root / "airplane-1")  # the same sequence flat and nested
    make_lasot_sequence(root / "bird" / "airplane-1")
    with pytest.raises(TrackingDataError, match="also found at"):
        read_lasot(root, "all")


# ---------------------------------------------------------------------------- TrackingNet


def make_trackingnet(root: Path) -> Path:
    train_frames = write_frames(root / "TRAIN_0" / "frames" / "a1b2c3_0", [f"{k}.jpg" for k in range(12)])
    lines = [f"{k}.5,{2 * k},{10 + k},{12 + k}" for k in range(len(train_frames))]
    lines[4] = "7,8,0,12"  # target out of the frame: zero-size box
    write_text(root / "TRAIN_0" / "anno" / "a1b2c3_0.txt", "\n".join(lines) + "\n")
    write_frames(root / "TRAIN_1" / "frames" / "zz_1", [f"{k}.jpg" for k in range(2)])
    write_text(root / "TRAIN_1" / "anno" / "zz_1.txt", "1,2,3,4\n5,6,7,8\n")
    write_frames(root / "TEST" / "frames" / "test_seq", [f"{k}.jpg" for k in range(3)])
    write_text(root / "TEST" / "anno" / "test_seq.txt", "100.0,50.0,20.0,30.0\n")
    return root


def test_trackingnet_numeric_frame_order_and_test_chunk(tmp_path):
    root = make_trackingnet(tmp_path / "TrackingNet")
    (seq,) = read_trackingnet(root, [0])
    assert seq.name == "a1b2c3_0" and seq.dataset == "trackingnet"
    assert [p.name for p in seq.frames] == [f"{k}.jpg" for k in range(12)]  # 10.jpg after 9.jpg
    np.testing.assert_array_equal(seq.boxes[11], [11.5, 22, 21, 23])
    assert seq.visible.tolist() == [k != 4 for k in range(12)]
    (test,) = read_trackingnet(root, ["TEST"])
    assert len(test) == 3 and test.boxes.shape == (1, 4) and test.visible.tolist() == [True]
    assert [s.name for s in read_benchmark("trackingnet", root, "train")] == ["a1b2c3_0", "zz_1"]
    with pytest.raises(TrackingDataError, match="TRAIN_7: TrackingNet chunk folder does not exist"):
        read_trackingnet(root, ["TRAIN_7"])


def test_trackingnet_errors(tmp_path):
    root = make_trackingnet(tmp_path / "TrackingNet")
    write_text(root / "TRAIN_1" / "anno" / "zz_1.txt", "1,2,3,4\n")
    with pytest.raises(TrackingDataError, match=r"zz_1\.txt: 1 rows but 2 frames"):
        read_trackingnet(root, ["TRAIN_1"])
    (root / "TRAIN_0" / "frames" / "a1b2c3_0" / "0.jpg").unlink()
    with pytest.raises(TrackingDataError, match=r"a1b2c3_0: frame 0\.jpg is missing"):
        read_trackingnet(root, [0])


# ---------------------------------------------------------------------------- TNL2K


def test_tnl2k_mixed_separators_and_language(tmp_path):
    root = tmp_path / "TNL2K_test"
    write_frames(root / "advSamp_Baseball_game_002-Done" / "imgs", [f"{k:05d}.png" for k in range(1, 4)])
    write_text(root / "advSamp_Baseball_game_002-Done" / "groundtruth.txt", "1,2,3,4\n5\t6\t7\t8\n9, 10, 0, 12\n")
    write_text(root / "advSamp_Baseball_game_002-Done" / "language.txt", "the baseball thrown by the pitcher\n")
    write_frames(root / "Assassin_video_1-Done" / "imgs", ["frame_9.jpg", "frame_10.jpg"])
    write_text(root / "Assassin_video_1-Done" / "groundtruth.txt", "1,1,5,5\n2,2,5,5\n")
    assassin, baseball = read_benchmark("tnl2k", root, "test")  # natural order: "A" < "a"
    assert baseball.dataset == "tnl2k" and len(baseball) == 3
    np.testing.assert_array_equal(baseball.boxes.ravel(), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 12])
    assert baseball.visible.tolist() == [True, True, False]
    assert baseball.language == "the baseball thrown by the pitcher"
    assert [p.name for p in assassin.frames] == ["frame_9.jpg", "frame_10.jpg"] and assassin.language is None
    write_text(root / "Assassin_video_1-Done" / "groundtruth.txt", "1,1,5,5\n2,2,5,5\n3,3,5,5\n")
    with pytest.raises(TrackingDataError, match=r"Assassin_video_1-Done/groundtruth\.txt: 3 rows but 2 frames"):
        read_tnl2k(root)


# ---------------------------------------------------------------------------- COCO


def make_coco(root: Path) -> Path:
    write_frames(root / "val2017", ["000000000139.jpg", "000000000285.jpg"])
    content = {
        "info": {"description": "tiny"},
        "images": [
            {"id": 139, "file_name": "000000000139.jpg", "width": 32, "height": 24},
            {"id": 285, "file_name": "000000000285.jpg", "width": 32, "height": 24},
        ],
        "annotations": [
            {"id": 1, "image_id": 139, "bbox": [1.5, 2.0, 10.0, 8.0], "iscrowd": 0, "category_id": 1, "area": 80.0},
            {"id": 2, "image_id": 139, "bbox": [0.0, 0.0, 30.0, 20.0], "iscrowd": 1, "category_id": 1, "area": 600.0},
            {"id": 3, "image_id": 285, "bbox": [4.0, 4.0, 0.5, 9.0], "iscrowd": 0, "category_id": 2, "area": 4.5},
            {"id": 4, "image_id": 285, "bbox": [3.0, 5.0, 6.0, 2.0], "iscrowd": 0, "category_id": 3, "area": 12.0},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "kite"}, {"id": 3, "name": "cup"}],
    }
    write_text(root / "annotations" / "instances_val2017.json", json.dumps(content))
    return root


def test_coco_filters_crowds_and_small_boxes(tmp_path):
    root = make_coco(tmp_path / "coco")
    sequences = read_coco_boxes(root, "val2017")
    assert [s.name for s in sequences] == ["000000000139_1", "000000000285_4"]
    first = sequences[0]
    assert first.dataset == "coco" and len(first) == 1 and first.frames == (root / "val2017" / "000000000139.jpg",)
    np.testing.assert_array_equal(first.boxes, [[1.5, 2.0, 10.0, 8.0]])
    assert first.visible.tolist() == [True]
    assert [s.name for s in read_coco_boxes(root, "val2017", min_size=0.5)] == [
        "000000000139_1",
        "000000000285_3",
        "000000000285_4",
    ]
    assert [s.name for s in read_coco_boxes(root, "val2017", min_size=3.0)] == ["000000000139_1"]


def test_coco_errors(tmp_path):
    root = make_coco(tmp_path / "coco")
    with pytest.raises(TrackingDataError, match=r"instances_train2017\.json: COCO annotation file is missing"):
        read_coco_boxes(root)
    (root / "val2017" / "000000000285.jpg").unlink()
    with pytest.raises(TrackingDataError, match=r"000000000285\.jpg: image of .*annotations\[3\] is missing"):
        read_coco_boxes(root, "val2017")
    write_frames(root / "val2017", ["000000000285.jpg"])
    content = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    content["annotations"][3]["image_id"] = 999
    write_text(root / "annotations" / "instances_val2017.json", json.dumps(content))
    with pytest.raises(TrackingDataError, match=r"annotations\[3\]: image_id 999 is not in the file's images"):
        read_coco_boxes(root, "val2017")
    del content["annotations"][2]["image_id"]
    write_text(root / "annotations" / "instances_val2017.json", json.dumps(content))
    with pytest.raises(TrackingDataError, match=r"annotations\[2\]: missing key 'image_id'"):
        read_coco_boxes(root, "val2017")
    content["annotations"][2]["image_id"] = 285
    content["annotations"][0]["bbox"] = [1, 2, 3]
    write_text(root / "annotations" / "instances_val2017.json", json.dumps(content))
    with pytest.raises(TrackingDataError, match=r"annotations\[0\]: bbox must be 4 numbers"):
        read_coco_boxes(root, "val2017")
    write_text(root / "annotations" / "instances_val2017.json", '{"images": [')
    with pytest.raises(TrackingDataError, match="not valid JSON"):
        read_coco_boxes(root, "val2017")


# ---------------------------------------------------------------------------- dispatch and record


def test_read_benchmark_dispatch(tmp_path):
    assert BENCHMARKS == ("got10k", "lasot", "trackingnet", "tnl2k", "coco")
    got = read_benchmark("got10k", make_got10k(tmp_path / "got10k"), "train")
    assert [s.dataset for s in got] == ["got10k", "got10k"]
    assert len(read_benchmark("lasot", make_lasot(tmp_path / "lasot"))) == 2
    assert len(read_benchmark("coco", make_coco(tmp_path / "coco"), "val2017")) == 2
    with pytest.raises(ValueError, match="unknown tracking benchmark 'otb'"):
        read_benchmark("otb", tmp_path, "test")
    with pytest.raises(TrackingDataError, match="TNL2K root does not exist"):
        read_benchmark("tnl2k", tmp_path / "missing", "test")


def test_record_checks_its_shapes(tmp_path):
    frames = tuple(write_frames(tmp_path, ["1.jpg", "2.jpg"]))
    with pytest.raises(ValueError, match="visible must be bool"):
        TrackingSequence("s", "got10k", frames, np.zeros((2, 4)), np.ones(2, dtype=np.int64))
    with pytest.raises(ValueError, match="3 box rows for 2 frames"):
        TrackingSequence("s", "got10k", frames, np.zeros((3, 4)), np.ones(3, dtype=bool))
