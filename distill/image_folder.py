"""Images in class folders, torchvision's ImageFolder layout, read once into tensors and cached.

    ROOT/CLASS/*.png|jpg|...          one level: each folder is a class
    ROOT/GROUP/CLASS/*.png|jpg|...    two levels: each leaf folder is a class, its parent the class's group

Classes are named "CLASS" or "GROUP/CLASS" and sorted, so class ids do not depend on the file system's order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from distill.errors import DataError
from distill.memory import check_fits
from distill.storage import atomic_torch_save, cache_home, fingerprint

log = logging.getLogger(__name__)


def _images_in(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.suffix.lower() in suffixes and path.is_file())


def class_folders(root: Path) -> dict[str, list[Path]]:
    """Class name -> its image files, for a one- or two-level folder; DataErrors name what is wrong."""
    from torchvision.datasets.folder import IMG_EXTENSIONS  # here: importing torchvision costs every run a second

    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder")
    classes = {}
    for top in sorted(path for path in root.iterdir() if path.is_dir()):
        folders = [(top.name, top)] + [(f"{top.name}/{leaf.name}", leaf)
                                       for leaf in sorted(path for path in top.iterdir() if path.is_dir())]
        for name, folder in folders:
            if files := _images_in(folder, IMG_EXTENSIONS):
                classes[name] = files
    if not classes:
        raise DataError(f"no images under {root}: expected {root}/CLASS/*.png (or .jpg, ...) or "
                        f"{root}/GROUP/CLASS/*.png")
    depths = {name.count("/") for name in classes}
    if len(depths) > 1:
        raise DataError(f"{root} mixes class folders with images at one and at two levels; use one layout")
    return dict(sorted(classes.items()))


@dataclass
class FolderListing:
    """The image files of a folder in class order, their class ids, the class names, each class's group id where
    the folder has two levels, and a fingerprint of the files (names, sizes, modification times)."""

    files: list[Path]
    labels: torch.Tensor
    classes: list[str]
    groups: torch.Tensor | None
    source: str


def list_folder(root: Path) -> FolderListing:
    """The files of `root` (see `class_folders`), each stat'ed once for the fingerprint."""
    classes = class_folders(root)
    files = [path for paths in classes.values() for path in paths]
    stats = [(str(path), status.st_size, status.st_mtime_ns) for path in files for status in [path.stat()]]
    labels = torch.tensor([label for label, paths in enumerate(classes.values()) for _ in paths])
    return FolderListing(files, labels, list(classes), _groups(list(classes)), fingerprint(stats))


def read_folder(listing: FolderListing, size: int, channels: int) -> torch.Tensor:
    """Every image of `listing` resized to `size` x `size` with `channels` channels (1: grey, 3: RGB), in [0, 1],
    from the per-user cache when the same files were read before."""
    cached = cache_home() / "image_folders" / f"{fingerprint([listing.source, size, channels])}.pt"
    if cached.is_file():
        return torch.load(cached, weights_only=True)["images"]
    check_fits(4 * len(listing.files) * channels * size * size,
               f"{len(listing.files):,} images of {channels} x {size} x {size}")
    log.info("reading %d images of %d classes", len(listing.files), len(listing.classes))
    images = torch.stack([decode_image(path, size, channels) for path in listing.files])
    atomic_torch_save(cached, {"images": images})
    return images


def decode_image(path: Path, size: int, channels: int) -> torch.Tensor:
    """One image file as channels x size x size in [0, 1]; a DataError names a file that cannot be read. Kept
    lean (no conversion to the mode it already has, one uint8 -> float pass): a streamed run decodes every image
    in every epoch."""
    from PIL import Image, UnidentifiedImageError

    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as image:
            image = image if image.mode == mode else image.convert(mode)
            width, height = image.size
            pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"image {path} cannot be read ({error})") from None
    tensor = pixels.reshape(height, width, channels).permute(2, 0, 1).float().div_(255.0)
    if tensor.shape[1:] == (size, size):  # area resampling to the same size is the identity: skip its cost
        return tensor
    return torch.nn.functional.interpolate(tensor[None], size=(size, size), mode="area")[0]


def _groups(classes: list[str]) -> torch.Tensor | None:
    """Each class's group id (its parent folder's rank) for two-level folders, else None."""
    if "/" not in classes[0]:
        return None
    parents = sorted({name.split("/")[0] for name in classes})
    return torch.tensor([parents.index(name.split("/")[0]) for name in classes])


def split_per_class(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """A boolean test mask holding `fraction` of each class's images (rounded, at least one where a class has
    two or more), drawn with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    test = torch.zeros(len(labels), dtype=torch.bool)
    for label in labels.unique().tolist():
        members = (labels == label).nonzero().squeeze(1)
        count = min(len(members) - 1, max(1, round(fraction * len(members)))) if len(members) > 1 else 0
        test[members[torch.randperm(len(members), generator=generator)[:count]]] = True
    return test
