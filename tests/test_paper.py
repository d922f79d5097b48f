"""End-to-end tests of ``vsgd-bayes paper`` on tiny synthetic data sets in both layouts.

The data are a few random images of 3 classes written as the CIFAR-100 "python" pickles and as
the Tiny ImageNet-200 folder of JPEGs; the models are shrunk with ``--width-multiplier``.
"""

import importlib.util
import json
import os
import pickle

import numpy as np
import pytest
import torch

from vsgd_bayes.apps.paper import cli
from vsgd_bayes.apps.paper.data import (
    DatasetNotFoundError,
    augment,
    load_cifar100,
    load_tiny_imagenet,
)
from vsgd_bayes.apps.paper.models import MODELS, build_model
from vsgd_bayes.apps.paper.train import CHECKPOINT_NAME, _atomic_write

TINY = ["--width-multiplier", "0.0625", "--batch-size", "4", "--no-progress"]


def write_cifar100(root, train=24, test=9, classes=3, seed=0):
    rng = np.random.RandomState(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    labels = {}
    for split, count in (("train", train), ("test", test)):
        labels[split] = [int(i % classes) for i in range(count)]
        batch = {
            b"data": rng.randint(0, 256, (count, 3072)).astype(np.uint8),
            b"fine_labels": labels[split],
        }
        with open(folder / split, "wb") as handle:
            pickle.dump(batch, handle)
    with open(folder / "meta", "wb") as handle:
        pickle.dump({b"fine_label_names": [f"class{i}".encode() for i in range(classes)]}, handle)
    return labels


def write_tiny_imagenet(root, per_class=4, val=6, size=64, seed=0):
    from PIL import Image

    rng = np.random.RandomState(seed)
    folder = root / "tiny-imagenet-200"
    wnids = ["n003", "n001", "n002"]  # deliberately unsorted: labels follow the sorted order
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for wnid in wnids:
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.randint(0, 256, (size, size, 3)).astype(np.uint8)
            Image.fromarray(pixels).save(images / f"{wnid}_{i}.JPEG")
    lines = []
    for i in range(val):
        Image.fromarray(rng.randint(0, 256, (size, size, 3)).astype(np.uint8)).save(
            folder / "val" / "images" / f"val_{i}.JPEG"
        )
        lines.append(f"val_{i}.JPEG\t{wnids[i % 3]}\t0\t0\t{size}\t{size}")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return wnids


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar100(root)
    return root


def test_cifar100_loader_reads_pickles(tmp_path):
    labels = write_cifar100(tmp_path, train=5, test=4)
    data = load_cifar100(str(tmp_path))
    with open(tmp_path / "cifar-100-python" / "train", "rb") as handle:
        raw = pickle.load(handle, encoding="bytes")[b"data"]
    assert data.train_images.shape == (5, 3, 32, 32) and data.train_images.dtype == torch.uint8
    # Rows are channel-major: the first 1024 bytes are the red plane, row by row.
    assert np.array_equal(data.train_images[2, 0].numpy().ravel(), raw[2, :1024])
    assert np.array_equal(data.train_images[2, 2].numpy().ravel(), raw[2, 2048:])
    assert (
        data.train_labels.tolist() == labels["train"]
        and data.test_labels.tolist() == labels["test"]
    )
    assert data.num_classes == 3


def test_tiny_imagenet_loader_labels_follow_sorted_wnids(tmp_path):
    write_tiny_imagenet(tmp_path, per_class=2, val=6, size=16)
    data = load_tiny_imagenet(str(tmp_path))
    assert data.num_classes == 3
    assert data.train_images.shape == (6, 3, 16, 16)
    # Sorted wnids n001, n002, n003 -> labels 0, 1, 2, two images each.
    assert data.train_labels.tolist() == [0, 0, 1, 1, 2, 2]
    # val_i is annotated with wnids[i % 3] of the unsorted list [n003, n001, n002].
    assert data.test_labels.tolist() == [2, 0, 1, 2, 0, 1]


@pytest.mark.parametrize(
    "experiment, layout",
    [
        ("cifar100-vgg16", "cifar-100-python/{train,test,meta}"),
        ("tinyimagenet-convmixer", "tiny-imagenet-200/{wnids.txt"),
    ],
)
def test_missing_data_names_the_expected_layout(tmp_path, capsys, experiment, layout):
    assert cli.main([experiment, "--data-dir", str(tmp_path), *TINY]) == 2
    assert layout in capsys.readouterr().err
    with pytest.raises(DatasetNotFoundError, match="Invalid data_dir"):
        load_cifar100(str(tmp_path))


def test_augment_is_a_shifted_and_flipped_window():
    images = torch.randint(
        0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    out = augment(images, torch.Generator().manual_seed(1), padding=2)
    again = augment(images, torch.Generator().manual_seed(1), padding=2)
    assert torch.equal(out, again)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    flips = 0
    for i in range(16):
        windows = [padded[i, :, r : r + 8, c : c + 8] for r in range(5) for c in range(5)]
        plain = any(torch.equal(out[i], w) for w in windows)
        flipped = any(torch.equal(out[i], w.flip(2)) for w in windows)
        assert plain or flipped
        flips += flipped and not plain
    assert 0 < flips < 16  # both branches were drawn (fixed seed)


@pytest.mark.parametrize("name", MODELS)
def test_models_build_and_classify(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, width_multiplier=1 / 16)
    for size in (32, 64):
        assert model(torch.randn(2, 3, size, size)).shape == (2, 3)


def test_full_size_models_have_the_papers_widths():
    def count(model):
        return sum(p.numel() for p in model.parameters())

    # Known sizes of these architectures with 100 classes: VGG16-bn without its FC stack
    # (14.7M), ConvMixer-256/8 (0.6M), ResNeXt-18 (CIFAR, 8x64d, one block per stage, 11.1M).
    assert abs(count(build_model("vgg16_bn", 100)) - 14.77e6) < 0.01e6
    assert abs(count(build_model("convmixer", 100)) - 0.617e6) < 0.001e6
    assert abs(count(build_model("resnext18", 100)) - 11.09e6) < 0.01e6


def read_log(path):
    with open(path) as handle:
        log = json.load(handle)
    # Wall time differs between runs by nature; everything else must match.
    return log, [
        {k: v for k, v in r.items() if k != "seconds_this_session"} for r in log["records"]
    ]


def test_interrupted_run_resumes_exactly(cifar_dir, tmp_path):
    common = [
        "cifar100-vgg16",
        "--data-dir",
        str(cifar_dir),
        "--optimizer",
        "vsgd",
        "--iterations",
        "8",
        "--eval-every",
        "3",
        "--seed",
        "5",
        *TINY,
    ]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli.main([*common, "--checkpoint-dir", str(whole)]) == 0
    # Interrupted after 4 iterations (mid-epoch: 24 images / batch 4 = 6 per epoch, and before
    # the lr halving at 8 // 3 = 2, 4, 6), then resumed twice with the same command.
    assert cli.main([*common, "--checkpoint-dir", str(parts), "--max-iterations", "4"]) == 0
    log, _ = read_log(parts / "log.json")
    assert not log["finished"] and [r["iteration"] for r in log["records"]] == [3]
    assert cli.main([*common, "--checkpoint-dir", str(parts), "--max-iterations", "3"]) == 0
    assert cli.main([*common, "--checkpoint-dir", str(parts)]) == 0
    a = torch.load(whole / CHECKPOINT_NAME, weights_only=False)
    b = torch.load(parts / CHECKPOINT_NAME, weights_only=False)
    assert a["iteration"] == b["iteration"] == 8
    # Bitwise: same operations in the same order on the CPU.
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(
                torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][index][key])
            ), key
    assert a["scheduler"] == b["scheduler"] and a["scheduler"]["last_epoch"] == 8
    log_a, records_a = read_log(whole / "log.json")
    log_b, records_b = read_log(parts / "log.json")
    assert log_a["finished"] and log_b["finished"]
    assert records_a == records_b and [r["iteration"] for r in records_a] == [3, 6, 8]
    # The lr was halved at iterations 2, 4, 6 (last record: after 8 scheduler steps).
    assert records_a[-1]["lr"] == pytest.approx(0.1 / 2**4)


def test_resume_refuses_a_different_configuration(cifar_dir, tmp_path, capsys):
    common = [
        "cifar100-convmixer",
        "--data-dir",
        str(cifar_dir),
        "--iterations",
        "2",
        "--checkpoint-dir",
        str(tmp_path),
        *TINY,
    ]
    assert cli.main([*common, "--optimizer", "adamw", "--max-iterations", "1"]) == 0
    with pytest.raises(ValueError, match=r"different configuration.*'lr'.*'optimizer'"):
        cli.main([*common, "--optimizer", "sgd"])


def test_tiny_imagenet_end_to_end(tmp_path):
    write_tiny_imagenet(tmp_path)
    log = tmp_path / "run.json"
    assert (
        cli.main(
            [
                "tinyimagenet-resnext18",
                "--data-dir",
                str(tmp_path),
                "--optimizer",
                "sgd",
                "--iterations",
                "2",
                "--eval-every",
                "1",
                "--log",
                str(log),
                *TINY,
            ]
        )
        == 0
    )
    records = json.loads(log.read_text())["records"]
    assert [r["iteration"] for r in records] == [1, 2]
    # 6 test images, so the accuracy is a multiple of 1/6 and the loss finite.
    assert all(
        round(6 * r["test_accuracy"]) == pytest.approx(6 * r["test_accuracy"]) for r in records
    )
    assert all(np.isfinite(r["test_loss"]) for r in records)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_text("old")

    def failing(temporary):
        with open(temporary, "w") as handle:
            handle.write("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        _atomic_write(str(path), failing)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["checkpoint.pt"]


def test_bad_arguments_are_rejected(cifar_dir, capsys):
    with pytest.raises(SystemExit):
        cli.main(["cifar100-vgg16", "--data-dir", str(cifar_dir), "--iterations", "0"])
    assert "Invalid --iterations: 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["cifar100-vgg16", "--data-dir", str(cifar_dir), "--optimizer", "adam"])


def test_paper_speed_script_writes_json(tmp_path):
    # Loaded in-process (a subprocess would pay torch's import again).
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "paper_speed.py")
    spec = importlib.util.spec_from_file_location("paper_speed", path)
    paper_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paper_speed)
    out = tmp_path / "speed.json"
    assert (
        paper_speed.main(
            [
                "--device",
                "cpu",
                "--experiment",
                "cifar100-convmixer",
                "--iterations",
                "2",
                "--warmup",
                "1",
                "--width-multiplier",
                "0.0625",
                "--batch-size",
                "4",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads(out.read_text())["results"]
    assert [r["optimizer"] for r in results] == ["vsgd", "adamw"]
    assert all(r["iterations_per_second"] > 0 and np.isfinite(r["final_loss"]) for r in results)
