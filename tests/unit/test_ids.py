import hashlib

from discover_ray.ids import content_id, file_sha256


def test_content_id_is_a_sha256_prefix():
    assert content_id("abc") == hashlib.sha256(b"abc").hexdigest()[:16]
    assert content_id(b"abc") == content_id("abc")


def test_file_sha256_reads_in_chunks(tmp_path):
    data = bytes(range(256)) * 5000
    path = tmp_path / "w.bin"
    path.write_bytes(data)
    assert file_sha256(str(path), chunk=1000) == hashlib.sha256(data).hexdigest()
