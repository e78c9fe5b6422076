"""Dataset layouts, pairing, labels, manifests and the dataset check, on tiny synthetic trees."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tdkstain.plumbing.errors import TdkstainError
from tdkstain.data.pairs import Pair, check_dataset, detect_layout, discover_pairs, knowledge_paths, parse_her2_label

RNG = np.random.default_rng(7)


def tile(path: Path, size: tuple[int, int] = (16, 16), fmt: str | None = None) -> Path:
    """A small random RGB image file; ``fmt`` overrides the format the suffix implies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = RNG.integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt or {".jpg": "JPEG", ".tif": "TIFF"}.get(path.suffix, "PNG"))
    path.write_bytes(buffer.getvalue())
    return path


def release_tree(root: Path, stems=("a", "b"), splits=("train", "test")) -> Path:
    for split in splits:
        for stem in stems:
            tile(root / f"{split}_HE" / f"{stem}.png")
            tile(root / f"{split}_IHC" / f"{stem}.png")
    return root


def add_knowledge_folders(root: Path, split: str = "train", stem: str = "a") -> None:
    """What `tdkstain extract` and `tdkstain synth` write: must never be taken for data."""
    for folder in ("_IHC_dab", "_IHC_dab_mask", "_IHC_nuclei_map", "_IHC_overlay"):
        tile(root / f"{split}{folder}" / f"{stem}.png")
    (root / f"{split}_IHC_nuclei").mkdir(parents=True, exist_ok=True)
    (root / f"{split}_IHC_nuclei" / f"{stem}.csv").write_text("x,y\n1,2\n")
    (root / f"{split}_truth").mkdir(exist_ok=True)
    (root / f"{split}_truth" / f"{stem}.json").write_text("{}")
    (root / "extraction_report").mkdir(exist_ok=True)
    (root / "extraction.json").write_text("{}")


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize(
    "stem, label",
    [
        ("00052_test_3+", "3+"),
        ("x_0", "0"),
        ("x_1+", "1+"),
        ("x_2+", "2+"),
        ("synth_00007_2+", "2+"),
        ("00052_test_4+", None),
        ("00052_test", None),
        ("3+", None),
        ("a_3", None),
        ("a_3+_b", None),
    ],
)
def test_parse_her2_label(stem, label):
    assert parse_her2_label(stem) == label


# --------------------------------------------------------------------------- layouts


def test_release_layout(tmp_path):
    release_tree(tmp_path)
    layout = detect_layout(tmp_path)
    assert (layout.name, layout.splits, layout.root) == ("release", ("test", "train"), tmp_path)
    pairs = discover_pairs(tmp_path)
    assert [(p.split, p.stem) for p in pairs] == [("test", "a"), ("test", "b"), ("train", "a"), ("train", "b")]
    assert pairs[2] == Pair("a", tmp_path / "train_HE" / "a.png", tmp_path / "train_IHC" / "a.png", "train", None)


def test_bci_layout_with_labels_in_names(tmp_path):
    for split, stems in {"train": ["00001_train_1+", "00002_train_3+"], "test": ["00003_test_0"]}.items():
        for stem in stems:
            tile(tmp_path / "HE" / split / f"{stem}.png", fmt="JPEG")  # BCI: JPEG bytes in .png files
            tile(tmp_path / "IHC" / split / f"{stem}.png", fmt="JPEG")
    layout = detect_layout(tmp_path)
    assert (layout.name, layout.splits) == ("bci", ("test", "train"))
    pairs = discover_pairs(tmp_path)
    assert [(p.split, p.stem, p.label) for p in pairs] == [
        ("test", "00003_test_0", "0"),
        ("train", "00001_train_1+", "1+"),
        ("train", "00002_train_3+", "3+"),
    ]
    assert pairs[0].he == tmp_path / "HE" / "test" / "00003_test_0.png"
    assert check_dataset(tmp_path, progress=False).ok


def test_mist_layout_and_its_real_nesting(tmp_path):
    root = tmp_path / "HER2" / "TrainValAB"
    for split in ("train", "val"):
        for stem in ("10M_1_2", "10M_1_3"):
            tile(root / f"{split}A" / f"{stem}.jpg")
            tile(root / f"{split}B" / f"{stem}.jpg")
    layout = detect_layout(root)
    assert (layout.name, layout.splits) == ("mist", ("train", "val"))
    pairs = discover_pairs(root, split="val")
    assert [(p.stem, p.he.parent.name, p.ihc.parent.name, p.label) for p in pairs] == [
        ("10M_1_2", "valA", "valB", None),
        ("10M_1_3", "valA", "valB", None),
    ]
    # One folder too high: the error lists the layouts and points at the right folder.
    with pytest.raises(TdkstainError, match=r"(?s)no paired H&E/IHC layout.*release.*BCI.*MIST.*manifest.*Did you mean .*TrainValAB"):
        detect_layout(tmp_path / "HER2")


def test_knowledge_folders_are_not_splits(tmp_path):
    release_tree(tmp_path)
    add_knowledge_folders(tmp_path, "train")
    add_knowledge_folders(tmp_path, "test")
    layout = detect_layout(tmp_path)
    assert layout.splits == ("test", "train")
    assert {p.ihc.parent.name for p in discover_pairs(tmp_path)} == {"train_IHC", "test_IHC"}
    # The same folders beside a BCI or MIST layout do not make it ambiguous.
    bci = tmp_path / "bci"
    tile(bci / "HE" / "train" / "a.png")
    tile(bci / "IHC" / "train" / "a.png")
    add_knowledge_folders(bci)
    assert (detect_layout(bci).name, detect_layout(bci).splits) == ("bci", ("train",))
    mist = tmp_path / "mist"
    tile(mist / "trainA" / "a.png")
    tile(mist / "trainB" / "a.png")
    add_knowledge_folders(mist)
    assert (detect_layout(mist).name, detect_layout(mist).splits) == ("mist", ("train",))
    assert check_dataset(mist, progress=False).ok


def test_files_are_matched_by_stem_and_filtered(tmp_path):
    tile(tmp_path / "train_HE" / "a.png")
    tile(tmp_path / "train_IHC" / "a.JPG")  # other suffix, upper case
    tile(tmp_path / "train_HE" / "b.TIFF")
    tile(tmp_path / "train_IHC" / "b.bmp", fmt="BMP")
    tile(tmp_path / "train_HE" / ".hidden.png")
    tile(tmp_path / "train_IHC" / ".tmp-c-123.png")
    (tmp_path / "train_HE" / "notes.txt").write_text("ignored")
    (tmp_path / "train_HE" / "sub").mkdir()
    pairs = discover_pairs(tmp_path)
    assert [(p.stem, p.he.name, p.ihc.name) for p in pairs] == [("a", "a.png", "a.JPG"), ("b", "b.TIFF", "b.bmp")]
    assert check_dataset(tmp_path, progress=False).ok


def test_unknown_split_gives_no_pairs_and_unpaired_files_warn(tmp_path):
    release_tree(tmp_path, splits=("train",))
    tile(tmp_path / "train_HE" / "lonely.png")
    assert discover_pairs(tmp_path, split="test") == []
    with pytest.warns(UserWarning, match=r"1 image\(s\) without a partner.*lonely\.png"):
        pairs = discover_pairs(tmp_path, split="train")
    assert [p.stem for p in pairs] == ["a", "b"]


def test_no_layout_errors(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(TdkstainError, match=r"(?s)no paired H&E/IHC layout.*\{split\}_HE.*Found in .*: images\."):
        detect_layout(tmp_path)
    with pytest.raises(TdkstainError, match=r"nothere: no such folder"):
        detect_layout(tmp_path / "nothere")


def test_two_layouts_in_one_folder_is_an_error(tmp_path):
    release_tree(tmp_path, splits=("train",))
    tile(tmp_path / "HE" / "train" / "a.png")
    with pytest.raises(TdkstainError, match="two layouts"):
        detect_layout(tmp_path)


def test_label_from_names_needs_an_unambiguous_score(tmp_path):
    # "_0" alone may be a tile index: not a label.
    for stem in ("slide_0", "slide_1"):
        tile(tmp_path / "train_HE" / f"{stem}.png")
        tile(tmp_path / "train_IHC" / f"{stem}.png")
    assert [p.label for p in discover_pairs(tmp_path)] == [None, None]
    # With one real score in the dataset, "_0" is a label too.
    tile(tmp_path / "train_HE" / "slide_2+.png")
    tile(tmp_path / "train_IHC" / "slide_2+.png")
    assert [p.label for p in discover_pairs(tmp_path)] == ["0", None, "2+"]


def test_duplicate_stems_are_refused(tmp_path):
    release_tree(tmp_path, stems=("a",), splits=("train",))
    tile(tmp_path / "train_HE" / "a.jpg")
    with pytest.raises(TdkstainError, match=r"duplicate_stem: train_HE/a\.(png|jpg): same stem as a\.(png|jpg)"):
        discover_pairs(tmp_path)


def test_knowledge_paths_follow_the_release_names(tmp_path):
    paths = knowledge_paths(tmp_path, "train", "00052_train_3+")
    assert paths.dab == tmp_path / "train_IHC_dab" / "00052_train_3+.png"
    assert paths.dab_mask == tmp_path / "train_IHC_dab_mask" / "00052_train_3+.png"
    assert paths.nuclei_map == tmp_path / "train_IHC_nuclei_map" / "00052_train_3+.png"
    assert paths.nuclei_map_float == tmp_path / "train_IHC_nuclei_map" / "00052_train_3+.tif"
    assert paths.nuclei_csv == tmp_path / "train_IHC_nuclei" / "00052_train_3+.csv"


# --------------------------------------------------------------------------- manifest


def test_manifest_with_labels_and_splits(tmp_path):
    tile(tmp_path / "he" / "x_1+.png")
    tile(tmp_path / "ihc" / "x_1+.png")
    tile(tmp_path / "he" / "y.png")
    tile(tmp_path / "ihc" / "y_ihc.png")
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("HE,IHC,label,split\nhe/x_1+.png,ihc/x_1+.png,3+,train\nhe/y.png,ihc/y_ihc.png,,test\n")
    layout = detect_layout(tmp_path, manifest=csv_path)
    assert (layout.name, layout.splits, layout.manifest) == ("manifest", ("test", "train"), csv_path)
    pairs = discover_pairs(tmp_path, manifest=csv_path)
    # the label column wins over the name (x_1+ is labelled 3+); the stem is the IHC stem
    assert [(p.split, p.stem, p.label) for p in pairs] == [("test", "y_ihc", None), ("train", "x_1+", "3+")]
    assert pairs[1].he == tmp_path / "he" / "x_1+.png"
    # the CSV itself may be passed as the root; a relative --manifest is found inside the root
    assert discover_pairs(csv_path) == pairs
    assert discover_pairs(tmp_path, manifest="pairs.csv") == pairs
    assert discover_pairs(tmp_path, manifest=csv_path, split="train") == pairs[1:]


def test_manifest_without_split_column_uses_all(tmp_path):
    tile(tmp_path / "a_he.png")
    tile(tmp_path / "a_ihc.png")
    (tmp_path / "m.csv").write_text("\ufeffhe,ihc\na_he.png,a_ihc.png\n\n")
    assert [(p.split, p.stem) for p in discover_pairs(tmp_path / "m.csv")] == [("all", "a_ihc")]


def test_manifest_refuses_paths_leaving_its_folder(tmp_path):
    data = tmp_path / "data"
    tile(tmp_path / "outside.png")
    tile(data / "in.png")
    (data / "m.csv").write_text(f"he,ihc\n../outside.png,in.png\n{tmp_path / 'outside.png'},in.png\nsub/../in.png,in.png\n")
    with pytest.raises(TdkstainError, match=r"(?s)line 2: he path '\.\./outside\.png' leaves the CSV's folder.*line 3: he path .* is absolute"):
        discover_pairs(data / "m.csv")
    # sub/../in.png stays inside: fine. With allow_outside all three rows pair (then a duplicate stem).
    with pytest.raises(TdkstainError, match=r"line 3: IHC stem 'in' in split 'all' already on line 2"):
        discover_pairs(data / "m.csv", allow_outside=True)


def test_manifest_row_problems_are_all_listed(tmp_path):
    tile(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("he,ihc,label,split\na.png,gone.png,,train\n,a.png,,train\na.png,a.png,4+,train\na.png,a.png,,tr/ain\n")
    with pytest.raises(TdkstainError) as info:
        discover_pairs(tmp_path / "m.csv")
    message = str(info.value)
    assert "4 problem(s)" in message
    assert "missing_file: gone.png: listed in m.csv line 2 (ihc) but not found" in message
    assert "line 3: the 'he' cell is empty" in message
    assert "bad_label: m.csv: line 4: label '4+'" in message
    assert "line 5: split 'tr/ain'" in message


def test_manifest_header_errors(tmp_path):
    (tmp_path / "m.csv").write_text("he_path,ihc_path\na,b\n")
    with pytest.raises(TdkstainError, match=r"m\.csv: no column 'he' or 'ihc'"):
        discover_pairs(tmp_path, manifest=tmp_path / "m.csv")
    with pytest.raises(TdkstainError, match=r"missing\.csv.*no such file"):
        discover_pairs(tmp_path, manifest="missing.csv")


# --------------------------------------------------------------------------- check


def test_check_finds_every_problem_at_once(tmp_path):
    release_tree(tmp_path, stems=("good_1+", "good_2+"), splits=("train",))
    tile(tmp_path / "train_HE" / "lonely_he_0.png")
    tile(tmp_path / "train_IHC" / "lonely_ihc_0.png")
    tile(tmp_path / "train_HE" / "wide_0.png", size=(16, 24))
    tile(tmp_path / "train_IHC" / "wide_0.png", size=(16, 16))
    tile(tmp_path / "train_HE" / "cut_3+.png", size=(64, 64))
    data = (tmp_path / "train_HE" / "cut_3+.png").read_bytes()
    (tmp_path / "train_HE" / "cut_3+.png").write_bytes(data[: len(data) // 2])
    tile(tmp_path / "train_IHC" / "cut_3+.png", size=(64, 64))
    tile(tmp_path / "train_HE" / "text_1+.png")
    (tmp_path / "train_IHC" / "text_1+.png").write_text("not an image")
    tile(tmp_path / "train_HE" / "empty_2+.png")
    (tmp_path / "train_IHC" / "empty_2+.png").write_bytes(b"")
    tile(tmp_path / "train_HE" / "five_5+.png")
    tile(tmp_path / "train_IHC" / "five_5+.png")
    tile(tmp_path / "train_HE" / "nolabel.png")
    tile(tmp_path / "train_IHC" / "nolabel.png")

    report = check_dataset(tmp_path, progress=False, workers=2)
    found = {(p.kind, p.path.name) for p in report.problems}
    assert found == {
        ("missing_ihc", "lonely_he_0.png"),
        ("missing_he", "lonely_ihc_0.png"),
        ("size_mismatch", "wide_0.png"),
        ("unreadable", "cut_3+.png"),
        ("unreadable", "text_1+.png"),
        ("unreadable", "empty_2+.png"),
        ("odd_label", "five_5+.png"),
        ("missing_label", "nolabel.png"),
    }
    assert not report.ok
    messages = {p.kind: p.message for p in report.problems}
    assert "24x16" in messages["size_mismatch"] and "16x16" in messages["size_mismatch"]
    assert report.pairs_per_split() == {"train": 8}
    assert report.labels_per_split()["train"] == {"0": 1, "1+": 2, "2+": 2, "3+": 1, None: 2}
    assert report.image_sizes[(16, 16)] >= 10 and report.image_sizes[(64, 64)] == 1
    assert "split train: 8 pairs" in report.summary()
    lines = report.problem_lines()
    assert any(line.startswith("unreadable") and "train_IHC/empty_2+.png: the file is empty" in line for line in lines)


def test_check_collects_conversion_notes(tmp_path):
    release_tree(tmp_path, stems=("a",), splits=("train",))
    rgba = np.dstack([RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8), np.zeros((16, 16), np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "train_HE" / "a.png")
    report = check_dataset(tmp_path, progress=False)
    assert report.ok
    assert [(p.name, "white" in n) for p, n in report.notes] == [("a.png", True)]
    assert "note: transparent pixels" in report.summary()


def test_check_split_and_empty_dataset(tmp_path):
    release_tree(tmp_path, splits=("train",))
    (tmp_path / "test_HE").mkdir()
    (tmp_path / "test_IHC").mkdir()
    assert check_dataset(tmp_path, split="train", progress=False).ok
    report = check_dataset(tmp_path, split="test", progress=False)
    assert [p.kind for p in report.problems] == ["no_pairs"]
    with pytest.raises(TdkstainError, match=r"no split 'val'; splits found: test, train"):
        check_dataset(tmp_path, split="val", progress=False)


def test_check_manifest_problems(tmp_path):
    tile(tmp_path / "a.png", size=(16, 16))
    tile(tmp_path / "b.png", size=(16, 20))
    (tmp_path / "m.csv").write_text("he,ihc,label\na.png,b.png,2+\n../x.png,a.png,\n")
    report = check_dataset(tmp_path, manifest=tmp_path / "m.csv", progress=False)
    assert {(p.kind, p.path.name) for p in report.problems} == {("size_mismatch", "a.png"), ("manifest", "m.csv")}
