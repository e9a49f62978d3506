"""Speed benchmark of the NC-VAE codec: encode and decode one image to and from a real file.

Usage::

    python benchmarks/codec_speed.py [--model q3] [--image PATH] [--repeats 10] [--no-record]

It loads a trained model (a shipped name ``q1`` … from ``models/ncvae``, a finished ``cpu`` run, or
a model file; ``--allow-untrained`` falls back to freshly initialised weights of the ``cpu``
architecture, recorded as such) and times, interleaved repeat by repeat after two warm-up rounds,

(a) ``ibcore.codec.encode`` — analysis transform, side information, RDO module, ANS coding;
(b) ``ibcore.codec.decode`` — header checks, ANS decoding, RDO module, synthesis transform;

of the Kodak image ``kodim07.png`` (768×512) by default, with torch's default thread count. It
reports medians and minima, the file size and rate, and whether the median of encode + decode
meets the chapter's bar (≤ 2 s on the 2-core CPU). The result is recorded with
:class:`ibcore.results.RunRecorder` (``results/benchmarks/codec_speed/cpu-seed0.json``) unless
``--no-record`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

BAR_SECONDS = 2.0


def _model(args: argparse.Namespace):
    from ibcore.errors import DataNotFoundError
    from ibcore.models.ncvae import NCVAE
    from ibcore.runners.ncvae import PROFILES, load_model

    try:
        return load_model(args.model), args.model, True
    except DataNotFoundError:
        if not args.allow_untrained:
            raise
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return NCVAE(PROFILES["cpu"].arch).eval(), "untrained (cpu architecture)", False


def run(args: argparse.Namespace) -> tuple[dict, list[dict], dict]:
    from ibcore.codec import decode, encode
    from ibcore.data.images import image_folder, load_image

    model, model_name, trained = _model(args)
    path = Path(args.image) if args.image else image_folder("kodak") / "kodim07.png"
    image = load_image(path)
    pixels = image.shape[1] * image.shape[2]
    history = []
    for k in range(args.repeats + 2):
        t0 = time.perf_counter()
        data = encode(model, image)
        t1 = time.perf_counter()
        decoded = decode(model, data)
        t2 = time.perf_counter()
        if k >= 2:
            history.append({"repeat": k - 1, "encode_s": t1 - t0, "decode_s": t2 - t1,
                            "encode_decode_s": t2 - t0})
    assert decoded.shape == image.shape
    med = {key: statistics.median(r[key] for r in history)
           for key in ("encode_s", "decode_s", "encode_decode_s")}
    metrics = {
        "image_height": int(image.shape[1]),
        "image_width": int(image.shape[2]),
        "file_bytes": len(data),
        "bpp": 8 * len(data) / pixels,
        "median_encode_s": med["encode_s"],
        "median_decode_s": med["decode_s"],
        "median_encode_decode_s": med["encode_decode_s"],
        "min_encode_decode_s": min(r["encode_decode_s"] for r in history),
        "bar_encode_decode_s": BAR_SECONDS,
        "bar_met": med["encode_decode_s"] <= BAR_SECONDS,
        "decoder_params": model.decoder_parameters(),
    }
    config = {"model": model_name, "trained_model": trained, "image": str(path),
              "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
              "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS")}
    return metrics, history, config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="q3", help="shipped model name or model file (q3)")
    parser.add_argument("--image", default=None, help="image to code (default: kodim07.png)")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats (default 10)")
    parser.add_argument("--allow-untrained", action="store_true",
                        help="time an untrained model of the cpu architecture if none is trained")
    parser.add_argument("--no-record", action="store_true", help="print only, write no file")
    args = parser.parse_args(argv)
    if args.no_record:
        metrics, history, config = run(args)
    else:
        from ibcore.results import RunRecorder

        with RunRecorder(chapter="benchmarks", experiment="codec_speed", profile="cpu", seed=0,
                         device=torch.device("cpu"), config={}) as rec:
            metrics, history, config = run(args)
            rec.config.update(config)
            rec.metrics.update(metrics)
            rec.history.extend(history)
        print(f"recorded {rec.path}", file=sys.stderr)
    for name, value in metrics.items():
        print(f"{name:28s} {value:.4f}" if isinstance(value, float) else f"{name:28s} {value}")
    print("config:", json.dumps(config))


if __name__ == "__main__":
    main()
