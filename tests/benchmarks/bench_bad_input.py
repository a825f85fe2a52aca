"""Peak memory of decoding hostile or huge probe images: the product against the naive approach (prints JSON).

Two cases, each way of decoding in a fresh process (``sys.executable -c``) that imports the same modules,
builds the probe set, then resets its peak resident set size (``/proc/self/clear_refs``, so imports do not
count) just before the decode. Each reports its resident size then (``base_mb``), the kernel's high-water
mark ``VmHWM`` after the decode (``peak_mb``), the part above base (``delta_mb``), the decode's wall time and
its outcome.

- ``bomb``: a PNG decompression bomb, about 140 KB of grayscale PNG that declares 12000 x 12000 pixels
  (144 MP). ``baseline``: Pillow's limit lifted (``Image.MAX_IMAGE_PIXELS = None``), then
  ``Image.open(path)``, ``load()`` and ``convert("RGB")``: the full decode the product did before.
  ``ours``: ``decode_images(probe, probe.images, failure_budget=1.0)`` on ``ProbeSet.from_folder``, which
  refuses the image from its header, as a failed image (``too large: ...``).
- ``chunk``: one chunk of 8 JPEG photos of 4000 x 3000 (12 MP) for a torchvision ``Resize(256),
  CenterCrop(224), ToTensor, Normalize`` preprocessing. ``baseline``: the whole chunk decoded at full
  resolution, then preprocessed as a batch (``preprocess_batch``), as before. ``ours``: ``ChunkSource`` on
  the chunk's row (each image cut to the model's input geometry as it is decoded, JPEGs draft-decoded);
  ``ours_no_draft``: the same with draft decoding off (``pixels.DRAFT_MARGIN = 10**6``), per-image resizing
  alone.

    python tests/benchmarks/bench_bad_input.py
    python tests/benchmarks/bench_bad_input.py --bomb-side 20000 --jpegs 16 --jpeg-size 6000x4000
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

# One decode, in a fresh process: argv = repo root, case, way, folder.
CHILD = r'''
import json, sys, time
sys.path.insert(0, sys.argv[1])
case, way, folder = sys.argv[2], sys.argv[3], sys.argv[4]
import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
import discover_ray.probe as probe_module
import discover_ray.probe.pixels as pixels
from discover_ray.pipeline.chunks import ChunkSource

def status_kb(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)

transform = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
if way == "ours_no_draft":
    pixels.DRAFT_MARGIN = 10**6  # never draft: per-image resizing alone
probe = probe_module.ProbeSet.from_folder(folder, labels=False)
path = probe.images[0].uri
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # reset the peak to the current resident size: imports and set-up are not measured
base = status_kb("VmRSS")
started = time.perf_counter()
if case == "bomb" and way == "baseline":
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(path) as opened:
        opened.load()
        rgb = opened.convert("RGB")
    outcome = f"decoded {rgb.size[0]}x{rgb.size[1]} {rgb.mode}"
elif case == "bomb":
    decoded = probe_module.decode_images(probe, probe.images, failure_budget=1.0)
    outcome = f"failed: {decoded.failed[0][1]}" if decoded.failed else f"decoded {decoded.images[0].size}"
elif way == "baseline":  # the whole chunk at full resolution, then the batch preprocessed
    decoded = probe_module.decode_images(probe, probe.images, failure_budget=1.0)
    outcome = f"pixels {tuple(probe_module.preprocess_batch(decoded.images, transform).shape)}"
else:
    batch = {"shard": np.array([0]), "chunk": np.array([0]), "start": np.array([0]), "stop": np.array([len(probe)])}
    out = ChunkSource(probe, transform)(batch)
    outcome = f"pixels {tuple(out['pixels'].shape[1:])}"
seconds = time.perf_counter() - started
peak = status_kb("VmHWM")
print(json.dumps({"base_mb": round(base / 1024, 1), "peak_mb": round(peak / 1024, 1),
                  "delta_mb": round((peak - base) / 1024, 1), "seconds": round(seconds, 3), "outcome": outcome}))
'''

WAYS = {"bomb": ("baseline", "ours"), "chunk": ("baseline", "ours_no_draft", "ours")}


def png_bomb(width: int, height: int) -> bytes:
    """A valid grayscale PNG of ``width`` x ``height`` black pixels: zero rows compress to almost nothing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compress = zlib.compressobj(9)
    row = bytes(1 + width)  # filter byte 0, then the row's pixels
    idat = b"".join(compress.compress(row) for _ in range(height)) + compress.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def write_jpegs(folder: Path, count: int, width: int, height: int) -> None:
    """``count`` photo-sized JPEGs (gradients with noise, quality 90): each differs, none compresses to nothing."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    pattern = np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)
    for i in range(count):
        pixels = pattern ^ rng.integers(0, 8, (height, width, 3), np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        (folder / f"{i:03d}.jpg").write_bytes(buffer.getvalue())


def measure(case: str, way: str, folder: Path) -> dict:
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", CHILD, str(REPO), case, way, str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:  # a killed or failing child is a result too (the bomb's baseline may be OOM-killed)
        return {"outcome": f"child exited {done.returncode}: {done.stderr.strip()[-300:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bomb-side", type=int, default=12000, help="the bomb's declared width and height")
    parser.add_argument("--jpegs", type=int, default=8, help="JPEGs in the chunk")
    parser.add_argument("--jpeg-size", default="4000x3000", help="each JPEG's WIDTHxHEIGHT")
    parser.add_argument("--cases", nargs="+", default=list(WAYS), choices=list(WAYS))
    args = parser.parse_args()
    width, height = (int(v) for v in args.jpeg_size.lower().split("x"))

    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        inputs: dict[str, dict] = {}
        if "bomb" in args.cases:
            (root / "bomb").mkdir()
            bomb = root / "bomb" / "bomb.png"
            bomb.write_bytes(png_bomb(args.bomb_side, args.bomb_side))
            inputs["bomb"] = {"file_bytes": bomb.stat().st_size, "declared": f"{args.bomb_side}x{args.bomb_side}",
                              "megapixels": round(args.bomb_side**2 / 1e6, 1), "mode": "L"}
        if "chunk" in args.cases:
            (root / "chunk").mkdir()
            write_jpegs(root / "chunk", args.jpegs, width, height)
            inputs["chunk"] = {"images": args.jpegs, "size": f"{width}x{height}",
                               "file_bytes": sum(p.stat().st_size for p in (root / "chunk").iterdir()),
                               "transform": "Resize(256), CenterCrop(224), ToTensor, Normalize"}
        results = {case: {way: measure(case, way, root / case) for way in WAYS[case]} for case in args.cases}

    summary = {}
    for case, ways in results.items():
        base = ways["baseline"].get("delta_mb")
        for way, found in ways.items():
            if way != "baseline" and base and found.get("delta_mb") is not None:
                summary[f"{case}_{way}_delta_vs_baseline"] = round(found["delta_mb"] / base, 4)
    print(json.dumps({
        "benchmark": "bad_input", "python": platform.python_version(), "inputs": inputs,
        "results": results, "delta_ratio_vs_baseline": summary,
    }, indent=2))


if __name__ == "__main__":
    main()
