"""Valid but unusual inputs give the results their ordinary forms give: images in other pixel modes or
with EXIF orientation decode to the picture as displayed, through every path that reads images; names
that sam3's tokenizer turns into the same token ids are one prompt, refused (or dropped) like an exact
repeat."""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam3_lora import predict as predict_cmd
from sam3_lora.data.config import Split
from sam3_lora.data.prompt_lists import read_prompt_list
from sam3_lora.data.sam3_dataset import build_dataset
from sam3_lora.data.validate import validate_split

ANNOTATIONS = "_annotations.coco.json"


def open_rgb(source, name):
    from sam3_lora.data.image_decode import open_rgb as decode  # imported here: the module is new with this file

    return decode(source, name)


def _picture(width=48, height=32) -> Image.Image:
    """An RGB picture with smooth gradients and hard edges (every channel and level used)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x * y) % 256], axis=-1).astype(np.uint8)
    rgb[8:16, 10:30] = (250, 20, 40)
    return Image.fromarray(rgb)


def _saved(image: Image.Image, fmt="PNG", **kwargs) -> io.BytesIO:
    data = io.BytesIO()
    image.save(data, format=fmt, **kwargs)
    data.seek(0)
    return data


def _sixteen_bit(grey: Image.Image) -> Image.Image:
    return Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)  # 0..255 -> 0..65535


def _binary(grey: Image.Image) -> Image.Image:
    return grey.point(lambda v: 255 if v > 127 else 0)


def _variants():
    rgb = _picture()
    grey = rgb.convert("L")
    palette = rgb.quantize(64)
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(np.full((rgb.height, rgb.width), 128, np.uint8)))
    la = grey.convert("LA")
    la.putalpha(128)
    return {
        "16-bit grey (I;16)": (_sixteen_bit(grey), grey.convert("RGB")),
        "32-bit integer grey holding 16-bit values (I)": (_sixteen_bit(grey).convert("I"), grey.convert("RGB")),
        "palette (P)": (palette, palette.convert("RGB")),
        "palette with transparency (P)": (palette, palette.convert("RGB")),
        "CMYK": (rgb.convert("CMYK"), rgb),
        "grey with alpha (LA)": (la, grey.convert("RGB")),
        "RGBA, half transparent": (rgba, rgb),
        "palette with alpha (PA)": (palette.convert("PA"), palette.convert("RGB")),
        "YCbCr": (rgb.convert("YCbCr"), rgb.convert("YCbCr").convert("RGB")),  # the round trip itself rounds
        "1-bit": (_binary(grey).convert("1"), _binary(grey).convert("RGB")),
    }


@pytest.mark.parametrize("name", list(_variants()))
def test_every_pixel_mode_decodes_to_the_8_bit_picture(name):
    stored, expected = _variants()[name]
    fmt = "TIFF" if stored.mode in ("CMYK", "I", "YCbCr", "PA") else "PNG"
    extra = {"transparency": 0} if "transparency" in name else {}
    decoded = open_rgb(_saved(stored, fmt, **extra), name)
    assert decoded.mode == "RGB" and decoded.size == expected.size
    assert np.abs(np.asarray(decoded).astype(int) - np.asarray(expected.convert("RGB")).astype(int)).max() <= 1


def test_exif_orientation_is_applied():
    picture = _picture()
    # Stored turned a quarter (as a phone's sensor reads it); the tag says how to show it upright.
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    jpeg = _saved(picture.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif.tobytes())
    stored = Image.open(io.BytesIO(jpeg.getvalue())).convert("RGB")  # the pixels as stored, JPEG's rounding in
    assert stored.size == (picture.height, picture.width)
    decoded = open_rgb(jpeg, "phone.jpg")
    assert decoded.size == picture.size
    assert np.array_equal(np.asarray(decoded), np.asarray(stored.transpose(Image.Transpose.ROTATE_270)))


def test_modes_without_a_faithful_reading_are_refused_by_name():
    floats = Image.fromarray(np.linspace(0, 1, 48 * 32, dtype=np.float32).reshape(32, 48), mode="F")
    from sam3_lora.data.image_decode import ImageModeError

    with pytest.raises(ImageModeError, match=r"scan\.tif: pixel mode 'F' has no faithful 8-bit RGB reading"):
        open_rgb(_saved(floats, "TIFF"), "scan.tif")


def test_premultiplied_alpha_keeps_the_colours():
    from sam3_lora.data.image_decode import to_rgb

    rgba = _picture()
    rgba.putalpha(128)
    grey_alpha = rgba.convert("LA")
    for premultiplied, expected in ((rgba.convert("RGBa"), rgba), (grey_alpha.convert("La"), grey_alpha)):
        decoded = np.asarray(to_rgb(premultiplied, "x")).astype(int)
        assert np.abs(decoded - np.asarray(expected.convert("RGB")).astype(int)).max() <= 1, premultiplied.mode


@pytest.fixture
def twin_splits(toy_root, tmp_path):
    """Two copies of the toy test split: every image as 8-bit grey, and the same as 16-bit grey."""
    source = Path(toy_root) / "test"
    splits = {}
    for kind in ("8-bit", "16-bit"):
        folder = tmp_path / kind
        folder.mkdir()
        shutil.copy(source / ANNOTATIONS, folder / ANNOTATIONS)
        for image in json.loads((source / ANNOTATIONS).read_text())["images"]:
            grey = Image.open(source / image["file_name"]).convert("L")
            (grey if kind == "8-bit" else _sixteen_bit(grey)).save(folder / image["file_name"])
        splits[kind] = Split(str(folder / ANNOTATIONS), str(folder))
    return splits


def test_training_and_evaluation_read_a_16_bit_copy_as_its_8_bit_original(twin_splits):
    for training in (False, True):
        inputs = {}
        for kind, split in twin_splits.items():
            torch.manual_seed(0)
            dataset = build_dataset(split, resolution=56, training=training, hflip=0.0, num_hard_negatives=0)
            inputs[kind] = dataset[0].images[0].data
        assert torch.equal(inputs["8-bit"], inputs["16-bit"])


def test_predict_reads_a_16_bit_copy_as_its_8_bit_original(twin_splits):
    folders = {kind: Path(split.img_folder) for kind, split in twin_splits.items()}
    names = sorted(p.name for p in folders["8-bit"].glob("*.png"))
    _, eight, _ = predict_cmd.load_images([folders["8-bit"] / n for n in names], stop_on_error=True)
    _, sixteen, _ = predict_cmd.load_images([folders["16-bit"] / n for n in names], stop_on_error=True)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(eight, sixteen))


def _split_with_categories(tmp_path, names):
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 16, "height": 16}],
        "annotations": [],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
    }
    (tmp_path / ANNOTATIONS).write_text(json.dumps(coco))
    return validate_split(tmp_path / ANNOTATIONS, tmp_path)[0]


LONG = "a " * 40  # past the text encoder's 30 tokens


@pytest.mark.parametrize(
    "names", [["Hard Hat", "hard  hat"], ["helmet", "HELMET "], [LONG + "red", LONG + "blue"]], ids=str
)
def test_category_names_that_are_one_prompt_are_refused(tmp_path, names):
    report = _split_with_categories(tmp_path, names)
    assert list(report.errors) == ["category names that are one prompt"], report.summary()
    summary = report.summary()
    assert all(repr(n.strip()) in summary for n in names) and "merge or rename them" in summary, summary


def test_distinct_category_names_are_accepted(tmp_path):
    report = _split_with_categories(tmp_path, ["hard hat", "hard hats", "vest"])
    assert not report.errors, report.summary()


def _phone_picture(folder: Path) -> Image.Image:
    """``phone.jpg`` in ``folder``: a 48x32 picture stored turned a quarter, with the EXIF tag that turns it
    back; returns the picture as displayed."""
    exif = Image.Exif()
    exif[0x0112] = 6
    _picture().transpose(Image.Transpose.ROTATE_90).save(folder / "phone.jpg", quality=95, exif=exif.tobytes())
    with Image.open(folder / "phone.jpg") as stored:
        return stored.convert("RGB").transpose(Image.Transpose.ROTATE_270)


@pytest.mark.parametrize("json_size, accepted", [((48, 32), True), ((32, 48), False)], ids=["displayed", "stored"])
def test_annotation_sizes_are_those_of_the_picture_as_displayed(tmp_path, json_size, accepted):
    _phone_picture(tmp_path)
    coco = {
        "images": [{"id": 1, "file_name": "phone.jpg", "width": json_size[0], "height": json_size[1]}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 40, 20], "area": 800, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / ANNOTATIONS).write_text(json.dumps(coco))
    report = validate_split(tmp_path / ANNOTATIONS, tmp_path)[0]
    assert not report.errors if accepted else "as displayed (its EXIF orientation turns it)" in report.summary()


def test_training_and_predict_read_an_exif_turned_picture_upright(tmp_path):
    """The phone picture and an upright PNG of it give the same model input (its boxes are drawn upright)."""
    inputs = {}
    for kind in ("phone", "upright"):
        folder = tmp_path / kind
        folder.mkdir()
        displayed = _phone_picture(folder)
        file_name = "phone.jpg"
        if kind == "upright":
            (folder / file_name).unlink()
            file_name = "upright.png"
            displayed.save(folder / file_name)
        coco = {
            "images": [{"id": 1, "file_name": file_name, "width": 48, "height": 32}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 40, 20], "area": 800, "iscrowd": 0}
            ],
            "categories": [{"id": 1, "name": "thing"}],
        }
        (folder / ANNOTATIONS).write_text(json.dumps(coco))
        dataset = build_dataset(Split(str(folder / ANNOTATIONS), str(folder)), resolution=56, training=False)
        inputs[kind] = dataset[0].images[0].data
        _, (predicted,), _ = predict_cmd.load_images([folder / file_name], stop_on_error=True)
        assert np.array_equal(np.asarray(predicted), np.asarray(displayed))
    assert torch.equal(inputs["phone"], inputs["upright"])


def test_negative_prompts_that_are_a_category_are_left_out(twin_splits):
    negatives = ["  CIRCLE ", "Circle", "hexagon", "hexagon  shape"]
    dataset = build_dataset(
        twin_splits["8-bit"], resolution=56, training=True, hflip=0.0, num_hard_negatives=-1, negative_prompts=negatives
    )
    asked = [q.query_text for q in dataset[0].find_queries]
    assert sum(t.lower().strip() == "circle" for t in asked) == 1, asked
    assert "hexagon" in asked and "hexagon  shape" in asked


def test_prompt_lists_keep_one_name_per_prompt(tmp_path):
    assert read_prompt_list(["Hard Hat", "hard  hat", "vest", LONG + "x", LONG + "y"], "preserve.vocabulary") == [
        "Hard Hat",
        "vest",
        LONG.strip() + " x",
    ]


def test_predict_refuses_prompts_that_are_one_prompt():
    from omegaconf import OmegaConf

    with pytest.raises(predict_cmd.PredictError, match=r"'Hard Hat' and 'hard  hat' are one prompt to the model"):
        predict_cmd.given_prompts(OmegaConf.create({"prompts": ["Hard Hat", "hard  hat"]}))
