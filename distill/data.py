"""Data sets as in-memory tensors, a registry to load them by name, and transfer sets.

Every loader returns a `Dataset` with float inputs (images as N x 1 x H x W in [0, 1], vectors as N x D),
int64 labels, and, where the data set knows one, the coarse group of each class.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from distill.config import check_arguments
from distill.errors import ConfigError, DataError
from distill.image_folder import list_folder, read_folder, split_per_class
from distill.memory import check_fits, physical_memory
from distill.native import kernels
from distill.plugins import is_plugin, load_plugin
from distill.storage import atomic_torch_save, cache_home, fingerprint
from distill.streamed import STATS_CHUNK, Inputs, StreamedImages, channel_stats, inputs_hash

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    name: str
    x_train: Inputs  # a tensor, or images streamed from their files (distill/streamed.py)
    y_train: torch.Tensor
    x_test: Inputs
    y_test: torch.Tensor
    num_classes: int
    groups: torch.Tensor | None = None  # coarse group of each class, where the data set knows one

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: str | torch.device) -> Dataset:
        return dataclasses.replace(self, **{name: getattr(self, name).to(device)
                                            for name in ("x_train", "y_train", "x_test", "y_test")})

    def fingerprint(self) -> str:
        """A hash of the examples themselves: a changed data file changes it even under the same config."""
        return fingerprint([self.name, *(inputs_hash(t) for t in (self.x_train, self.y_train, self.x_test,
                                                                  self.y_test))])


_LOADERS: dict[str, Callable[..., Dataset]] = {}


def register_dataset(name: str):
    def decorator(loader: Callable[..., Dataset]) -> Callable[..., Dataset]:
        _LOADERS[name] = loader
        return loader
    return decorator


def dataset_names() -> list[str]:
    return sorted(_LOADERS)


def resolve_data_root(cli_root: str | None) -> Path:
    """`--data-root`, else $DISTILLERY_DATA, else the per-user cache folder."""
    root = cli_root or os.environ.get("DISTILLERY_DATA") or cache_home() / "data"
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"data root {root} is a file, not a folder")
    return root


def load_dataset(name: str, data_root: Path, options: dict | None = None, download: bool = False) -> Dataset:
    """Load data set `name` with its options, which are checked against the loader's signature: a registered
    name, or "package.module:function", the user's loader (docs/own-data.md#plug-in-loaders), given `data_root`
    and `download` where it takes them, whose result is checked like an arrays file. Loaders take the data root
    as `data_root`, so that an option may be called `root` (image_folder's)."""
    options = dict(options or {})
    if is_plugin(name):
        loader = load_plugin(name, "data.name")
        check_arguments(loader, options, {"data_root", "download"}, "option", f"in data.options for '{name}'")
        accepted = inspect.signature(loader).parameters
        given = {key: value for key, value in (("data_root", Path(data_root)), ("download", download))
                 if key in accepted}
        data = loader(**given, **options)
        if not isinstance(data, Dataset):
            raise DataError(f"data.name={name!r} returned {type(data).__name__}, not a distill.data.Dataset")
        return check_dataset(data, name)
    if name not in _LOADERS:
        raise ConfigError(f"unknown data set '{name}' in data.name (known: {', '.join(dataset_names())}, or "
                          "package.module:function)")
    loader = _LOADERS[name]
    check_arguments(loader, options, {"data_root", "download"}, "option", f"in data.options for '{name}'")
    return loader(data_root=Path(data_root), download=download, **options)


def check_dataset(data: Dataset, source: str) -> Dataset:
    """`data` if it keeps the Dataset contract, else a DataError naming `source`: float inputs, finite, with
    train and test rows of one shape; int64 labels in 0..num_classes-1, one per input row; a group per class."""
    for split in ("train", "test"):
        inputs, labels = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        streamed = isinstance(inputs, StreamedImages)  # decoded to float32 in [0, 1], normalised by a std > 0
        if (not streamed and not inputs.is_floating_point()) or labels.dtype != torch.int64 or labels.dim() != 1:
            raise DataError(f"{source}: x_{split} must be a float tensor and y_{split} an int64 vector, got "
                            f"{inputs.dtype} and {labels.dtype} of {labels.dim()} dimensions")
        if len(inputs) != len(labels) or not len(labels):
            raise DataError(f"{source}: x_{split} has {len(inputs)} rows and y_{split} {len(labels)}; they must "
                            "match and not be empty")
        if not streamed and not torch.isfinite(inputs).all():
            raise DataError(f"{source}: x_{split} holds NaN or infinite values")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= data.num_classes:
            raise DataError(f"{source}: label {low if low < 0 else high} of y_{split} is outside "
                            f"0..{data.num_classes - 1}")
    if data.x_train.shape[1:] != data.x_test.shape[1:]:
        raise DataError(f"{source}: x_train rows are {tuple(data.x_train.shape[1:])} but x_test rows "
                        f"{tuple(data.x_test.shape[1:])}")
    if data.groups is not None and len(data.groups) != data.num_classes:
        raise DataError(f"{source}: groups has {len(data.groups)} entries, one per class needs {data.num_classes}")
    return data


def _images(uint8: torch.Tensor) -> torch.Tensor:
    return uint8.to(torch.float32).div_(255.0).unsqueeze(1)


def _torchvision_idx(cls_name: str, folder: str, root: Path, download: bool) -> Dataset:
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    expected = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    raw = root / folder / "raw"
    missing = [name for name in expected if not (raw / name).is_file()]
    if missing and not download:
        raise DataError(f"{folder} not found: expected {', '.join(expected)} in {raw} (pass --download to fetch them)")
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except (RuntimeError, ValueError, AssertionError, OSError) as error:
        raise DataError(f"{folder} files in {raw} cannot be read ({error}); they may be truncated") from None
    return Dataset(folder.lower(), _images(train.data), train.targets.long(), _images(test.data),
                   test.targets.long(), num_classes=10)


@register_dataset("mnist")
def load_mnist(data_root: Path, download: bool = False) -> Dataset:
    return _torchvision_idx("MNIST", "MNIST", data_root, download)


@register_dataset("fashion_mnist")
def load_fashion_mnist(data_root: Path, download: bool = False) -> Dataset:
    return _torchvision_idx("FashionMNIST", "FashionMNIST", data_root, download)


@register_dataset("digits")
def load_digits(data_root: Path, download: bool = False, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images): no download, the embedded default's data."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise ConfigError(f"data.options.test_fraction must be in (0, 1), got {test_fraction}")
    bunch = sklearn_digits()
    x = torch.tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(bunch.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed,
                                           stratify=bunch.target)
    return Dataset("digits", x[train_idx], y[train_idx], x[test_idx], y[test_idx], num_classes=10)


@register_dataset("synthetic")
def load_synthetic(data_root: Path, download: bool = False, classes: int = 100, groups: int = 10, dim: int = 64,
                   train_per_class: int = 50, test_per_class: int = 20, group_spread: float = 6.0,
                   class_spread: float = 1.5, noise: float = 1.0, group_size_exponent: float = 0.0,
                   seed: int = 0) -> Dataset:
    """A large label set with known confusable structure.

    Group centres are drawn with scale `group_spread` (far apart); each class centre is its group's centre plus
    an offset of scale `class_spread` (close to its siblings); each example is its class centre plus Gaussian
    noise of scale `noise`. Group g holds a share of the classes proportional to (g + 1) ** -group_size_exponent:
    0 gives equal sizes (+-1, class c in group c % groups); 1 gives Zipf-like sizes, a few large groups of
    mutually confusable classes and many small ones, as in real label sets (JFT's specialists covered some classes
    ten times and half of them never).
    """
    if classes < 2 or not 1 <= groups <= classes:
        raise ConfigError(f"synthetic data needs classes >= 2 and 1 <= groups <= classes, got {classes}, {groups}")
    if not (isinstance(group_size_exponent, (int, float)) and 0 <= group_size_exponent <= 10):
        raise ConfigError(f"group_size_exponent must be a number in [0, 10], got {group_size_exponent!r}")
    if dim < 1 or train_per_class < 1 or test_per_class < 1:
        raise ConfigError("synthetic data needs dim, train_per_class and test_per_class >= 1")
    examples = classes * (train_per_class + test_per_class)
    check_fits(examples * (dim * 4 + 8), f"data.options: synthetic data of classes={classes:,} x (train_per_class="
                                         f"{train_per_class:,} + test_per_class={test_per_class:,}) x dim={dim:,}")
    generator = torch.Generator().manual_seed(seed)
    group_of_class = _groups_of_classes(classes, groups, group_size_exponent)
    group_centres = torch.randn(groups, dim, generator=generator) * group_spread / dim**0.5
    centres = group_centres[group_of_class] + torch.randn(classes, dim, generator=generator) * class_spread / dim**0.5

    def sample(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(classes).repeat_interleave(per_class)
        inputs = centres[labels] + torch.randn(len(labels), dim, generator=generator) * noise / dim**0.5
        return inputs, labels

    x_train, y_train = sample(train_per_class)
    x_test, y_test = sample(test_per_class)
    return Dataset("synthetic", x_train, y_train, x_test, y_test, num_classes=classes, groups=group_of_class)


def _groups_of_classes(classes: int, groups: int, exponent: float) -> torch.Tensor:
    """The group of each class: sizes proportional to (g + 1) ** -exponent (largest remainders, at least one class
    each), classes dealt to the groups in turn, skipping full ones (equal sizes give class c group c % groups)."""
    shares = torch.arange(1, groups + 1, dtype=torch.float64) ** -exponent
    spare = classes - groups  # every group gets one class; the rest goes by share
    exact = shares / shares.sum() * spare
    sizes = exact.floor().long()
    sizes[torch.argsort(exact - sizes, descending=True, stable=True)[: spare - int(sizes.sum())]] += 1
    sizes += 1
    group = torch.arange(groups).repeat_interleave(sizes)
    rank = torch.cat([torch.arange(size) for size in sizes.tolist()])
    return group[torch.argsort(rank * groups + group)]


ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")


@register_dataset("arrays")
def load_arrays(data_root: Path, download: bool = False, path: str | None = None) -> Dataset:
    """Your own data as one NumPy `.npz` file (docs/own-data.md): `x_train`, `y_train`, `x_test`, `y_test`, and
    optionally `groups` (one coarse group id per class, for the clustering's adjusted Rand index) and
    `class_names` (one per class: they fix the class count). Inputs are images N x H x W or N x C x H x W, or
    vectors N x D; uint8 is scaled to [0, 1], floats are kept. Labels are integers 0..C-1. Other keys are ignored.

    A relative `path` is looked up in the current folder, then under the data root.
    """
    if not path:
        raise ConfigError("data.options.path is required for data.name=arrays: the .npz file to read")
    file = _local_or_under(path, data_root)
    if not file.is_file():
        raise DataError(f"data.options.path: no file {path} (looked in the current folder and under {data_root})")
    try:
        with np.load(file, allow_pickle=False) as bundle:
            missing = [key for key in ARRAY_KEYS if key not in bundle.files]
            if missing:
                raise DataError(f"{file} has no {', '.join(missing)} (an arrays file needs {', '.join(ARRAY_KEYS)})")
            arrays = {key: bundle[key] for key in (*ARRAY_KEYS, "groups", "class_names") if key in bundle.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(f"{file} cannot be read as a NumPy .npz file ({error})") from None
    check_fits(4 * (arrays["x_train"].size + arrays["x_test"].size), f"{file} as float32 inputs")
    x_train, x_test = (_array_inputs(arrays[key], key, file) for key in ("x_train", "x_test"))
    y_train, y_test = (_array_labels(arrays[key], key, file) for key in ("y_train", "y_test"))
    groups = _array_labels(arrays["groups"], "groups", file) if "groups" in arrays else None
    largest = int(max(y_train.max(), y_test.max())) if len(y_train) and len(y_test) else 0
    num_classes = len(arrays["class_names"]) if "class_names" in arrays else largest + 1
    return check_dataset(Dataset(file.stem, x_train, y_train, x_test, y_test, num_classes, groups), str(file))


def _array_inputs(array: np.ndarray, key: str, file: Path) -> torch.Tensor:
    """Inputs as float32: images get a channel axis when they have none, uint8 is scaled to [0, 1]."""
    if array.dtype == np.uint8:
        inputs = torch.from_numpy(array).float().div_(255.0)
    elif np.issubdtype(array.dtype, np.floating):
        inputs = torch.from_numpy(array.astype(np.float32, copy=False))
    else:
        raise DataError(f"{file}: {key} is {array.dtype}; inputs must be uint8 or floating point")
    if array.ndim not in (2, 3, 4):
        raise DataError(f"{file}: {key} has shape {array.shape}; expected N x D, N x H x W or N x C x H x W")
    return inputs.unsqueeze(1) if array.ndim == 3 else inputs


def _array_labels(array: np.ndarray, key: str, file: Path) -> torch.Tensor:
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{file}: {key} must be one integer per row, got {array.dtype} of shape {array.shape}")
    return torch.from_numpy(array.astype(np.int64))


@register_dataset("image_folder")
def load_image_folder(data_root: Path, download: bool = False, root: str | None = None, size: int = 32,
                      channels: int = 3, test_root: str | None = None, test_fraction: float = 0.2, seed: int = 0,
                      mean: list[float] | None = None, std: list[float] | None = None,
                      memory_budget_gb: float | None = None, workers: int = 0) -> Dataset:
    """Images in class folders (distill/image_folder.py; docs/own-data.md): `root/CLASS/*` or
    `root/GROUP/CLASS/*` (groups then score the clustering), resized to `size` x `size` with `channels` 1 or 3.
    The test set is `test_root` (the same classes), else a seeded `test_fraction` of each class. Inputs are
    normalised per channel with `mean` and `std`, computed from the training images when not given. Relative
    folders are looked up in the current folder, then under the data root.

    Decoded images larger than `memory_budget_gb` (default: a quarter of this machine's memory) are streamed
    from their files (distill/streamed.py) instead of held in memory, decoded by `workers` DataLoader processes.
    The default, 0, decodes in the training process: a CPU job already keeps its cores busy, and decoding beside
    it in other processes only adds contention (benchmarks/streaming.py); a GPU job leaves cores idle for them."""
    if not root:
        raise ConfigError("data.options.root is required for data.name=image_folder: the folder of class folders")
    if channels not in (1, 3):
        raise ConfigError(f"data.options.channels must be 1 or 3, got {channels}")
    if size < 1 or not 0 < test_fraction < 1:
        raise ConfigError(f"data.options: size must be >= 1 and test_fraction in (0, 1), got {size}, {test_fraction}")
    if (memory_budget_gb is not None and memory_budget_gb < 0) or workers < 0:
        raise ConfigError(f"data.options: memory_budget_gb and workers must be >= 0, got {memory_budget_gb}, "
                          f"{workers}")
    train = list_folder(_local_or_under(root, data_root))
    test = list_folder(_local_or_under(test_root, data_root)) if test_root else None
    if test is not None and test.classes != train.classes:
        differ = sorted(set(train.classes) ^ set(test.classes))
        raise DataError(f"the classes of data.options.root and test_root differ: {', '.join(differ[:5])}"
                        + (f" and {len(differ) - 5} more" if len(differ) > 5 else ""))
    decoded_bytes = 4 * channels * size * size * (len(train.files) + (len(test.files) if test else 0))
    budget = memory_budget_gb * 2**30 if memory_budget_gb is not None else physical_memory() / 4
    if decoded_bytes <= budget:
        read = lambda listing: read_folder(listing, size, channels)  # noqa: E731
    else:
        log.info("streaming %s: %.1f GiB decoded is over the memory budget of %.1f GiB", root, decoded_bytes / 2**30,
                 budget / 2**30)
        read = lambda listing: StreamedImages(tuple(map(str, listing.files)), size, channels,  # noqa: E731
                                              torch.zeros(channels, 1, 1), torch.ones(channels, 1, 1),
                                              listing.source, workers)
    images = read(train)
    if test is not None:
        x_train, y_train, x_test, y_test = images, train.labels, read(test), test.labels
    else:
        held_out = split_per_class(train.labels, test_fraction, seed)
        x_train, y_train = images[~held_out], train.labels[~held_out]
        x_test, y_test = images[held_out], train.labels[held_out]
    if mean is None or std is None:
        centre, scale = _training_stats(x_train)
    centre = torch.tensor(mean, dtype=torch.float32) if mean is not None else centre
    scale = torch.tensor(std, dtype=torch.float32) if std is not None else scale
    if len(centre) != channels or len(scale) != channels or not (scale > 0).all():
        raise ConfigError(f"data.options: mean and std need {channels} values each, std > 0; got {mean}, {std}")
    centre, scale = centre[:, None, None], scale[:, None, None]
    return check_dataset(Dataset(Path(root).name, _normalised(x_train, centre, scale), y_train,
                                 _normalised(x_test, centre, scale), y_test, len(train.classes), train.groups),
                         str(root))


def _training_stats(images: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel mean and standard deviation of the training images; for streamed images, kept in the
    per-user cache (they take a pass over every file)."""
    if not isinstance(images, StreamedImages):
        return channel_stats(images.split(STATS_CHUNK))
    cached = cache_home() / "image_folders" / f"{images.fingerprint()}.stats.pt"
    if cached.is_file():
        stats = torch.load(cached, weights_only=True)
        return stats["mean"], stats["std"]
    mean, std = channel_stats(images.split(STATS_CHUNK))
    atomic_torch_save(cached, {"mean": mean, "std": std})
    return mean, std


def _normalised(images: Inputs, centre: torch.Tensor, scale: torch.Tensor) -> Inputs:
    if isinstance(images, StreamedImages):
        return dataclasses.replace(images, centre=centre, scale=scale)
    return (images - centre) / scale


def _local_or_under(path: str, data_root: Path) -> Path:
    """`path` as given when it exists (or is absolute), else under the data root."""
    given = Path(path)
    return given if given.is_absolute() or given.exists() else data_root / given


@register_dataset("omniglot")
def load_omniglot(data_root: Path, download: bool = False, subset: str = "background", size: int = 28,
                  train_per_class: int = 15, alphabets: list[int] | None = None) -> Dataset:
    """Omniglot characters as classes, resized to `size` x `size`; the alphabet of each class is its group.

    `subset` is "background", "evaluation" or "all". Each character has 20 drawings; the first
    `train_per_class` (in file-name order) are training data, the rest test data: a fixed split. `alphabets`
    keeps only those alphabets (their positions in name order, from 0), a label set of its own: its characters
    are the classes 0..C-1 in the same order, its alphabets the groups 0..len-1.
    The root may hold `images_background/` (or `omniglot-py/images_background/`) or the zip
    `omniglot-background.zip`, which is unpacked once into the per-user cache.
    """
    subsets = {"background": ["images_background"], "evaluation": ["images_evaluation"],
               "all": ["images_background", "images_evaluation"]}
    if subset not in subsets:
        raise ConfigError(f"data.options.subset must be one of {', '.join(subsets)}, got {subset!r}")
    if not 1 <= train_per_class < 20:
        raise ConfigError(f"data.options.train_per_class must be in [1, 19], got {train_per_class}")
    cached = cache_home() / "omniglot" / f"{subset}_{size}.pt"
    if cached.is_file():
        tensors = torch.load(cached, weights_only=True)
    else:
        folders = [_omniglot_folder(data_root, name) for name in subsets[subset]]
        tensors = _read_omniglot(folders, size)
        atomic_torch_save(cached, tensors)
    images, labels, groups = tensors["images"], tensors["labels"], tensors["groups"]
    drawing = tensors["drawing"]
    if alphabets is not None:
        images, labels, drawing, groups = _alphabets_only(images, labels, drawing, groups, alphabets)
    train = drawing < train_per_class
    return Dataset("omniglot", images[train], labels[train], images[~train], labels[~train],
                   num_classes=len(groups), groups=groups)


def _alphabets_only(images: torch.Tensor, labels: torch.Tensor, drawing: torch.Tensor, groups: torch.Tensor,
                    alphabets: list[int]) -> tuple[torch.Tensor, ...]:
    """The drawings of `alphabets` only, their characters renumbered 0..C-1 and their alphabets 0..len-1."""
    count = int(groups.max()) + 1
    if not alphabets or len(set(alphabets)) != len(alphabets) or not all(0 <= a < count for a in alphabets):
        raise ConfigError(f"data.options.alphabets must be distinct alphabet positions in 0..{count - 1}, "
                          f"got {alphabets}")
    kept_classes = torch.isin(groups, torch.tensor(alphabets)).nonzero().squeeze(1)
    new_label = torch.full((len(groups),), -1, dtype=torch.long)
    new_label[kept_classes] = torch.arange(len(kept_classes))
    new_group = torch.full((count,), -1, dtype=torch.long)
    new_group[sorted(alphabets)] = torch.arange(len(alphabets))
    rows = new_label[labels] >= 0
    return images[rows], new_label[labels[rows]], drawing[rows], new_group[groups[kept_classes]]


def _omniglot_folder(root: Path, name: str) -> Path:
    for candidate in (root / name, root / "omniglot-py" / name):
        if candidate.is_dir():
            return candidate
    archive = root / f"omniglot-{name.removeprefix('images_')}.zip"
    if archive.is_file():
        target = cache_home() / "omniglot" / "unzipped"
        if not (target / "omniglot-py" / name).is_dir():
            log.info("unpacking %s into %s", archive, target)
            try:
                with zipfile.ZipFile(archive) as bundle:
                    bundle.extractall(target)
            except zipfile.BadZipFile:
                raise DataError(f"{archive} is not a readable zip file; it may be truncated") from None
        return target / "omniglot-py" / name
    raise DataError(f"Omniglot not found: expected {root / name}/ or {root / 'omniglot-py' / name}/ "
                    f"or {archive}")


def _read_omniglot(folders: list[Path], size: int) -> dict[str, torch.Tensor]:
    from PIL import Image

    images, labels, drawings, groups = [], [], [], []
    alphabets = [a for folder in folders for a in sorted(p for p in folder.iterdir() if p.is_dir())]
    for group, alphabet in enumerate(alphabets):
        for character in sorted(p for p in alphabet.iterdir() if p.is_dir()):
            label = len(groups)
            groups.append(group)
            for index, png in enumerate(sorted(character.glob("*.png"))):
                with Image.open(png) as image:
                    # Strokes are dark on white: invert so the background is 0 like MNIST.
                    pixels = 1.0 - np.asarray(image.convert("L"), dtype=np.float32) / 255.0
                images.append(torch.from_numpy(pixels))
                labels.append(label)
                drawings.append(index)
    if not images:
        raise DataError(f"no Omniglot images found under {', '.join(map(str, folders))}")
    stacked = torch.stack(images).unsqueeze(1)
    resized = torch.nn.functional.interpolate(stacked, size=(size, size), mode="area")
    return {"images": resized, "labels": torch.tensor(labels), "drawing": torch.tensor(drawings),
            "groups": torch.tensor(groups)}


def translate_batch(images: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image of an N x C x H x W batch by its own random offset in [-max_shift, max_shift] pixels.

    With the C++ kernel (distill/native.py) row segment by row segment; else the whole batch moves with one gather
    on a zero-padded, flattened copy: the same values, but the kernel made the 1200-1200 teacher's bf16 epoch 8 %
    shorter and its fp32 epoch 2 % (2-pixel shifts of MNIST batches of 128, paired part-epochs of one probe).
    """
    if max_shift == 0:
        return images
    n, channels, height, width = images.shape
    offsets = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator, device=images.device)
    kernel = kernels() if images.device.type == "cpu" and images.is_contiguous() else None
    if kernel is not None:
        return kernel.shift_images(images, offsets, max_shift)
    padded_width = width + 2 * max_shift
    padded = torch.nn.functional.pad(images, (max_shift,) * 4).reshape(n, channels, -1)
    window = (torch.arange(height, device=images.device)[:, None] * padded_width
              + torch.arange(width, device=images.device)).reshape(-1)
    index = window + (offsets[0] * padded_width + offsets[1])[:, None]
    return padded.gather(2, index[:, None, :].expand(n, channels, -1)).reshape(n, channels, height, width)


def flip_batch(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image of an N x C x H x W batch mirrored left to right with probability 1/2, drawn per image (one
    draw for the whole batch, not a loop over images as torchvision's per-call transforms would need)."""
    flipped = torch.rand(len(images), generator=generator, device=images.device) < 0.5
    return torch.where(flipped[:, None, None, None], images.flip(-1), images)


def augment_batch(images: torch.Tensor, shift: int, flip: bool, generator: torch.Generator | None = None
                  ) -> torch.Tensor:
    """A training batch's augmentation: the random shift, then the flip where asked (nothing is drawn for an
    augmentation that is off, so a run without it keeps its random stream)."""
    shifted = translate_batch(images, shift, generator)
    return flip_batch(shifted, generator) if flip else shifted


@dataclass
class TransferSet:
    """Indices into the training set, and the classes that never appear in them."""

    indices: torch.Tensor
    absent_classes: list[int]


def make_transfer_set(labels: torch.Tensor, num_classes: int, fraction: float = 1.0, omit_classes=(),
                      keep_classes=None, seed: int = 0) -> TransferSet:
    """A random `fraction` of the training set, then without `omit_classes` or with only `keep_classes`."""
    for key, classes in (("omit_classes", omit_classes), ("keep_classes", keep_classes or [])):
        for c in classes:
            if not 0 <= c < num_classes:
                raise ConfigError(f"transfer.{key} names class {c}, but the data set has classes 0..{num_classes - 1}")
    labels = labels.cpu()  # indices stay on the CPU; they index device tensors just as well
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(labels), generator=generator)[: max(1, round(fraction * len(labels)))]
    indices = indices.sort().values
    allowed = torch.ones(num_classes, dtype=torch.bool)
    if keep_classes is not None:
        allowed[:] = False
        allowed[list(keep_classes)] = True
    allowed[list(omit_classes)] = False
    indices = indices[allowed[labels[indices]]]
    if len(indices) == 0:
        raise ConfigError(f"the transfer set is empty: transfer.fraction={fraction}, transfer.omit_classes="
                          f"{list(omit_classes)} and transfer.keep_classes={keep_classes} leave no training example")
    present = torch.zeros(num_classes, dtype=torch.bool)
    present[labels[indices]] = True
    return TransferSet(indices, [c for c in range(num_classes) if not present[c]])
