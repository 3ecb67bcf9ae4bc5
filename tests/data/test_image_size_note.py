"""``train`` warns in one line when an ImageFolder's images do not suit ``data.image_size``."""

from __future__ import annotations

from pathlib import Path

from data_writers import write_imagefolder
from PIL import Image

from resdist.config import DataConfig
from resdist.data import build_data
from resdist.data.imagefolder import image_size_note
from resdist.data.transforms import FolderPreprocessing


def _bundle_notes(root: Path, **keys) -> list[str]:
    cfg = DataConfig(name="imagefolder", data_dir=str(root), batch_size=2, num_workers=0, **keys)
    return build_data(cfg).notes


def test_small_images_at_the_default_size_are_named_with_the_setting(tmp_path):
    write_imagefolder(tmp_path / "d", num_classes=2, n_train=3, n_val=1, size=40)
    (note,) = _bundle_notes(tmp_path / "d")
    assert "smaller than the network input data.image_size=224" in note
    assert "--set data.image_size=40 --set data.crop_pct=1.0" in note
    assert "\n" not in note
    # at their own size (or smaller): nothing to say
    assert _bundle_notes(tmp_path / "d", image_size=32, crop_pct=1.0) == []


def test_uniform_images_enlarged_by_the_crop_margin_suggest_crop_pct(tmp_path):
    for i in range(4):
        folder = tmp_path / "d" / "train" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64)).save(folder / f"{i}.png")
    paths = [str(p) for p in sorted((tmp_path / "d").rglob("*.png"))]
    note = image_size_note(paths, FolderPreprocessing(64))  # crop_pct 0.875: resized to 73
    assert "64x64 (all 4 sampled)" in note and "enlarges them to 73" in note
    assert "data.crop_pct=1.0" in note
    assert image_size_note(paths, FolderPreprocessing(64, crop_pct=1.0)) == ""
    assert image_size_note(paths, FolderPreprocessing(56)) == ""  # 64 -> crop 56: as meant


def test_only_a_sample_of_the_images_is_opened(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    write_imagefolder(tmp_path / "d", num_classes=2, n_train=40, n_val=1, size=20)
    paths = [str(p) for p in sorted((tmp_path / "d" / "train").rglob("*.JPEG"))]
    opened = []
    real_open = PILImage.open
    monkeypatch.setattr(PILImage, "open", lambda p, *a, **k: opened.append(p) or
                        real_open(p, *a, **k))
    assert "data.image_size=224" in image_size_note(paths, FolderPreprocessing(224), samples=8)
    assert len(opened) == 8
