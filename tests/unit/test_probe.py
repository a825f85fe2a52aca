from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from discover_ray.probe import ProbeError, ProbeSet, decode_images


def png(colour: tuple[int, int, int], size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "probe"
    for label, colour in (("cat", (200, 10, 10)), ("dog", (10, 200, 10))):
        (root / label).mkdir(parents=True)
        for i in range(3):
            (root / label / f"{i}.png").write_bytes(png((colour[0], colour[1], 10 * i)))
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_source_labels_from_parent_and_orders_by_id(folder):
    probe = ProbeSet.from_folder(str(folder))
    assert [im.image_id for im in probe.images] == [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(3)]
    assert probe.classes == ("cat", "dog")
    assert [im.label for im in probe.images] == [0, 0, 0, 1, 1, 1]
    decoded = decode_images(probe, probe.images)
    assert len(decoded.images) == 6 and decoded.images[0].size == (8, 8) and not decoded.failed


def test_parquet_source_with_image_bytes(tmp_path):
    path = tmp_path / "set.parquet"
    pq.write_table(
        pa.table(
            {
                "image_id": ["b", "a"],
                "label": [1, 0],
                "label_name": ["dog", "cat"],
                "image": [png((1, 2, 3)), png((4, 5, 6))],
            }
        ),
        path,
    )
    probe = ProbeSet.from_parquet(str(path))
    assert [im.image_id for im in probe.images] == ["a", "b"] and probe.classes == ("cat", "dog")
    assert decode_images(probe, probe.images).images[0].getpixel((0, 0)) == (4, 5, 6)
    with pytest.raises(ProbeError, match="no image-bytes column 'pixels'"):
        ProbeSet.from_parquet(str(path), image_column="pixels")


def test_csv_manifest_of_local_paths(folder, tmp_path):
    manifest = tmp_path / "manifest.csv"
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    manifest.write_text("uri,label\n" + "".join(f"{p},{i % 2}\n" for i, p in enumerate(paths)))
    probe = ProbeSet.from_manifest(str(manifest), label_column="label")
    assert len(probe) == 6 and probe.images[0].uri == probe.images[0].image_id
    assert len(decode_images(probe, probe.images).images) == 6


def test_s3_manifest(s3_server, tmp_path, folder):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="probe-images")
    uris = []
    for path in sorted(folder.rglob("*.png")):
        key = f"imgs/{path.parent.name}/{path.name}"
        s3.put_object(Bucket="probe-images", Key=key, Body=path.read_bytes())
        uris.append(f"s3://probe-images/{key}")
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": uris, "id": [u.split("imgs/")[1] for u in uris]}), manifest)
    probe = ProbeSet.from_manifest(str(manifest), id_column="id")
    assert probe.images[0].image_id == "cat/0.png"
    assert len(decode_images(probe, probe.images).images) == 6
    local = ProbeSet.from_folder(str(folder), labels=False)
    assert probe.id == local.id  # same ids and bytes: same content id, wherever they live


def test_probe_id_follows_content(folder):
    first = ProbeSet.from_folder(str(folder)).id
    assert ProbeSet.from_folder(str(folder)).id == first
    (folder / "cat" / "0.png").write_bytes(png((0, 0, 0)))
    assert ProbeSet.from_folder(str(folder)).id != first


def test_limit_sample_and_shards_are_deterministic(folder):
    probe = ProbeSet.from_folder(str(folder))
    assert [im.image_id for im in probe.limit(2).images] == ["cat/0.png", "cat/1.png"]
    a, b = probe.sample(3, seed=4), probe.sample(3, seed=4)
    assert [im.image_id for im in a.images] == [im.image_id for im in b.images]
    assert [len(s) for s in probe.shards(4)] == [4, 2] and probe.shards(4)[1][0].image_id == "dog/1.png"
    with pytest.raises(ProbeError, match="cannot sample 7 of 6"):
        probe.sample(7)


def test_corrupt_images_within_and_over_budget(folder):
    (folder / "dog" / "9.png").write_bytes(b"\x89PNG not really")
    probe = ProbeSet.from_folder(str(folder))
    decoded = decode_images(probe, probe.images, failure_budget=0.2)
    assert [i for i, _ in decoded.failed] == ["dog/9.png"] and len(decoded.images) == 6
    with pytest.raises(
        ProbeError, match="1 of 7 probe images could not be decoded.*dog/9.png.*raise the failure budget"
    ):
        decode_images(probe, probe.images)  # default budget 0.1 %


def test_empty_and_missing_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProbeError, match="holds no images"):
        ProbeSet.from_folder(str(tmp_path / "empty"))
    with pytest.raises(ProbeError, match="does not exist"):
        ProbeSet.from_folder(str(tmp_path / "nope"))
    with pytest.raises(ProbeError, match="not found"):
        ProbeSet.from_manifest(str(tmp_path / "nope.csv"))


def test_shared_cifar10_test_split(shared):
    probe = ProbeSet.from_parquet(str(shared / "data/cifar10/test.parquet"))
    assert len(probe) == 10_000 and probe.classes[3] == "cat"
    assert probe.images[0].image_id == "cifar10/test/airplane/0000"
    decoded = decode_images(probe, probe.images[:64])
    assert len(decoded.images) == 64 and decoded.images[0].size == (32, 32)


def test_batched_preprocess_equals_the_per_image_transform():
    import timm.data
    import torch
    from torchvision import transforms

    from discover_ray.probe import preprocess_batch

    rng = torch.Generator().manual_seed(0)
    images = [
        Image.fromarray(torch.randint(0, 256, (40, 36, 3), generator=rng, dtype=torch.uint8).numpy()) for _ in range(5)
    ]
    for transform in (
        transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.ToTensor(),
                            transforms.Normalize((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))]),
        timm.data.create_transform(input_size=(3, 24, 24), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        transforms.Compose([transforms.Resize((16, 16)), transforms.PILToTensor()]),  # falls back per image
    ):
        expected = torch.stack([transform(im) for im in images])
        assert torch.equal(preprocess_batch(images, transform), expected)


def test_image_limits_survive_selection_and_pickling(folder):
    import pickle

    from discover_ray.probe import ImageLimits

    probe = ProbeSet.from_folder(str(folder)).capped(ImageLimits(max_pixels=10, max_bytes=10**6))
    for chosen in (probe.limit(2), probe.sample(3, seed=1), pickle.loads(pickle.dumps(probe))):
        assert chosen.limits == ImageLimits(10, 10**6)
        failed = decode_images(chosen, chosen.images, failure_budget=1.0).failed
        assert len(failed) == len(chosen) and all(why.startswith("too large: the image is 8x8") for _, why in failed)
