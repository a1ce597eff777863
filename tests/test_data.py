import re
import shutil

import numpy as np
import pytest
import torch

from conftest import omniglot_pngs
from distill import data as data_module
from distill.data import augment_batch, load_dataset, make_transfer_set, resolve_data_root, translate_batch
from distill.errors import ConfigError, DataError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_shapes_and_counts(data_root):
    data = load_dataset("mnist", data_root)
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert data.x_train.dtype == torch.float32 and 0.0 <= data.x_train.min() and data.x_train.max() == 1.0
    assert torch.bincount(data.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(data.y_test).tolist() == MNIST_TEST_COUNTS


def test_fashion_mnist_shapes_and_counts(data_root):
    data = load_dataset("fashion_mnist", data_root)
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.y_train).tolist() == [6000] * 10
    assert torch.bincount(data.y_test).tolist() == [1000] * 10


@pytest.mark.slow
def test_omniglot_background_classes_alphabets_and_split(data_root):
    data = load_dataset("omniglot", data_root, {"subset": "background"})
    assert data.num_classes == 964
    assert data.x_train.shape == (964 * 15, 1, 28, 28) and data.x_test.shape == (964 * 5, 1, 28, 28)
    assert torch.bincount(data.y_train).tolist() == [15] * 964
    assert len(data.groups) == 964 and len(torch.unique(data.groups)) == 30
    assert data.x_train.mean() < 0.5  # strokes inverted: mostly-empty background is 0
    again = load_dataset("omniglot", data_root, {"subset": "background"})  # now from the cache
    torch.testing.assert_close(again.x_test, data.x_test)


@pytest.mark.slow
def test_omniglot_alphabets_are_a_label_set_of_their_own(data_root):
    every = load_dataset("omniglot", data_root, {"subset": "background"})
    data = load_dataset("omniglot", data_root, {"subset": "background", "alphabets": [29, 2]})
    kept = torch.isin(every.groups, torch.tensor([2, 29])).nonzero().squeeze(1)  # classes in order, alphabet 2 first
    assert data.num_classes == len(kept) and data.groups.tolist() == [0 if g == 2 else 1 for g in every.groups[kept]]
    assert torch.bincount(data.y_train).tolist() == [15] * len(kept)
    first_of_29 = int((every.groups[kept] == 29).nonzero()[0])
    torch.testing.assert_close(data.x_test[data.y_test == first_of_29], every.x_test[every.y_test == kept[first_of_29]])
    for bad in ([], [0, 0], [30]):
        with pytest.raises(ConfigError, match="data.options.alphabets must be distinct alphabet positions in 0..29"):
            load_dataset("omniglot", data_root, {"subset": "background", "alphabets": bad})


def test_omniglot_evaluation_subset_is_missing_with_a_clear_message(data_root):
    with pytest.raises(DataError, match="images_evaluation"):
        load_dataset("omniglot", data_root, {"subset": "evaluation"})


def test_digits_is_bundled():
    data = load_dataset("digits", "unused")
    assert data.x_train.shape[1:] == (1, 8, 8)
    assert len(data.x_train) + len(data.x_test) == 1797


def test_synthetic_is_seeded_and_knows_its_groups():
    options = {"classes": 40, "groups": 8, "dim": 16, "train_per_class": 5, "test_per_class": 3, "seed": 4}
    a = load_dataset("synthetic", "unused", options)
    b = load_dataset("synthetic", "unused", options)
    torch.testing.assert_close(a.x_train, b.x_train)
    assert a.x_train.shape == (200, 16) and a.x_test.shape == (120, 16) and a.num_classes == 40
    assert torch.bincount(a.groups).tolist() == [5] * 8
    c = load_dataset("synthetic", "unused", {**options, "seed": 5})
    assert not torch.equal(a.x_train, c.x_train)


def test_synthetic_classes_in_a_group_are_closer_than_across_groups():
    data = load_dataset("synthetic", "unused", {"classes": 60, "groups": 6, "dim": 32, "seed": 1})
    centres = torch.stack([data.x_train[data.y_train == c].mean(0) for c in range(60)])
    distance = torch.cdist(centres, centres)
    same = data.groups[:, None] == data.groups[None, :]
    off_diagonal = ~torch.eye(60, dtype=torch.bool)
    assert distance[same & off_diagonal].mean() < 0.5 * distance[~same].mean()


def test_synthetic_group_sizes_follow_the_exponent():
    options = {"classes": 1000, "groups": 50, "dim": 8, "train_per_class": 1, "test_per_class": 1}
    equal = load_dataset("synthetic", "unused", options)
    assert torch.equal(equal.groups, torch.arange(1000) % 50)  # the default keeps the data sets made before
    zipf = load_dataset("synthetic", "unused", {**options, "group_size_exponent": 1.0})
    sizes = torch.bincount(zipf.groups, minlength=50)
    assert sizes.sum() == 1000 and sizes.min() >= 1 and bool((sizes[:-1] >= sizes[1:]).all())
    # Group g holds about 1 / (g + 1) of the largest group's classes: 1000 / H(50) = 222 for the first.
    assert 200 <= sizes[0] <= 230 and 95 <= sizes[1] <= 120 and sizes[-1] <= 8
    steep = torch.bincount(load_dataset("synthetic", "unused", {**options, "group_size_exponent": 2.0}).groups)
    assert steep[0] > sizes[0] and steep[-1] == 1


@pytest.mark.parametrize("exponent", [-1.0, 11, "zipf"])
def test_synthetic_group_size_exponent_out_of_range_is_a_config_error(exponent):
    with pytest.raises(ConfigError, match="group_size_exponent"):
        load_dataset("synthetic", "unused", {"classes": 10, "groups": 2, "group_size_exponent": exponent})


def test_missing_mnist_names_the_expected_files(tmp_path):
    with pytest.raises(DataError, match=r"expected train-images-idx3-ubyte.*MNIST/raw.*--download"):
        load_dataset("mnist", tmp_path)


def test_truncated_mnist_file_is_a_data_error(tmp_path, data_root):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(data_root / "MNIST" / "raw", raw)
    (raw / "train-images-idx3-ubyte").write_bytes((raw / "train-images-idx3-ubyte").read_bytes()[:1000])
    with pytest.raises(DataError, match="truncated"):
        load_dataset("mnist", tmp_path)


def test_data_root_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        resolve_data_root(str(tmp_path / "file"))


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_DATA", str(tmp_path / "env"))
    assert resolve_data_root(str(tmp_path / "cli")) == tmp_path / "cli"
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv("DISTILLERY_DATA")
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    assert resolve_data_root(None) == tmp_path / "cache" / "data"


def test_unknown_data_set_and_option():
    with pytest.raises(ConfigError, match="unknown data set 'cifar'"):
        load_dataset("cifar", "unused")
    with pytest.raises(ConfigError, match="unknown option 'clases'"):
        load_dataset("synthetic", "unused", {"clases": 3})


def test_translation_moves_each_image_by_at_most_k_pixels():
    images = torch.zeros(500, 1, 9, 9)
    images[:, 0, 4, 4] = 1.0
    shifted = translate_batch(images, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    rows, cols = shifted[:, 0].nonzero(as_tuple=True)[1:]
    assert len(rows) == 500  # every pixel moved, none lost inside the padding
    offsets = set(zip((rows - 4).tolist(), (cols - 4).tolist()))
    assert offsets == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    assert translate_batch(images, 0) is images


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape, shift", [((64, 1, 9, 7), 2), ((16, 3, 5, 5), 1), ((16, 2, 3, 4), 5)])
def test_the_shift_kernel_moves_pixels_as_the_padded_gather_does(monkeypatch, dtype, shape, shift):
    """Shifts within the image, and (shift 5 on 3 x 4 images) past its edges."""
    if data_module.kernels() is None:
        pytest.skip("the C++ kernels cannot be built here (no compiler or ninja): only the gather runs")
    images = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    kernel = translate_batch(images, shift, torch.Generator().manual_seed(1))
    monkeypatch.setattr(data_module, "kernels", lambda: None)
    gathered = translate_batch(images, shift, torch.Generator().manual_seed(1))
    assert kernel.dtype == dtype and torch.equal(kernel, gathered)
    assert not torch.equal(kernel, images)


def test_transfer_fraction_and_class_filters():
    labels = torch.arange(10).repeat(100)
    three_percent = make_transfer_set(labels, 10, fraction=0.03, seed=1)
    assert len(three_percent.indices) == 30
    omit = make_transfer_set(labels, 10, omit_classes=[3])
    assert 3 not in labels[omit.indices] and len(omit.indices) == 900 and omit.absent_classes == [3]
    keep = make_transfer_set(labels, 10, keep_classes=[7, 8])
    assert set(labels[keep.indices].tolist()) == {7, 8} and keep.absent_classes == [0, 1, 2, 3, 4, 5, 6, 9]


def test_empty_transfer_set_and_bad_class_are_config_errors():
    labels = torch.tensor([0, 0, 1])
    with pytest.raises(ConfigError, match="empty"):
        make_transfer_set(labels, 3, keep_classes=[2])
    with pytest.raises(ConfigError, match="class 5"):
        make_transfer_set(labels, 3, omit_classes=[5])


def _arrays_file(path, **replace):
    """A small arrays file: 3 classes of 4 x 5 uint8 images, groups and class names; `replace` swaps or drops
    (None) keys."""
    generator = np.random.default_rng(0)
    arrays = {"x_train": generator.integers(0, 256, (12, 4, 5), dtype=np.uint8), "y_train": np.arange(12) % 3,
              "x_test": generator.integers(0, 256, (6, 4, 5), dtype=np.uint8), "y_test": np.arange(6) % 3,
              "groups": np.array([0, 0, 1]), "class_names": np.array(["a", "b", "c"])}
    arrays.update(replace)
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return path


def test_arrays_file_images_vectors_and_groups(tmp_path):
    file = _arrays_file(tmp_path / "mine.npz")
    data = load_dataset("arrays", tmp_path / "elsewhere", {"path": str(file)})
    assert data.name == "mine" and data.num_classes == 3 and data.input_shape == (1, 4, 5)
    assert data.x_train.dtype == torch.float32 and 0 <= data.x_train.min() and data.x_train.max() <= 1
    with np.load(file) as raw:
        torch.testing.assert_close(data.x_test[:, 0], torch.from_numpy(raw["x_test"]).float() / 255)
    assert data.groups.tolist() == [0, 0, 1] and data.y_train.dtype == torch.int64
    _arrays_file(tmp_path / "vectors.npz", x_train=np.ones((12, 7), np.float64),
                 x_test=np.zeros((6, 7), np.float32), groups=None, class_names=None)
    data = load_dataset("arrays", tmp_path, {"path": "vectors.npz"})  # relative: found under the data root
    assert data.input_shape == (7,) and data.groups is None and data.x_train.max() == 1.0


@pytest.mark.slow
def test_emnist_is_an_arrays_file(data_root):
    data = load_dataset("arrays", data_root, {"path": "emnist/emnist47_union.npz"})
    assert data.num_classes == 47 and data.input_shape == (1, 28, 28)
    assert (len(data.y_train), len(data.y_test)) == (183_743, 32_425)


@pytest.mark.parametrize("replace, message", [
    ({"y_train": None}, "has no y_train"),
    ({"y_test": np.array([0, 1, 2, 3, 0, 1])}, "label 3 of y_test is outside 0..2"),
    ({"y_train": -(np.arange(12) % 3)}, "label -2 of y_train is outside 0..2"),
    ({"y_train": np.arange(11) % 3}, "x_train has 12 rows and y_train 11"),
    ({"x_test": np.zeros((6, 4, 4), np.uint8)}, "x_train rows are (1, 4, 5) but x_test rows (1, 4, 4)"),
    ({"x_train": np.full((12, 4, 5), np.nan)}, "x_train holds NaN"),
    ({"x_train": np.zeros((12, 4, 5), np.int32)}, "x_train is int32"),
    ({"y_train": np.zeros(12)}, "y_train must be one integer per row"),
    ({"groups": np.array([0, 1])}, "groups has 2 entries"),
])
def test_bad_arrays_files_name_the_problem(tmp_path, replace, message):
    file = _arrays_file(tmp_path / "bad.npz", **replace)
    with pytest.raises(DataError, match=re.escape(message)):
        load_dataset("arrays", tmp_path, {"path": str(file)})


def test_arrays_path_missing_unreadable_or_not_given(tmp_path):
    with pytest.raises(ConfigError, match="data.options.path is required"):
        load_dataset("arrays", tmp_path, {})
    with pytest.raises(DataError, match="no file nowhere.npz"):
        load_dataset("arrays", tmp_path, {"path": "nowhere.npz"})
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(DataError, match="cannot be read as a NumPy .npz file"):
        load_dataset("arrays", tmp_path, {"path": str(tmp_path / "text.npz")})


def test_image_folder_of_real_pngs_two_levels_gives_groups_and_a_per_class_split(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    root = omniglot_pngs(data_root, tmp_path / "omniglot")
    options = {"root": str(root), "size": 20, "channels": 1, "test_fraction": 0.25}
    data = load_dataset("image_folder", tmp_path, options)
    assert data.num_classes == 4 and data.input_shape == (1, 20, 20) and data.groups.tolist() == [0, 0, 1, 1]
    assert torch.bincount(data.y_test).tolist() == [5, 5, 5, 5] and len(data.y_train) == 60
    assert abs(data.x_train.mean()) < 1e-4 and abs(data.x_train.std() - 1) < 1e-3  # normalised on training images
    again = load_dataset("image_folder", tmp_path, options)  # from the cache: the same tensors
    assert torch.equal(again.x_train, data.x_train) and list((tmp_path / "cache" / "image_folders").iterdir())
    rgb = load_dataset("image_folder", tmp_path, {**options, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3})
    assert rgb.input_shape == (3, 20, 20) and rgb.x_train.min() >= -1 and rgb.x_train.max() <= 1


def test_image_folder_one_level_with_a_test_folder(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    train = omniglot_pngs(data_root, tmp_path / "train", alphabets=1, characters=3, levels=1)
    test = tmp_path / "test"
    for folder in train.iterdir():
        (test / folder.name).mkdir(parents=True)
        for png in sorted(folder.iterdir())[15:]:
            png.rename(test / folder.name / png.name)
    data = load_dataset("image_folder", tmp_path, {"root": str(train), "test_root": str(test), "channels": 1})
    assert data.groups is None and (len(data.y_train), len(data.y_test), data.num_classes) == (45, 15, 3)
    shutil.rmtree(sorted(test.iterdir())[0])
    with pytest.raises(DataError, match="the classes of data.options.root and test_root differ: Alphabet"):
        load_dataset("image_folder", tmp_path, {"root": str(train), "test_root": str(test), "channels": 1})


def test_image_folders_without_images_or_with_two_layouts_are_refused(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("no image")
    with pytest.raises(DataError, match="no images under .*empty: expected .*CLASS/\\*.png"):
        load_dataset("image_folder", tmp_path, {"root": "empty"})
    with pytest.raises(DataError, match="does not exist or is not a folder"):
        load_dataset("image_folder", tmp_path, {"root": "nowhere"})
    with pytest.raises(ConfigError, match="data.options.root is required"):
        load_dataset("image_folder", tmp_path, {})
    with pytest.raises(ConfigError, match="channels must be 1 or 3"):
        load_dataset("image_folder", tmp_path, {"root": "empty", "channels": 2})
    (tmp_path / "empty" / "cat" / "truncated.png").write_bytes(b"\x89PNG\r\n")
    for streamed in ({}, {"memory_budget_gb": 0}):  # in memory: read at once; streamed: the statistics' pass
        with pytest.raises(DataError, match="image .*truncated.png cannot be read"):
            load_dataset("image_folder", tmp_path, {"root": "empty", "test_fraction": 0.5, **streamed})


def test_flip_mirrors_half_the_images_and_draws_nothing_when_off():
    images = torch.arange(2 * 1 * 3 * 4, dtype=torch.float32).reshape(2, 1, 3, 4).repeat(50, 1, 1, 1)
    flipped = augment_batch(images, 0, True, torch.Generator().manual_seed(0))
    mirrored = (flipped == images.flip(-1)).flatten(1).all(1)
    assert ((flipped == images).flatten(1).all(1) | mirrored).all() and 30 <= int(mirrored.sum()) <= 70
    assert torch.equal(flipped, augment_batch(images, 0, True, torch.Generator().manual_seed(0)))
    generator = torch.Generator().manual_seed(0)
    assert augment_batch(images, 0, False, generator) is images
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(0).get_state())
