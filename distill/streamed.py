"""Images read from their files as batches are needed: the inputs of an image folder larger than the memory budget.

`StreamedImages` stands where an inputs tensor (N x C x H x W) stands everywhere in the pipeline. It answers the
few operations the pipeline asks of inputs (len, shape, device, rows by index or slice, `split` into chunks in
order, `to(device)`), and the training loop gets its batches from `batches_of`, which decodes them in a torch
DataLoader's worker processes. The batch order is still drawn by the training loop's own generator, so a streamed
run sees the same batches in the same order as the in-memory run of the same data and seed, and a resumed run
continues at the next epoch with that order. A row is decoded exactly as the in-memory loader decodes it, then
normalised with the same operations: the two paths give the same inputs to the bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from distill.image_folder import decode_image
from distill.storage import fingerprint, sha256_tensor

STATS_CHUNK = 1024  # rows per partial sum of the channel statistics: the same chunks on both paths


@dataclass(frozen=True)
class StreamedImages:
    """Image files decoded on demand to `channels` x `size` x `size`, normalised as (image - centre) / scale per
    channel (centre and scale: C x 1 x 1), decoded by `workers` processes (0: in the calling process), delivered
    on `device`. `source` fingerprints the files' names, sizes and modification times."""

    files: tuple[str, ...]
    size: int
    channels: int
    centre: torch.Tensor
    scale: torch.Tensor
    source: str
    workers: int = 0
    device: torch.device = torch.device("cpu")

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.files), self.channels, self.size, self.size))

    def __getitem__(self, rows: torch.Tensor | slice) -> StreamedImages:
        """The images of `rows` (an index tensor, a boolean mask or a slice), still on disk."""
        if isinstance(rows, slice):
            return dataclasses.replace(self, files=self.files[rows])
        if rows.dtype == torch.bool:
            rows = rows.nonzero().squeeze(1)
        return dataclasses.replace(self, files=tuple(self.files[row] for row in rows.tolist()))

    def to(self, device: str | torch.device) -> StreamedImages:
        """The same images, their batches delivered on `device`."""
        return dataclasses.replace(self, device=torch.device(device))

    def cpu(self) -> StreamedImages:
        return self.to("cpu")

    def split(self, rows: int) -> Iterator[torch.Tensor]:
        """Chunks of `rows` images in order, decoded."""
        return self.batches(torch.arange(len(self)).split(rows))

    def batches(self, index_batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The decoded batch of each index tensor, in the order given, on this device."""
        pinned = self.device.type == "cuda"
        loader = DataLoader(_DecodedFiles(self), batch_sampler=[index.tolist() for index in index_batches],
                            num_workers=self.workers, pin_memory=pinned, collate_fn=_whole_batch)
        for batch in loader:
            yield batch.to(self.device, non_blocking=pinned)

    def load(self) -> torch.Tensor:
        """Every image decoded into one tensor: for chunks that several models read in turn."""
        return torch.cat(list(self.split(STATS_CHUNK)))

    def fingerprint(self) -> str:
        """A hash of which files, decoded how: a changed, added or removed file changes it."""
        return fingerprint([self.source, self.files, self.size, self.channels, self.centre.flatten().tolist(),
                            self.scale.flatten().tolist()])


class _DecodedFiles(TorchDataset):
    """The DataLoader's view: the images of a batch of rows decoded, stacked and normalised in one call (the
    DataLoader's per-row fetch and collation would cost as much as decoding a small image)."""

    def __init__(self, images: StreamedImages):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, rows: list[int]) -> torch.Tensor:
        images = self.images
        batch = torch.stack([decode_image(Path(images.files[row]), images.size, images.channels) for row in rows])
        return (batch - images.centre) / images.scale

    def __getitem__(self, row: int) -> torch.Tensor:
        return self.__getitems__([row])[0]


def _whole_batch(batch: torch.Tensor) -> torch.Tensor:
    return batch  # `__getitems__` already made the batch


Inputs = torch.Tensor | StreamedImages


def batches_of(inputs: Inputs, index_batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """The rows of each index tensor in turn: gathered from memory, or decoded from files."""
    if isinstance(inputs, StreamedImages):
        return inputs.batches(index_batches)
    return (inputs.index_select(0, index) for index in index_batches)


def in_memory(inputs: Inputs) -> torch.Tensor:
    """`inputs` as one tensor (decoded where streamed): for a chunk that several models read in turn."""
    return inputs.load() if isinstance(inputs, StreamedImages) else inputs


def inputs_hash(inputs: Inputs) -> str:
    """A hash of the inputs' content: of the tensor, or of the files and their decoding."""
    return inputs.fingerprint() if isinstance(inputs, StreamedImages) else sha256_tensor(inputs)


def channel_stats(chunks: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation (n - 1) of N x C x H x W images given chunk by chunk, summed in
    float64: the same chunks give the same float32 answer whether they come from memory or from files."""
    count, total, squares = 0, 0.0, 0.0
    for chunk in chunks:
        values = chunk.double()
        total = total + values.sum(dim=(0, 2, 3))
        squares = squares + values.square().sum(dim=(0, 2, 3))
        count += values.numel() // values.shape[1]
    mean = total / count
    variance = (squares - count * mean.square()) / max(1, count - 1)
    return mean.float(), variance.clamp_min(0).sqrt().float()
