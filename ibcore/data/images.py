"""Natural images for the image-compression chapter: folders of photos, Kodak, CLIC.

Folders, relative to the data root (:func:`ibcore.data.data_root`: the ``root`` argument, else
``$IBCORE_DATA``, else ``./data``):

* ``images/photos/`` — the training photographs of the ``smoke`` and ``cpu`` profiles
  (any ``.jpg``/``.jpeg``/``.png`` files).
* ``images/wallpapers/train/`` — more training photographs (PNG, long side ≤ 2048 pixels).
* ``images/kodak/`` — the Kodak test images (``kodim02.png``, ``kodim07.png`` here); never
  trained on.
* ``images/wallpapers/test/`` — held-out photographs, a second test set; never trained on.
* ``clic/train/`` — the ``paper`` profile's training set: put the images of the CLIC 2019/2020
  professional and mobile *train* and *valid* splits (PNG) in this one folder (sub-folders are
  searched too). The paper profile reads them lazily from disk (:class:`CropSource` with
  ``in_memory=False``), because the full set does not fit in memory as tensors.

Images are ``uint8`` tensors ``[3, H, W]`` (RGB). Random crops are drawn with an explicit
:class:`torch.Generator`, so a crop sequence is a pure function of the generator's seed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ibcore.atomic import atomic_write_bytes
from ibcore.data.vision import data_root
from ibcore.errors import DataNotFoundError, InvalidParameterError, ShapeError
from ibcore.validation import check_int

__all__ = [
    "CLIC_FOLDER",
    "IMAGE_EXTENSIONS",
    "KODAK_FOLDER",
    "KODAK_TEST_IMAGES",
    "PHOTOS_FOLDER",
    "WALLPAPERS_TEST_FOLDER",
    "WALLPAPERS_TRAIN_FOLDER",
    "CropSource",
    "image_folder",
    "list_images",
    "load_image",
    "load_images",
    "load_kodak",
    "load_test_set",
    "pyramid",
    "random_crops",
    "save_png",
]

PHOTOS_FOLDER = "images/photos"
WALLPAPERS_TRAIN_FOLDER = "images/wallpapers/train"
WALLPAPERS_TEST_FOLDER = "images/wallpapers/test"
KODAK_FOLDER = "images/kodak"
CLIC_FOLDER = "clic/train"
KODAK_TEST_IMAGES: tuple[str, ...] = ("kodim02.png", "kodim07.png")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")

_FOLDERS = {"photos": PHOTOS_FOLDER, "wallpapers-train": WALLPAPERS_TRAIN_FOLDER,
            "wallpapers-test": WALLPAPERS_TEST_FOLDER, "kodak": KODAK_FOLDER, "clic": CLIC_FOLDER}


def image_folder(name: str, root: str | os.PathLike | None = None) -> Path:
    """The folder of the image set ``name`` (a key of ``_FOLDERS``: ``"photos"``,
    ``"wallpapers-train"``, ``"wallpapers-test"``, ``"kodak"`` or ``"clic"``)."""
    if name not in _FOLDERS:
        raise InvalidParameterError(
            f"unknown image set {name!r}; choose one of {', '.join(_FOLDERS)}"
        )
    return data_root(root) / _FOLDERS[name]


def list_images(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Sorted image files (:data:`IMAGE_EXTENSIONS`, any case) in ``folder``.

    A missing folder or one without images raises :class:`DataNotFoundError`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataNotFoundError(
            f"image folder {folder} does not exist; put the images there or point $IBCORE_DATA "
            "(or the root argument) at the folder that holds images/photos and images/kodak"
        )
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in folder.glob(pattern)
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataNotFoundError(
            f"no {'/'.join(IMAGE_EXTENSIONS)} images in {folder}; copy the images there"
        )
    return files


def _target_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """``(width, height)`` after scaling the short side down to ``short_side`` (never up)."""
    if short_side is None or min(width, height) <= short_side:
        return width, height
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _to_8bit_rgb(im: Image.Image, path: Path) -> Image.Image:
    """``im`` as an 8-bit RGB image, or :class:`InvalidParameterError` if that would lose data.

    * 16-bit greyscale (Pillow modes ``I;16*`` and ``I``, values 0…65535) is scaled to 8 bits,
      ``v₈ = round(v₁₆ · 255 / 65535)`` (Pillow's own conversion would clip at 255 instead);
      16-bit RGB is already reduced to 8 bits by Pillow when it reads the file. Other high-depth
      modes (32-bit integers beyond 65535, floats) are refused.
    * Transparency (an alpha channel, or a palette or greyscale image with a transparent
      colour) is dropped only when every pixel is opaque; otherwise the image is refused,
      since what a transparent pixel should look like depends on the background it will be
      shown on.
    """
    if im.mode in _HIGH_DEPTH_MODES:
        arr = np.asarray(im).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise InvalidParameterError(
                f"{path} holds {im.mode} pixel values outside 0..65535; only 8- and 16-bit "
                "images are supported: convert it to an 8-bit RGB PNG"
            )
        grey = ((arr * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if im.mode not in ("RGB", "L", "P", "1", "CMYK", "YCbCr", *_ALPHA_MODES):
        raise InvalidParameterError(
            f"{path} has pixel mode {im.mode}, which cannot be converted to 8-bit RGB without "
            "loss; convert it to an 8-bit RGB PNG"
        )
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        if int(alpha.min(initial=255)) < 255:
            raise InvalidParameterError(
                f"{path} has transparent pixels ({int((alpha < 255).sum())} of {alpha.size}); "
                "the codec codes opaque RGB images: flatten it onto a background colour first"
            )
        return rgba.convert("RGB")
    return im.convert("RGB")


def load_image(path: str | os.PathLike, *, short_side: int | None = None) -> Tensor:
    """An RGB image as ``uint8 [3, H, W]``; downscaled (Lanczos) so ``min(H, W) ≤ short_side``.

    Downscaling also averages away most of the blocking of JPEG-compressed training photos.
    A missing or unreadable file raises :class:`DataNotFoundError`; a 16-bit greyscale image
    is scaled to 8 bits, and an image with transparent pixels or a pixel format that does not
    fit 8-bit RGB raises :class:`InvalidParameterError` (see :func:`_to_8bit_rgb`).
    """
    if short_side is not None:
        check_int("short_side", short_side, low=1)
    path = Path(path)
    try:
        with Image.open(path) as im:
            size = _target_size(*im.size, short_side)
            if size != im.size and im.format == "JPEG":
                im.draft("RGB", size)  # libjpeg decodes at a power-of-two scale still ≥ size
            im = _to_8bit_rgb(im, path)
            if im.size != size:
                im = im.resize(size, Image.Resampling.LANCZOS)
            arr = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise DataNotFoundError(f"image file {path} does not exist") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise DataNotFoundError(f"{path} is not a readable image ({exc}); replace the file") from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def load_images(
    folder: str | os.PathLike, *, short_side: int | None = None, recursive: bool = False
) -> list[Tensor]:
    """Every image of ``folder`` (:func:`list_images` order) as ``uint8 [3, H, W]`` tensors."""
    return [load_image(p, short_side=short_side) for p in list_images(folder, recursive=recursive)]


def load_kodak(
    root: str | os.PathLike | None = None, names: Sequence[str] = KODAK_TEST_IMAGES
) -> dict[str, Tensor]:
    """The Kodak test images ``names`` from ``<data root>/images/kodak`` (name → image)."""
    return load_test_set("kodak", root, names)


def load_test_set(
    name: str, root: str | os.PathLike | None = None, names: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """The images of the image set ``name`` (:func:`image_folder`) as ``{file name: image}``:
    the files ``names`` in that order, or every image of the folder (sorted) when ``None``."""
    folder = image_folder(name, root)
    if names is None:
        return {p.name: load_image(p) for p in list_images(folder)}
    if not folder.is_dir():
        raise DataNotFoundError(
            f"the image folder {folder} does not exist; put {', '.join(names)} there"
        )
    return {n: load_image(folder / n) for n in names}


def pyramid(image: Tensor, scales: Sequence[float], min_size: int = 1) -> list[tuple[float, Tensor]]:
    """``image`` (``uint8 [3, H, W]``) resized by each factor of ``scales`` (Lanczos, so a
    downscale is low-pass filtered first): ``[(scale, image), …]``. Levels whose short side
    would fall below ``min_size`` are left out; scale 1 is the image itself."""
    out = []
    h, w = int(image.shape[1]), int(image.shape[2])
    for s in scales:
        if not 0 < s <= 1:
            raise InvalidParameterError(f"pyramid scales must lie in (0, 1], got {s}")
        size = (max(1, round(w * s)), max(1, round(h * s)))
        if min(size) < min_size:
            continue
        if size == (w, h):
            out.append((float(s), image))
            continue
        im = Image.fromarray(image.permute(1, 2, 0).numpy()).resize(size, Image.Resampling.LANCZOS)
        out.append((float(s), torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).contiguous()))
    return out


def _check_crop_request(size: int, n: int, sizes: Sequence[tuple[int, int]]) -> None:
    check_int("size", size, low=1)
    check_int("n", n, low=1)
    if not sizes:
        raise ShapeError("no images to crop from")
    small = [i for i, (h, w) in enumerate(sizes) if h < size or w < size]
    if small:
        h, w = sizes[small[0]]
        raise ShapeError(
            f"image {small[0]} is {h}x{w}, smaller than the {size}x{size} crop; use a smaller "
            "crop size or a larger short_side"
        )


def _crop_plan(
    sizes: Sequence[tuple[int, int]], size: int, n: int, generator: torch.Generator, flip: bool,
    image_weights: Sequence[float] | None = None,
) -> list[tuple[int, int, int, bool]]:
    """``(image index, top, left, flip)`` for ``n`` crops.

    An image is chosen with probability proportional to its number of crop positions
    ``(H − size + 1)(W − size + 1)`` (times ``image_weights[i]`` when given), so without weights
    every position of every image is equally likely.
    """
    weights = torch.tensor([(h - size + 1) * (w - size + 1) for h, w in sizes], dtype=torch.float64)
    if image_weights is not None:
        weights = weights * torch.tensor(list(image_weights), dtype=torch.float64)
    idx = torch.multinomial(weights, n, replacement=True, generator=generator).tolist()
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    plan = []
    for k, i in enumerate(idx):
        h, w = sizes[i]
        top = min(int(u[k, 0] * (h - size + 1)), h - size)
        left = min(int(u[k, 1] * (w - size + 1)), w - size)
        plan.append((i, top, left, bool(flip and u[k, 2] < 0.5)))
    return plan


def random_crops(
    images: Sequence[Tensor],
    size: int,
    n: int,
    generator: torch.Generator,
    *,
    flip: bool = True,
    image_weights: Sequence[float] | None = None,
) -> Tensor:
    """``n`` random ``size × size`` crops of ``images`` (each ``uint8 [3, H, W]``): ``[n, 3, s, s]``.

    Positions are uniform over all crop positions of all images (see :func:`_crop_plan`);
    with ``flip`` each crop is mirrored left-right with probability ½. Everything random comes
    from ``generator``.
    """
    for i, im in enumerate(images):
        if not isinstance(im, Tensor) or im.dim() != 3 or im.shape[0] != 3:
            raise ShapeError(f"image {i} must be a [3, H, W] tensor, got {getattr(im, 'shape', im)}")
    sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    _check_crop_request(size, n, sizes)
    out = torch.empty(n, 3, size, size, dtype=images[0].dtype)
    plan = _crop_plan(sizes, size, n, generator, flip, image_weights)
    for k, (i, top, left, mirror) in enumerate(plan):
        crop = images[i][:, top : top + size, left : left + size]
        out[k] = crop.flip(-1) if mirror else crop
    return out


class CropSource:
    """Random crops of a folder of images, held in memory or read from disk on demand.

    ``in_memory=True`` (``smoke``/``cpu``) decodes every image once. ``in_memory=False`` (the
    ``paper`` profile's CLIC folder) reads only the image sizes up front. Without ``cache_dir``
    it decodes the images a batch needs, with ``workers`` threads, on every batch. With
    ``cache_dir`` each image is decoded once, the first time a batch needs it, and stored there
    as an uncompressed ``uint8 [3, H, W]`` ``.npy`` file (written atomically; its name is a
    hash of the file's path, size, modification time and ``short_side``, so an edited image is
    decoded again); later batches memory-map that file and copy out only the crop, so a step
    decodes no image. The cache takes ``3·H·W`` bytes per image on disk (about 17 GB for the
    CLIC train + valid sets), and the operating system's page cache keeps the hot part in
    memory. All three ways give identical crops for identical generators (when ``short_side``
    is ``None``; with resizing the sizes are those after resizing).

    ``folder`` may be a list of folders (their images are pooled); files named in ``exclude``
    are left out (a validation split). **Multi-scale crops** (in memory only): with
    ``scales = (1, s₂, …)`` every image is also held at each scale ``s`` (Lanczos, see
    :func:`pyramid`; levels whose short side is below ``min_size`` are dropped), and a level
    is drawn with weight ``1/s²`` times its crop positions, so each scale of an image gets about
    the same share of crops as its full-resolution level, and a crop at scale ``s`` covers
    ``1/s`` times as much of the scene.
    """

    CACHE_VERSION = 1

    def __init__(
        self,
        folder: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        in_memory: bool = True,
        short_side: int | None = None,
        recursive: bool = False,
        workers: int = 4,
        cache_dir: str | os.PathLike | None = None,
        exclude: Sequence[str] = (),
        scales: Sequence[float] = (1.0,),
        min_size: int = 1,
    ) -> None:
        folders = [folder] if isinstance(folder, (str, os.PathLike)) else list(folder)
        self.paths = [p for f in folders for p in list_images(f, recursive=recursive)
                      if p.name not in set(exclude)]
        if not self.paths:
            raise DataNotFoundError(f"no training images left in {folders} after excluding {exclude}")
        self.in_memory = bool(in_memory)
        self.short_side = None if short_side is None else check_int("short_side", short_side)
        self.workers = check_int("workers", workers, low=1)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.scales = tuple(float(x) for x in scales)
        if not self.scales or self.scales[0] != 1.0:
            raise InvalidParameterError(f"scales must start with 1.0, got {self.scales}")
        if self.scales != (1.0,) and not self.in_memory:
            raise InvalidParameterError("multi-scale crops need in_memory=True")
        self.images: list[Tensor] | None = None
        self.weights: list[float] | None = None
        self.levels: list[tuple[int, float]] = []  # (path index, scale) of each held image
        self._pool: ThreadPoolExecutor | None = None
        if self.in_memory:
            self.images, self.weights = [], []
            for i, p in enumerate(self.paths):
                for s, im in pyramid(load_image(p, short_side=short_side), self.scales, min_size):
                    self.images.append(im)
                    self.weights.append(1.0 / (s * s))
                    self.levels.append((i, s))
            if self.scales == (1.0,):
                self.weights = None
            self.sizes = [(int(im.shape[1]), int(im.shape[2])) for im in self.images]
        else:
            self.sizes = [self._size_of(p) for p in self.paths]
            self.levels = [(i, 1.0) for i in range(len(self.paths))]

    def _size_of(self, path: Path) -> tuple[int, int]:
        try:
            with Image.open(path) as im:
                w, h = im.size
        except (UnidentifiedImageError, OSError) as exc:
            raise DataNotFoundError(f"{path} is not a readable image ({exc})") from exc
        w, h = _target_size(w, h, self.short_side)
        return h, w

    def __len__(self) -> int:
        return len(self.paths)

    def __del__(self) -> None:
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=False)

    def patches_per_epoch(self, size: int) -> int:
        """Σ over images of ``⌊H/size⌋·⌊W/size⌋``: the non-overlapping ``size²`` patches
        (of the full-resolution images)."""
        check_int("size", size, low=1)
        return sum((h // size) * (w // size)
                   for (h, w), (_, s) in zip(self.sizes, self.levels, strict=True) if s == 1.0)

    def cache_path(self, index: int) -> Path:
        """The decoded-image cache file of image ``index`` (needs ``cache_dir``)."""
        if self.cache_dir is None:
            raise InvalidParameterError("this CropSource has no cache_dir")
        path = self.paths[index]
        st = path.stat()
        key = json.dumps([self.CACHE_VERSION, str(path.resolve()), st.st_size, st.st_mtime_ns,
                          self.short_side])
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        return self.cache_dir / f"{path.stem[:40]}-{digest}.npy"

    def _decoded(self, index: int) -> Tensor | np.ndarray:
        """Image ``index`` as ``[3, H, W]`` ``uint8``: a memory map of its cache file, or decoded."""
        if self.cache_dir is None:
            return load_image(self.paths[index], short_side=self.short_side)
        cached = self.cache_path(index)
        if not cached.is_file():
            arr = load_image(self.paths[index], short_side=self.short_side).numpy()
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            atomic_write_bytes(cached, buf.getvalue())
        arr = np.load(cached, mmap_mode="r", allow_pickle=False)
        if arr.dtype != np.uint8 or arr.shape != (3, *self.sizes[index]):
            raise DataNotFoundError(
                f"the cache file {cached} does not hold image {self.paths[index]} "
                f"({arr.dtype}, {arr.shape}); delete it to decode the image again"
            )
        return arr

    def sample(
        self, size: int, n: int, generator: torch.Generator, *, flip: bool = True
    ) -> Tensor:
        """``n`` random crops ``uint8 [n, 3, size, size]`` (see :func:`random_crops`)."""
        if self.images is not None:
            return random_crops(self.images, size, n, generator, flip=flip,
                                image_weights=self.weights)
        _check_crop_request(size, n, self.sizes)
        plan = _crop_plan(self.sizes, size, n, generator, flip)
        needed = sorted({i for i, *_ in plan})
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers)
        loaded = dict(zip(needed, self._pool.map(self._decoded, needed), strict=True))
        out = torch.empty(n, 3, size, size, dtype=torch.uint8)
        for k, (i, top, left, mirror) in enumerate(plan):
            crop = loaded[i][:, top : top + size, left : left + size]
            if isinstance(crop, np.ndarray):  # a view of a memory-mapped cache file
                crop = torch.from_numpy(np.ascontiguousarray(crop))
            out[k] = crop.flip(-1) if mirror else crop
        return out


def save_png(image: Tensor, path: str | os.PathLike) -> Path:
    """Write a ``uint8 [3, H, W]`` tensor as a PNG (deterministic bytes: no metadata)."""
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ShapeError(f"image must be a [3, H, W] tensor, got {getattr(image, 'shape', image)}")
    if image.dtype != torch.uint8:
        raise InvalidParameterError(f"image must be uint8, got {image.dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(path, format="PNG", optimize=True)
    return path
