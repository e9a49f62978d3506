"""Command line of the NC-VAE codec.

::

    python -m ibcore.codec encode IN.png OUT.ibc --model q3      # a shipped model, or a .pt file
    python -m ibcore.codec decode OUT.ibc OUT.png [--model q3]  # default: the model named in the file
    python -m ibcore.codec info OUT.ibc                         # print the header

``--model`` is a shipped name (``q1`` = lowest rate, then rising; all are listed in
``models/ncvae/manifest.json``) or the path of a model file. Without ``--model``, ``decode``
looks the file's model id up among the shipped models (:mod:`ibcore.codec.zoo`). Models are
trained and exported by the NC-VAE chapter's runner (``python -m ibcore run ncvae --profile cpu
--resume``, then ``python -m ibcore.runners.ncvae export --profile cpu``). Errors (a missing,
truncated, corrupted or foreign file, an unknown model, an image the codec cannot take, a decoder
that does not reproduce the encoder's probabilities) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ibcore.errors import IBCoreError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ibcore.codec",
                                     description="NC-VAE image codec (.ibc files)")
    sub = parser.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="compress an image (PNG, JPEG, …) into an .ibc file")
    enc.add_argument("input", type=Path)
    enc.add_argument("output", type=Path)
    enc.add_argument("--model", required=True, help="shipped model name (q1…) or model file")
    dec = sub.add_parser("decode", help="decompress an .ibc file into a PNG")
    dec.add_argument("input", type=Path)
    dec.add_argument("output", type=Path)
    dec.add_argument("--model", default=None, help="default: the shipped model named in the file")
    info = sub.add_parser("info", help="print the header of an .ibc file")
    info.add_argument("input", type=Path)
    for p in (enc, dec):
        p.add_argument("--models-dir", type=Path, default=None,
                       help="folder of shipped models (default: models/ncvae of the checkout)")
    return parser


def _read(path: Path) -> bytes:
    from ibcore.errors import DataNotFoundError

    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise DataNotFoundError(f"no file at {path}") from exc
    except IsADirectoryError as exc:
        raise DataNotFoundError(f"{path} is a folder, not a file") from exc


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ibcore.codec.bitstream import decode, encode, unpack
    from ibcore.codec.zoo import find_model_by_id, load_shipped
    from ibcore.data.images import load_image

    try:
        if args.command == "info":
            header, words = unpack(_read(args.input))
            print(f"format version {header.version}, model id {header.model_id.hex()}, "
                  f"{header.width}x{header.height} px, latent symbols {header.y_range}, "
                  f"side symbols {header.h_range}, payload {4 * words.size} bytes, "
                  f"prior check {header.prior_check:08x}, latent check {header.latent_check:08x}")
            return 0
        if args.command == "encode":
            model = load_shipped(args.model, models_dir=args.models_dir)
            image = load_image(args.input)
            data = encode(model, image)
            args.output.write_bytes(data)
            bpp = 8 * len(data) / (image.shape[1] * image.shape[2])
            print(f"{args.output}: {len(data)} bytes, {bpp:.4f} bpp")
            return 0
        data = _read(args.input)
        header, _ = unpack(data)
        if args.model is not None:
            model = load_shipped(args.model, models_dir=args.models_dir)
        else:
            model = find_model_by_id(header.model_id.hex(), args.models_dir)
        image = decode(model, data)
        from PIL import Image

        Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy())).save(
            args.output, format="PNG")
        print(f"{args.output}: {header.width}x{header.height} px")
        return 0
    except (IBCoreError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
