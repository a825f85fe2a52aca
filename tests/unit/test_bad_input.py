"""Bad probe input at the unit level: decompression bombs and huge files are refused before they cost memory, a
chunk is cut to the model's geometry image by image, transient read errors are retried and never taken for bad
images, blank ids and names that could leave the store are refused up front."""

from __future__ import annotations

import errno
import io
import struct
import zlib

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem
from PIL import Image
from torchvision import transforms as T
from typer.testing import CliRunner

from discover_ray import load_config
from discover_ray.errors import ConfigError, ProbeError, RunNotFound, TransientReadError
from discover_ray.pipeline.chunks import ChunkSource
from discover_ray.probe import ImageLimits, ProbeSet, decode_images, preprocess_batch, transient
from discover_ray.probe.pixels import split_preprocess
from discover_ray.probe.transient import is_transient
from discover_ray.runs import load_run

TRANSFORM = T.Compose([T.Resize(36), T.CenterCrop(32), T.ToTensor(), T.Normalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))])


def png_bomb(width: int, height: int) -> bytes:
    """A valid grayscale PNG of zeros: ~140 KB that declare ``width`` x ``height`` pixels (built row by row, so
    making it never holds the image)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compress = zlib.compressobj(9)
    row = bytes(1 + width)
    idat = b"".join(compress.compress(row) for _ in range(height)) + compress.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def encoded(size: tuple[int, int], seed: int = 0, format: str = "PNG") -> bytes:
    """A noisy RGB image with smooth structure (so JPEG keeps detail), encoded."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) * 127 // max(w + h, 1))], -1)
    pixels = np.clip(base + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format, **({"quality": 90} if format == "JPEG" else {}))
    return buffer.getvalue()


def folder_of(tmp_path, files: dict[str, bytes]):
    root = tmp_path / "probe"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


# -- 1. decompression bombs, huge files, decoding image by image ----------------------------------------------
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's, before our error
def test_a_decompression_bomb_is_refused_from_its_header_and_counts_as_a_failed_image(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after: a larger cap raises it
    bomb = png_bomb(12000, 12000)
    assert len(bomb) < 200_000  # 144 megapixels in ~140 KB
    root = folder_of(tmp_path, {"a/bomb.png": bomb, **{f"a/{i}.png": encoded((40, 30), i) for i in range(9)}})
    probe = ProbeSet.from_folder(str(root))
    decoded = decode_images(probe, probe.images, failure_budget=0.2)
    assert len(decoded.images) == 9
    [(image_id, reason)] = decoded.failed
    assert image_id == "a/bomb.png"
    assert reason.startswith("too large: ") and "12000x12000 = 144,000,000 pixels" in reason
    assert "89,478,485" in reason and "raise probe.max_pixels" in reason
    with pytest.raises(ProbeError, match=r"1 of 10 probe images could not be decoded.*bomb.png \(too large.*max_pixels"):
        decode_images(probe, probe.images)  # the default budget (0.1 %): like a corrupt image
    allowed = probe.capped(ImageLimits(max_pixels=12000 * 12000))  # raising the cap lets it in
    bomb_image = [im for im in allowed.images if im.image_id == "a/bomb.png"]
    assert decode_images(allowed, bomb_image, convert=lambda im: im.size).images == [(12000, 12000)]
    assert Image.MAX_IMAGE_PIXELS == 12000 * 12000  # Pillow's own check raised to the cap, or it would refuse it


def test_the_pixel_cap_is_configurable_and_changes_the_probe_id_only_when_it_refuses_an_image(tmp_path):
    root = folder_of(tmp_path, {"a/big.png": encoded((80, 60)), "a/small.png": encoded((8, 8))})
    config = load_config({"probe": {"source": str(root), "max_pixels": 1000}, "models": [{"name": "m", "layers": ["fc"]}],
                          "concepts": [{"kind": "labels"}]})
    probe = config.probe.open()
    assert probe.limits == ImageLimits(max_pixels=1000)
    [(image_id, reason)] = decode_images(probe, probe.images, failure_budget=1.0).failed
    assert image_id == "a/big.png" and "80x60 = 4,800 pixels, over the cap of 1,000 (probe.max_pixels" in reason
    default = ProbeSet.from_folder(str(root))
    assert default.capped(ImageLimits(max_pixels=4800)).id == default.id  # nothing refused: the same id
    assert probe.id != default.id  # an image refused: other outputs, another id
    assert config.probe.identity()["max_pixels"] == 1000
    assert "max_pixels" not in load_config({**config.model_dump(mode="json"), "probe": {"source": str(root)}}).probe.identity()


def test_a_file_over_the_byte_cap_is_not_read(tmp_path):
    root = folder_of(tmp_path, {"a/big.png": encoded((64, 64)), "a/small.png": encoded((4, 4))})
    size = (root / "a/big.png").stat().st_size
    probe = ProbeSet.from_folder(str(root)).capped(ImageLimits(max_bytes=size - 1))
    read = probe.read_bytes(probe.images)
    assert isinstance(read[1], bytes)
    assert f"the file is {size:,} bytes, over the cap of {size - 1:,} bytes (probe.max_image_bytes)" in str(read[0])
    [(image_id, reason)] = decode_images(probe, probe.images, failure_budget=1.0).failed
    assert image_id == "a/big.png" and reason.startswith("too large: ") and "raise probe.max_image_bytes" in reason
    # Parquet with image bytes: the same cap
    path = tmp_path / "set.parquet"
    pq.write_table(pa.table({"image_id": ["big", "small"], "image": [encoded((64, 64)), encoded((4, 4))]}), path)
    table = ProbeSet.from_parquet(str(path)).capped(ImageLimits(max_bytes=size - 1))
    assert [i for i, _ in decode_images(table, table.images, failure_budget=1.0).failed] == ["big"]


class Unsized(MemoryFileSystem):
    """An in-memory filesystem whose files cannot say their size before they are read (like a stream)."""

    protocol = "unsized"
    store: dict = {}
    pseudo_dirs = [""]
    reads: list[int] = []

    @classmethod
    def _strip_protocol(cls, path):
        return MemoryFileSystem._strip_protocol(path.removeprefix(f"{cls.protocol}://"))

    def _open(self, path, mode="rb", **kwargs):
        handle = super()._open(path, mode, **kwargs)
        if "r" not in mode:
            return handle
        outer = self

        class Stream(io.RawIOBase):
            def read(self, n=-1):
                outer.reads.append(n)
                return handle.read(n)

            def readable(self):
                return True

        return Stream()


def test_without_a_known_size_no_more_than_the_cap_is_read(tmp_path):
    fsspec.register_implementation("unsized", Unsized, clobber=True)
    fs = Unsized()
    fs.pipe("/p/big.png", encoded((64, 64)))
    fs.pipe("/p/small.png", encoded((4, 4)))
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": ["unsized:///p/big.png", "unsized:///p/small.png"]}), manifest)
    probe = ProbeSet.from_manifest(str(manifest)).capped(ImageLimits(max_bytes=1000))
    Unsized.reads.clear()
    read = probe.read_bytes(probe.images)
    assert Unsized.reads == [1001, 1001]
    assert "larger than that, over the cap of 1,000 bytes" in str(read[0]) and isinstance(read[1], bytes)


def test_jpeg_draft_decoding_only_for_images_far_larger_than_the_resize_needs(tmp_path):
    fmt = split_preprocess(T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()]))
    assert fmt is not None
    assert fmt.draft_size((1000, 800)) is None  # less than 4x what Resize(256) needs: decoded whole, exact
    assert fmt.draft_size((2000, 1000)) is None
    assert fmt.draft_size((4096, 3072)) == (684, 512)  # keeps twice the (342, 256) it needs
    assert split_preprocess(T.Compose([T.Resize((20, 30)), T.ToTensor()])).draft_size((240, 160)) == (60, 40)
    assert split_preprocess(T.Compose([T.CenterCrop(20), T.Resize(10), T.ToTensor()])).draft_size((9000, 9000)) is None

    small, large = encoded((600, 450), 1, "JPEG"), encoded((2304, 2048), 2, "JPEG")
    root = folder_of(tmp_path, {"small.jpg": small, "large.jpg": large})
    probe = ProbeSet.from_folder(str(root), labels=False)
    head = fmt
    images = [probe.images[1], probe.images[0]]  # small, large
    drafted = decode_images(probe, images, convert=lambda im: head.apply(im.convert("RGB")), draft=head.draft_size)
    again = decode_images(probe, images, convert=lambda im: head.apply(im.convert("RGB")), draft=head.draft_size)
    whole = [head.apply(Image.open(io.BytesIO(data)).convert("RGB")) for data in (small, large)]
    assert [im.size for im in drafted.images] == [(224, 224), (224, 224)]
    assert np.array_equal(np.asarray(drafted.images[0]), np.asarray(whole[0]))  # not drafted: bit-identical
    assert np.array_equal(np.asarray(drafted.images[1]), np.asarray(again.images[1]))  # drafted: deterministic
    difference = np.abs(np.asarray(drafted.images[1], np.int16) - np.asarray(whole[1], np.int16))
    assert difference.max() > 0 and difference.mean() < 1  # drafted at 1/4 (2048 >= 4 x 2 x 256): close, not equal


def chunk_batch(stop: int, start: int = 0) -> dict[str, np.ndarray]:
    return {"shard": np.array([0]), "chunk": np.array([0]), "start": np.array([start]), "stop": np.array([stop])}


@pytest.mark.parametrize("transform", [
    TRANSFORM,
    T.Compose([T.Resize((20, 24)), T.ToTensor()]),
    T.Compose([T.Resize(16), T.CenterCrop(16), T.PILToTensor()]),  # does not split: the whole transform per image
    T.Compose([T.Resize(16), T.CenterCrop(16), T.Grayscale(), T.ToTensor(), T.Normalize((0.5,), (0.2,))]),  # L heads
], ids=["head and tail", "exact size", "no split", "head not RGB"])
def test_a_chunk_decoded_image_by_image_equals_the_whole_chunk_transform(tmp_path, transform):
    files = {f"{i}.png": encoded(size, i) for i, size in enumerate([(40, 30), (300, 200), (33, 77), (36, 36)])}
    files["4.jpg"] = encoded((60, 45), 4, "JPEG")  # not 4 times the size any head here needs: not drafted
    buffer = io.BytesIO()
    Image.new("L", (50, 40), 77).save(buffer, format="PNG")
    files["5.png"] = buffer.getvalue()  # grayscale: converted to RGB first, as before
    probe = ProbeSet.from_folder(str(folder_of(tmp_path, files)), labels=False)
    whole = decode_images(probe, probe.images)  # today's way: full images, then the batch transform
    expected = preprocess_batch(whole.images, transform)
    out = ChunkSource(probe, transform)(chunk_batch(len(probe)))
    assert torch.equal(torch.from_numpy(out["pixels"][0]), expected)


def test_a_decoded_chunk_holds_only_head_sized_images(tmp_path):
    probe = ProbeSet.from_folder(str(folder_of(tmp_path, {f"{i}.png": encoded((640, 480), i) for i in range(3)})))
    head = split_preprocess(TRANSFORM)
    decoded = decode_images(probe, probe.images, convert=lambda im: head.apply(im.convert("RGB")), draft=head.draft_size)
    assert [im.size for im in decoded.images] == [(32, 32)] * 3


# -- 2. transient read errors ------------------------------------------------------------------------------------
class Flaky(MemoryFileSystem):
    """An in-memory object store whose first ``failures`` opens of each file fail with ``error`` (a throttled or
    flaky service); ``opens`` counts the attempts."""

    protocol = "flaky"
    store: dict = {}
    pseudo_dirs = [""]
    failures = 0
    error: type[BaseException] | BaseException = ConnectionResetError
    opens: dict[str, int] = {}

    @classmethod
    def _strip_protocol(cls, path):
        return MemoryFileSystem._strip_protocol(path.removeprefix(f"{cls.protocol}://"))

    def _open(self, path, mode="rb", **kwargs):
        path = self._strip_protocol(path)
        if "r" not in mode:
            return super()._open(path, mode, **kwargs)
        Flaky.opens[path] = Flaky.opens.get(path, 0) + 1
        if Flaky.opens[path] <= Flaky.failures:
            error = Flaky.error
            raise error(f"simulated failure {Flaky.opens[path]} of {path}") if isinstance(error, type) else error
        return super()._open(path, mode, **kwargs)


@pytest.fixture
def flaky(tmp_path, monkeypatch):
    """A manifest of three images on the flaky store; retries wait no time."""
    monkeypatch.setattr(transient, "READ_BACKOFF_SECONDS", 0.0)
    fsspec.register_implementation("flaky", Flaky, clobber=True)
    Flaky.store.clear()
    Flaky.opens.clear()
    fs = Flaky()
    uris = []
    for i in range(3):
        fs.pipe(f"/bucket/{i}.png", encoded((8, 8), i))
        uris.append(f"flaky:///bucket/{i}.png")
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": uris, "id": [f"img{i}.png" for i in range(3)]}), manifest)
    local = folder_of(tmp_path, {f"img{i}.png": encoded((8, 8), i) for i in range(3)})
    yield ProbeSet.from_manifest(str(manifest), id_column="id"), ProbeSet.from_folder(str(local), labels=False)
    Flaky.failures, Flaky.error = 0, ConnectionResetError


def test_transient_read_errors_are_retried_and_leave_no_trace(flaky):
    probe, same_content = flaky
    Flaky.failures = transient.READ_ATTEMPTS - 1  # fails on all but the last attempt
    decoded = decode_images(probe, probe.images)
    assert len(decoded.images) == 3 and not decoded.failed
    assert set(Flaky.opens.values()) == {transient.READ_ATTEMPTS}
    Flaky.opens.clear()
    assert probe.id == same_content.id  # the id hashed the images, not the failures


def test_a_parquet_source_on_a_flaky_store_is_retried_too(flaky, tmp_path):
    path = "flaky:///bucket/set.parquet"
    with fsspec.open(path, "wb") as handle:
        pq.write_table(pa.table({"image_id": ["a", "b"], "image": [encoded((8, 8), 1), encoded((8, 8), 2)]}), handle)
    probe = ProbeSet.from_parquet(path)
    Flaky.opens.clear()
    Flaky.failures = transient.READ_ATTEMPTS - 1
    decoded = decode_images(probe, probe.images)
    assert len(decoded.images) == 2 and not decoded.failed


@pytest.mark.parametrize("error", [ConnectionResetError, TimeoutError, OSError(errno.EBUSY, "Please reduce your request rate.")])
def test_a_read_that_keeps_failing_transiently_raises_instead_of_failing_the_image(flaky, error):
    probe, _ = flaky
    Flaky.failures, Flaky.error = 99, error
    with pytest.raises(TransientReadError, match=r"probe image 'img0.png' \(flaky:///bucket/0.png\) failed 4 times "
                                                 r"with a transient error.*not counted as a bad image"):
        decode_images(probe, probe.images, failure_budget=1.0)
    with pytest.raises(TransientReadError):
        probe.id  # noqa: B018 (a transient failure never enters the id)
    assert probe._id is None


def test_permanent_read_errors_fail_the_image_at_once(flaky):
    probe, _ = flaky
    Flaky.failures, Flaky.error = 1, PermissionError
    decoded = decode_images(probe, probe.images, failure_budget=1.0)
    assert [i for i, why in decoded.failed if why.startswith("unreadable: simulated failure 1")] == \
        ["img0.png", "img1.png", "img2.png"]
    assert set(Flaky.opens.values()) == {1}  # not retried
    Flaky.failures = 0
    Flaky.opens.clear()
    Flaky.store.pop("/bucket/1.png")  # not there
    decoded = decode_images(probe, probe.images, failure_budget=1.0)
    assert [i for i, why in decoded.failed if why.startswith("unreadable: ")] == ["img1.png"]
    assert Flaky.opens == {"/bucket/0.png": 1, "/bucket/1.png": 1, "/bucket/2.png": 1}


def test_transient_errors_are_told_apart_by_type_errno_class_name_and_status():
    import aiohttp
    import botocore.exceptions
    from s3fs.errors import translate_boto_error

    def client_error(code: str, status: int):
        return botocore.exceptions.ClientError({"Error": {"Code": code, "Message": code},
                                                "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    transient_errors = [
        ConnectionResetError(), TimeoutError(), BrokenPipeError(),
        botocore.exceptions.EndpointConnectionError(endpoint_url="https://s3"),
        botocore.exceptions.ReadTimeoutError(endpoint_url="https://s3"),
        aiohttp.ServerDisconnectedError(), aiohttp.ClientPayloadError("cut"),
        aiohttp.ClientResponseError(None, (), status=503), aiohttp.ClientResponseError(None, (), status=429),
        client_error("SlowDown", 503), client_error("ThrottlingException", 400), client_error("InternalError", 500),
        translate_boto_error(client_error("SlowDown", 503)),  # what s3fs raises once its own retries are spent
        translate_boto_error(client_error("InternalError", 500)),
    ]
    permanent = [
        FileNotFoundError(), PermissionError(), ValueError("bad"), OSError(errno.EIO, "odd"),
        translate_boto_error(client_error("NoSuchKey", 404)), translate_boto_error(client_error("AccessDenied", 403)),
        aiohttp.ClientResponseError(None, (), status=404), client_error("InvalidRange", 416),
    ]
    assert [e for e in transient_errors if not is_transient(e)] == []
    assert [e for e in permanent if is_transient(e)] == []


def test_backoff_is_bounded(monkeypatch):
    monkeypatch.setattr(transient, "READ_ATTEMPTS", 10)
    monkeypatch.setattr(transient, "READ_BACKOFF_SECONDS", 1.0)
    monkeypatch.setattr(transient, "READ_RETRY_SECONDS", 5.0)
    assert transient.backoff_waits() == [1.0, 2.0, 2.0, 0, 0, 0, 0, 0, 0]
    waited: list[float] = []
    with pytest.raises(TransientReadError, match="failed 10 times"):
        transient.retry_transient(lambda: (_ for _ in ()).throw(ConnectionError("down")), "x", sleep=waited.append)
    assert len(waited) == 9 and sum(waited) <= 5.0


# -- 4. image ids --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ids, what", [
    (["a", None, "c"], "row 1 (uri '.*1.png') has no id in column 'id'"),
    (["a", "", "c"], "row 1 (uri '.*1.png') has a blank ('') id in column 'id'"),
    (["a", "b", " \t"], r"row 2 (uri '.*2.png') has a blank (' \\t') id in column 'id'"),
])
def test_blank_or_missing_ids_are_refused_naming_the_row(tmp_path, ids, what):
    root = folder_of(tmp_path, {f"{i}.png": encoded((4, 4), i) for i in range(3)})
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": [str(root / f"{i}.png") for i in range(3)], "id": pa.array(ids, pa.string())}),
                   manifest)
    with pytest.raises(ProbeError, match=what.replace("(", r"\(").replace(")", r"\)") + ".*non-blank id"):
        ProbeSet.from_manifest(str(manifest), id_column="id")
    pq.write_table(pa.table({"uri": pa.array(["x", None], pa.string())}), tmp_path / "u.parquet")
    with pytest.raises(ProbeError, match="row 1 has no uri in column 'uri'; fill it in or drop the row"):
        ProbeSet.from_manifest(str(tmp_path / "u.parquet"))
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image_id": pa.array(ids, pa.string()), "image": [encoded((4, 4))] * 3}), table)
    with pytest.raises(ProbeError, match="has (no|a blank).*id in column 'image_id'"):
        ProbeSet.from_parquet(str(table))


def test_a_csv_manifest_keeps_newlines_tabs_and_unicode_in_quoted_ids(tmp_path):
    root = folder_of(tmp_path, {f"{i}.png": encoded((4, 4), i) for i in range(3)})
    ids = ["line\nbreak", "tab\there", "ünï 画像"]
    rows = "".join(f'{root / f"{i}.png"},"{name}"\n' for i, name in enumerate(ids))
    (tmp_path / "m.csv").write_text("uri,id\n" + rows, encoding="utf-8")
    probe = ProbeSet.from_manifest(str(tmp_path / "m.csv"), id_column="id")
    assert [im.image_id for im in probe.images] == sorted(ids)
    assert len(decode_images(probe, probe.images).images) == 3


# -- 5. names that could leave the store -----------------------------------------------------------------------
@pytest.mark.parametrize("model, message", [
    ({"alias": "../x"}, r"models.0.alias: alias '../x' cannot be part of a store path"),
    ({"layers": ["relu2", "../../etc"]}, r"models.0.layers: layer '../../etc' cannot be part of a store path"),
    ({"layers": [".."]}, r"layer '..' cannot be part of a store path"),
    ({"alias": "a\nb"}, r"alias 'a\\nb' cannot be part of a store path"),
])
def test_names_that_could_point_outside_the_store_are_refused_with_the_config(tmp_path, model, message):
    raw = {"store": str(tmp_path / "runs"), "probe": {"source": str(tmp_path)},
           "models": [{"name": "tiny_cnn", "layers": ["relu2"], **model}], "concepts": [{"kind": "labels"}]}
    with pytest.raises(ConfigError, match=message):
        load_config(raw)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", [
    ["labels", "../../x", "--layer", "fc"], ["sparsity", "../../x"], ["compare", "../../x", "abc"],
    ["report", "../../x"], ["explain-image", "../../x", "--image", "i", "--layer", "fc"],
])
def test_a_run_id_that_is_a_path_is_refused_by_the_cli(tmp_path, command):
    from discover_ray.cli import app

    store = tmp_path / "deep" / "store"
    result = CliRunner().invoke(app, [*command, "--store", str(store)])
    assert result.exit_code == 2, result.output
    assert "'../../x' is not a run id" in result.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "deep" / "x").exists()


def test_load_run_refuses_a_path_before_touching_the_store(tmp_path):
    for bad in ("../../x", "..", "a/b", "", "x\x00"):
        with pytest.raises(RunNotFound, match="is not a run id"):
            load_run(str(tmp_path / "store"), bad)
    assert not (tmp_path / "store").exists()
