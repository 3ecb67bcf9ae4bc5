from pathlib import Path

import pytest
import torch
from PIL import Image

from resdist.config import DataConfig
from resdist.data import DataError, TorchLoader, build_data, read_imagefolder
from resdist.data.transforms import IMAGENET_MEAN, IMAGENET_STD

COLOURS = {"ant": (200, 10, 10), "bee": (10, 200, 10), "cat": (10, 10, 200)}


def _tree(root: Path, per_class: dict[str, int]) -> Path:
    for split, count in per_class.items():
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", (40 + i, 36), colour).save(folder / f"{i}.png")
    return root


@pytest.fixture
def tree(tmp_path):
    return _tree(tmp_path / "imgs", {"train": 4, "val": 2})


def _cfg(root, **kw):
    base = dict(name="imagefolder", data_dir=str(root), image_size=16, batch_size=4,
                eval_batch_size=4, num_workers=0)
    base.update(kw)
    return DataConfig(**base)


def test_bundle_shapes_labels_and_eval_normalisation(tree):
    bundle = build_data(_cfg(tree))
    assert isinstance(bundle.train, TorchLoader)
    assert (bundle.num_classes, bundle.in_chans, bundle.image_size) == (3, 3, 16)
    assert bundle.class_names == ["ant", "bee", "cat"]
    assert len(bundle.train) == 3 and bundle.train.num_samples == 12
    x, y = next(iter(bundle.train))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    xs, ys = zip(*bundle.test)
    x, y = torch.cat(xs), torch.cat(ys)
    assert y.tolist() == [0, 0, 1, 1, 2, 2]
    for img, label in zip(x, y):
        colour = COLOURS[bundle.class_names[label]]
        ref = [(c / 255 - m) / s for c, m, s in zip(colour, IMAGENET_MEAN, IMAGENET_STD)]
        torch.testing.assert_close(img.mean((1, 2)), torch.tensor(ref), atol=1e-4, rtol=0)


def test_epochs_shuffle_deterministically(tree):
    a, b = build_data(_cfg(tree, batch_size=1), seed=3), build_data(_cfg(tree, batch_size=1),
                                                                    seed=3)
    ea = [torch.cat([y for _, y in a.train]) for _ in range(3)]
    eb = [torch.cat([y for _, y in b.train]) for _ in range(3)]
    assert all(torch.equal(p, q) for p, q in zip(ea, eb))
    assert not (torch.equal(ea[0], ea[1]) and torch.equal(ea[1], ea[2]))


def test_val_split_limits_and_sharding(tree):
    bundle = build_data(_cfg(tree, val_split=3, limit_test=4))
    assert bundle.val.dataset_size == 3 and bundle.train.dataset_size == 9
    assert sorted(torch.cat([y for _, y in bundle.val]).tolist()) == [0, 1, 2]  # stratified
    assert bundle.test.dataset_size == 4
    parts = [build_data(_cfg(tree, batch_size=2), rank=r, world_size=2, shard_eval=True)
             for r in range(2)]
    assert len(parts[0].train) == len(parts[1].train) == 3
    assert parts[0].test.num_samples + parts[1].test.num_samples == 6


def test_errors(tmp_path, tree):
    with pytest.raises(DataError, match="train/ and val/"):
        read_imagefolder(tmp_path / "nothing")
    (tree / "train" / "dog").mkdir()
    (tree / "val" / "dog").mkdir()
    with pytest.raises(DataError, match="dog"):
        build_data(_cfg(tree))
    (tree / "val" / "dog").rmdir()
    Image.new("RGB", (8, 8)).save(tree / "train" / "dog" / "0.png")
    with pytest.raises(DataError, match="different class folders"):
        build_data(_cfg(tree))


def test_bad_images_are_found_before_training_or_skipped_and_counted(tree, capsys):
    from resdist.data.imagefolder import bad_images

    empty = tree / "train" / "ant" / "empty.png"
    empty.write_bytes(b"")
    cut = tree / "train" / "bee" / "cut.png"
    cut.write_bytes((tree / "train" / "bee" / "0.png").read_bytes()[:40])
    found = dict(bad_images(sorted(str(p) for p in (tree / "train").rglob("*.png"))))
    assert set(found) == {str(empty), str(cut)} and "0 bytes" in found[str(empty)]
    with pytest.raises(DataError, match=f"{empty}.*and 1 more bad files.*skip_bad_images"):
        read_imagefolder(tree, image_size=16)
    train, _ = read_imagefolder(tree, image_size=16, skip_bad_images=True)
    assert len(train) == 12 and str(empty) not in [p for p, _ in train.samples]
    assert "left out 2 unreadable image files" in capsys.readouterr().err


def test_preprocessing_is_configurable_and_the_contract_records_it(tree, tmp_path):
    """Native-size images: no crop margin, pad-and-crop augmentation, bicubic, the folder's own
    mean/std; the run's contract says exactly that, and predict then feeds what eval fed."""
    from resdist.config import Config
    from resdist.data.contract import contract_from_bundle
    from resdist.deploy.predictor import load_image

    cfg = _cfg(tree, crop_pct=1.0, train_crop="pad-crop", interpolation="bicubic",
               normalization="dataset")
    bundle = build_data(cfg)
    contract = contract_from_bundle(bundle)
    assert contract.resize == 16 and contract.interpolation == "bicubic"
    ant = [c / 255 for c in COLOURS["ant"]]
    # the folder holds equal numbers of red, green and blue images: mean 0.286 per channel
    assert contract.mean == pytest.approx([sum(c) / 3 / 255 for c in zip(*COLOURS.values())],
                                          abs=1e-3)
    x, y = next(iter(bundle.test))
    first = sorted((tree / "val" / "ant").iterdir())[0]
    assert torch.allclose(x[0], torch.from_numpy(load_image(first, contract)), atol=1e-5)
    assert x[0].mean((1, 2)).tolist() == pytest.approx(
        [(a - m) / s for a, m, s in zip(ant, contract.mean, contract.std)], abs=1e-3)
    xt, _ = next(iter(bundle.train))
    assert xt.shape == (4, 3, 16, 16)
    # explicit statistics and ranges are checked like every other key
    cfg2 = _cfg(tree, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    assert contract_from_bundle(build_data(cfg2)).std == [0.25, 0.25, 0.25]
    for key, value in (("data.crop_pct", 0), ("data.interpolation", "lanczos"),
                       ("data.train_crop", "five-crop"), ("data.resize", 8),
                       ("data.crop_scale", [0.5, 0.2]), ("data.mean", [0.5, 0.5, 0.5])):
        with pytest.raises(ValueError, match=key.split(".")[1]):
            Config().override(["data.name=imagefolder", "data.image_size=16",
                               f"data.{key.split('.')[1]}={value}"]).validate()


def test_workers_start_by_forkserver_once_a_threaded_runtime_is_loaded(tree, monkeypatch):
    """Forking a process that holds JAX's (LiteRT's) or ExecuTorch's threads can kill the child;
    once one of them is imported, workers start by forkserver, which needs a picklable dataset,
    and give the same batches as loading in the main process."""
    import pickle
    import sys
    import types

    bundle = build_data(_cfg(tree))
    dataset = bundle.test.dataset
    folder = getattr(dataset, "dataset", dataset)  # the ImageFolder, under a Subset or not
    copy = pickle.loads(pickle.dumps(folder))
    assert copy.samples == folder.samples and type(copy) is type(folder)

    def batches(loader):
        return [(x.clone(), y.clone()) for x, y in loader]

    reference = batches(TorchLoader(dataset, batch_size=2))
    assert TorchLoader(dataset, batch_size=2, num_workers=1).loader.multiprocessing_context is None
    monkeypatch.setitem(sys.modules, "ai_edge_litert", types.ModuleType("ai_edge_litert"))
    loader = TorchLoader(dataset, batch_size=2, num_workers=1)
    assert loader.loader.multiprocessing_context.get_start_method() == "forkserver"
    got = batches(loader)
    assert len(got) == len(reference)
    for (x, y), (rx, ry) in zip(got, reference):
        assert torch.equal(y, ry)
        torch.testing.assert_close(x, rx)
