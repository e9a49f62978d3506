"""Rate cost of the reproducible probability model of the ``.ibc`` format (version 2).

Usage::

    python benchmarks/codec_exact_prior_rate.py [--old-ref 5afd5b2] [--no-record]

For every shipped model (``models/ncvae``) and every test image (the Kodak images
``kodim02.png``, ``kodim07.png`` and the photographs of ``images/wallpapers/test``) it codes the
same integer latents twice: with the current format (fixed-point RDO module, table of scales,
exact side tables, two 4-byte checks in the header) and with format version 1 (the float RDO
module's exact means and scales), whose code is read from git at ``--old-ref``. Both files code
the same ``ŷ`` and ``ĥ`` (the analysis transform runs once), so the size difference is the
cost of the change alone; it is reported for whole files and for the payload alone (without
the header, which grew by the 8 bytes of the two checks). It also times the entropy-coding stage of both (noisy on a shared
machine; the codec's speed is benchmarked by ``codec_speed.py``). The result is recorded as
``results/benchmarks/codec_exact_prior_rate/cpu-seed0.json`` unless ``--no-record`` is given.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

OLD_REF = "5afd5b2"


def _old_bitstream(ref: str, root: Path):
    """The format-1 ``bitstream`` module of commit ``ref``, imported under another name."""
    source = subprocess.run(["git", "show", f"{ref}:ibcore/codec/bitstream.py"], cwd=root,
                            capture_output=True, text=True, check=True).stdout
    tmp = Path(tempfile.mkdtemp()) / "bitstream_v1.py"
    tmp.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("bitstream_v1", tmp)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bitstream_v1"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert module.FORMAT_VERSION == 1
    return module


def run(args: argparse.Namespace) -> tuple[dict, list[dict], dict]:
    from ibcore.codec import bitstream as new
    from ibcore.codec import zoo
    from ibcore.data.images import image_folder, list_images, load_image
    from ibcore.data.vision import data_root
    from ibcore.models.ncvae import pad_to_multiple
    from ibcore.results import repo_root

    root = repo_root() or Path.cwd()
    old = _old_bitstream(args.old_ref, root)
    kodak = image_folder("kodak")
    paths = [kodak / "kodim02.png", kodak / "kodim07.png",
             *list_images(data_root() / "images" / "wallpapers" / "test")]
    images = {p.name: load_image(p) for p in paths}
    manifest = zoo.read_manifest(zoo.default_models_dir())
    rows = []
    for name in sorted(manifest):
        model = zoo.load_shipped(name)
        for image_name, image in images.items():
            height, width = int(image.shape[1]), int(image.shape[2])
            with torch.inference_mode():
                x = pad_to_multiple(image.float()[None] / 255.0)
                y, h = model.analyse(x)
                y_hat, h_hat = torch.round(y)[0], torch.round(h)[0]
                mean, scale = model.prior(h_hat[None])
            t0 = time.perf_counter()
            data_old = old._pack_latents(model, y_hat, h_hat, mean, scale, height, width)
            t1 = time.perf_counter()
            data_new = new.encode_latents(model, y_hat, h_hat, height, width)
            t2 = time.perf_counter()
            _, y_old, _ = old.decode_latents(model, data_old)
            t3 = time.perf_counter()
            _, y_new, _ = new.decode_latents(model, data_new)
            t4 = time.perf_counter()
            assert torch.equal(y_old, y_hat) and torch.equal(y_new, y_hat)
            rows.append({
                "model": name, "image": image_name, "height": height, "width": width,
                "bytes_v1": len(data_old), "bytes_v2": len(data_new),
                "relative_change": len(data_new) / len(data_old) - 1.0,
                "payload_bytes_v1": 4 * old.unpack(data_old)[1].size,
                "payload_bytes_v2": 4 * new.unpack(data_new)[1].size,
                "bpp_v1": 8 * len(data_old) / (height * width),
                "bpp_v2": 8 * len(data_new) / (height * width),
                "entropy_encode_s_v1": t1 - t0, "entropy_encode_s_v2": t2 - t1,
                "entropy_decode_s_v1": t3 - t2, "entropy_decode_s_v2": t4 - t3,
            })
            print(f"{name} {image_name}: {len(data_old)} -> {len(data_new)} bytes "
                  f"({100 * rows[-1]['relative_change']:+.3f} %)", file=sys.stderr)
    for r in rows:
        r["payload_relative_change"] = r["payload_bytes_v2"] / r["payload_bytes_v1"] - 1.0
    changes = [r["relative_change"] for r in rows]
    payload = [r["payload_relative_change"] for r in rows]
    per_model = {m: statistics.fmean(r["relative_change"] for r in rows if r["model"] == m)
                 for m in sorted(manifest)}
    metrics = {
        "mean_relative_change": statistics.fmean(changes),
        "max_relative_change": max(changes),
        "min_relative_change": min(changes),
        "mean_relative_change_per_model": per_model,
        "mean_payload_relative_change": statistics.fmean(payload),
        "max_payload_relative_change": max(payload),
        "min_payload_relative_change": min(payload),
        "total_bytes_v1": sum(r["bytes_v1"] for r in rows),
        "total_bytes_v2": sum(r["bytes_v2"] for r in rows),
        "total_payload_bytes_v1": sum(r["payload_bytes_v1"] for r in rows),
        "total_payload_bytes_v2": sum(r["payload_bytes_v2"] for r in rows),
        "files": len(rows),
        "entropy_encode_s_v1_total": sum(r["entropy_encode_s_v1"] for r in rows),
        "entropy_encode_s_v2_total": sum(r["entropy_encode_s_v2"] for r in rows),
        "entropy_decode_s_v1_total": sum(r["entropy_decode_s_v1"] for r in rows),
        "entropy_decode_s_v2_total": sum(r["entropy_decode_s_v2"] for r in rows),
    }
    config = {"old_ref": args.old_ref, "images": [str(p) for p in paths],
              "models": sorted(manifest), "torch_threads": torch.get_num_threads()}
    return metrics, rows, config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old-ref", default=OLD_REF, help="git commit of the format-1 code")
    parser.add_argument("--no-record", action="store_true", help="print only, write no file")
    args = parser.parse_args(argv)
    if args.no_record:
        metrics, rows, config = run(args)
    else:
        from ibcore.results import RunRecorder

        with RunRecorder(chapter="benchmarks", experiment="codec_exact_prior_rate",
                         profile="cpu", seed=0, device=torch.device("cpu"), config={}) as rec:
            metrics, rows, config = run(args)
            rec.config.update(config)
            rec.metrics.update(metrics)
            rec.history.extend(rows)
        print(f"recorded {rec.path}", file=sys.stderr)
    for name, value in metrics.items():
        print(f"{name:34s} {value}")


if __name__ == "__main__":
    main()
