"""Hostile input never escapes as anything but a one-line DogestryError (issue 9).

Hypothesis drives the readers of everything dogestry takes from outside: `docker save`
streams (random bytes, mutated saves of every engine generation, valid tars with hostile
JSON), plumbing records, refs, dogestry.cfg, image records and layer descriptors, stored
layer codecs and S3 URLs. Each target either returns or raises DogestryError whose
message is one line; any other exception is a bug the fuzzer reports with its input.
Budgets are small (the file runs well under a minute); the memory test runs the reader
under an address-space limit so an unbounded allocation shows as MemoryError.
"""

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dogestry import compress
from dogestry.backends import open_backend
from dogestry.config import Config
from dogestry.dockertar import MAX_METADATA, read_save_stream
from dogestry.errors import DogestryError
from dogestry.image import Image, LayerDescriptor
from dogestry.records import read_records
from dogestry.refs import looks_like_id, parse_ref
from dogestry.repo import (FORMAT_KEY, Repository, config_key, image_key, layer_descriptor_key, layer_key,
                           ref_key)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# CI runs a short budget; DOGESTRY_FUZZ_SCALE=20 (say) runs a deeper hunt by hand.
SCALE = float(os.environ.get("DOGESTRY_FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=int(150 * SCALE), deadline=None, suppress_health_check=[HealthCheck.too_slow])
QUICK = settings(max_examples=int(300 * SCALE), deadline=None)


def expect_clean(fn, *args):
    """Run fn; it may return, or raise DogestryError with a one-line message. Anything
    else propagates, and hypothesis shrinks the input that caused it."""
    try:
        return fn(*args)
    except DogestryError as err:
        message = str(err)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        assert len(message) < 4096, f"a {len(message)}-character error message"
        return None


# -- seed save tars of the three engine generations -----------------------------------

def _digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


L1 = _layer({"bin/x": b"x" * 3000})
L2 = _layer({"etc/y": b"y" * 100})


def _config(layers):
    return json.dumps({"architecture": "amd64", "os": "linux",
                       "rootfs": {"type": "layers", "diff_ids": [_digest(x) for x in layers]}}).encode()


def save_tar(entries, fmt=tarfile.PAX_FORMAT):
    """entries: (name, bytes) or (name, ('symlink'|'hardlink', target))."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.type = tarfile.SYMTYPE if data[0] == "symlink" else tarfile.LNKTYPE
                info.linkname = data[1]
                tar.addfile(info)
            else:
                info.size = len(data)
                # pax records on every entry, so mutations reach the pax parser
                info.pax_headers = {"comment": "dogestry-fuzz"} if fmt == tarfile.PAX_FORMAT else {}
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _docker_v1():
    config = _config([L1, L2, L1])
    cid = _digest(config)[7:]
    long_dir = "d" * 120  # a GNU long name
    return save_tar([(f"{cid}.json", config), ("aaa/layer.tar", L1), (f"{long_dir}/layer.tar", L2),
                     ("ccc/layer.tar", ("symlink", "../aaa/layer.tar")),
                     ("repositories", b'{"app":{"1":"aaa"}}'),
                     ("manifest.json", json.dumps([{"Config": f"{cid}.json", "RepoTags": ["app:1"],
                                                    "Layers": ["aaa/layer.tar", f"{long_dir}/layer.tar",
                                                               "ccc/layer.tar"]}]).encode())],
                    fmt=tarfile.GNU_FORMAT)


def _oci(config, blobs, layer_names):
    entries = [(f"blobs/sha256/{_digest(b)[7:]}", b) for b in blobs]
    entries += [(f"blobs/sha256/{_digest(config)[7:]}", config), ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                ("index.json", b'{"schemaVersion":2,"manifests":[]}'),
                ("manifest.json", json.dumps([{"Config": f"blobs/sha256/{_digest(config)[7:]}", "RepoTags": ["app:2"],
                                               "Layers": [f"blobs/sha256/{_digest(b)[7:]}" for b in layer_names]}]).encode())]
    return save_tar(entries)


def _docker_25():
    return _oci(_config([L1, L2]), [L1, L2], [L1, L2])


def _containerd():
    gz1, gz2 = gzip.compress(L1, mtime=0), gzip.compress(L2, mtime=0)
    return _oci(_config([L1, L2]), [gz1, gz2], [gz1, gz2])


SEEDS = {"docker-v1": _docker_v1(), "docker-25": _docker_25(), "containerd": _containerd()}


def _headers(data):
    """Offsets of the blocks that are valid tar headers (checksum agrees)."""
    out = []
    for off in range(0, len(data) - 511, 512):
        block = data[off:off + 512]
        try:
            stored = int(block[148:156].split(b"\0")[0].strip() or b"x", 8)
        except ValueError:
            continue
        if stored == sum(block[:148]) + 256 + sum(block[156:]):
            out.append(off)
    return out


def _fix_checksum(data, off):
    block = data[off:off + 512]
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % (sum(block) & 0o777777)
    data[off:off + 512] = block


FIELDS = {"name": (0, 100), "mode": (100, 8), "size": (124, 12), "mtime": (136, 12), "type": (156, 1),
          "linkname": (157, 100), "magic": (257, 8), "prefix": (345, 155)}


def _number_field(value, length):
    """value as a tar number: octal text when it fits, else GNU base-256 (negative too)."""
    if 0 <= value < 8 ** (length - 1):
        return b"%0*o\0" % (length - 1, value)
    raw = value.to_bytes(length, "big", signed=True) if -(1 << (8 * length - 9)) <= value < 1 << (8 * length - 9) \
        else b"\xff" * length
    return bytes([raw[0] | 0x80]) + raw[1:]


def _entry(name, type_, payload):
    """A raw tar entry (header + padded payload) with a correct checksum."""
    header = bytearray(512)
    header[0:len(name[:100])] = name[:100]
    header[100:108] = b"0000644\0"
    header[124:136] = _number_field(len(payload), 12)
    header[156:157] = type_
    header[257:265] = b"ustar\x0000"
    data = header + payload + b"\0" * (-len(payload) % 512)
    _fix_checksum(data, 0)
    return bytes(data)


garbage = st.binary(max_size=40) | st.sampled_from([b"-1", b"+7", b"0o17", b"1_0", b"\xff" * 12, b"\x80" + b"\0" * 11,
                                                     b"../../etc/passwd", b"/abs/path", b"\0", b"7" * 12, b"\xc2\xb2"])
pax_payload = st.binary(max_size=200) | st.builds(
    lambda k, v, n: b"%d %s=%s\n" % (n, k, v), st.sampled_from([b"size", b"path", b"linkpath", b"x"]),
    st.sampled_from([b"-5", b"\xc2\xb2", b"9" * 5000, b"1e3", b"", b"../x", b"manifest.json", b"\xff"]),
    st.integers(-5, 6000))

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20)),
    st.tuples(st.just("field"), st.integers(0, 50), st.sampled_from(sorted(FIELDS)), garbage, st.booleans()),
    st.tuples(st.just("size"), st.integers(0, 50),
              st.integers(-(1 << 90), 1 << 90) | st.sampled_from([-1, 0, 1, 511, 513, 1 << 33, 1 << 63])),
    st.tuples(st.just("insert"), st.integers(0, 50), st.sampled_from([b"x", b"g", b"L", b"K", b"0", b"1", b"2", b"5"]),
              st.sampled_from([b"manifest.json", b"././@LongLink", b"aaa/layer.tar", b"blobs/sha256/" + b"a" * 64,
                               b"../escape.json", b"/abs.json"]), pax_payload),
)


def mutate(data, ops):
    data = bytearray(data)
    for op in ops:
        headers = _headers(bytes(data)) or [0]
        if op[0] == "flip" and data:
            data[op[1] % len(data)] ^= 1 << op[2]
        elif op[0] == "truncate":
            del data[op[1] % (len(data) + 1):]
        elif op[0] == "field":
            off = headers[op[1] % len(headers)]
            start, length = FIELDS[op[2]]
            if off + 512 <= len(data):
                data[off + start:off + start + length] = op[3][:length].ljust(length, b"\0")
                if op[4]:
                    _fix_checksum(data, off)
        elif op[0] == "size":
            off = headers[op[1] % len(headers)]
            if off + 512 <= len(data):
                data[off + 124:off + 136] = _number_field(op[2], 12)
                _fix_checksum(data, off)
        elif op[0] == "insert":
            off = headers[op[1] % len(headers)]
            data[off:off] = _entry(op[3], op[2], op[4])
    return bytes(data)


class _Sink:
    """read_save_stream's layer sink over a real local repository (as in test_format.py)."""

    def __init__(self, repo):
        self.repo = repo

    def store(self, chunks, expect, path=None, size=None):
        return self.repo.store_layer(chunks, expect)[0]

    def known(self, diff_id, size):
        return self.repo.present_layer(diff_id)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return Repository(open_backend(str(tmp_path_factory.mktemp("fuzz") / "repo")))


def _read(repo, data):
    return read_save_stream(io.BytesIO(data), _Sink(repo))


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seed_tars_are_read(repo, name):
    """The mutations start from saves the reader accepts."""
    images = _read(repo, SEEDS[name])
    assert [r.diff_id for r in images[0].layer_results][:2] == [_digest(L1), _digest(L2)]


@FUZZ
@given(st.binary(max_size=4096))
@example(b"")
@example(b"\0" * 1024)
@example(_entry(b"manifest.json", b"0", b"[]"))
def test_save_reader_random_bytes(repo, data):
    expect_clean(_read, repo, data)


@FUZZ
@given(st.sampled_from(sorted(SEEDS)), st.lists(mutation, min_size=1, max_size=4))
@example("docker-25", [("insert", 0, b"x", b"pax", b"11 size=\xc2\xb2\n")])
@example("docker-25", [("insert", 0, b"L", b"././@LongLink", b"a\nb.json")])
@example("docker-v1", [("size", 0, -1)])
@example("containerd", [("field", 5, "size", b"-1", True)])
@example("docker-25", [("insert", 0, b"x", b"pax", b"5011 size=" + b"9" * 5000 + b"\n")])
def test_save_reader_mutated_saves(repo, seed, ops):
    expect_clean(_read, repo, mutate(SEEDS[seed], ops))


# -- structurally valid tars with hostile JSON ----------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
        st.sampled_from(["Config", "Layers", "RepoTags", "rootfs", "diff_ids", "type", "x"]) | st.text(max_size=5),
        kids, max_size=4),
    max_leaves=20)

hostile_paths = st.sampled_from(["../aaa/layer.tar", "/aaa/layer.tar", "aaa/layer.tar", "loop1", "loop2",
                                 "blobs/sha256/" + "0" * 64, "config.json", "", ".", "a\nb", "aaa/../aaa/layer.tar",
                                 "nope/layer.tar", "manifest.json"])
hostile_tags = st.sampled_from(["app:1", "APP:1", "app:", ":1", "a..b:1", "app:\n", "app:é", "../x:1", "app@sha256:00",
                                "a" * 300 + ":1", "localhost:5000/app:v1", "\0"])


@st.composite
def hostile_manifest(draw):
    if draw(st.booleans()):
        return json.dumps(draw(json_values)).encode()
    item = {"Config": draw(st.sampled_from(["config.json"]) | hostile_paths | json_values),
            "Layers": draw(st.lists(hostile_paths, max_size=4) | json_values),
            "RepoTags": draw(st.lists(hostile_tags, max_size=3) | json_values)}
    for key in draw(st.sets(st.sampled_from(sorted(item)), max_size=2)):
        del item[key]
    return json.dumps([item]).encode()


@st.composite
def hostile_config(draw):
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return json.dumps(draw(json_values)).encode()
    if choice == 1:
        diff_ids = draw(st.lists(st.sampled_from([_digest(L1), _digest(L2), _digest(L1) + "\n", "sha256:x", 7, None]),
                                 max_size=3) | json_values)
        return json.dumps({"rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    if choice == 2:
        return draw(st.sampled_from([b"[" * 100000, b"{\"a\":" * 50000, b"1" * 5000, b"1e999999", b"\xff\xfe",
                                     b'{"rootfs": {"diff_ids": "' + b"a" * 1000 + b'"}}', b"NaN", b""]))
    return _config([L1])


@FUZZ
@given(hostile_manifest(), hostile_config(), st.booleans())
@example(b'["a", "b"]', _config([L1]), False)
@example(b"[" * 100000, _config([L1]), False)
@example(b'[{"Config": "config.json", "Layers": ["aaa/layer.tar"], "RepoTags": ["app:\\u00e9"]}]', _config([L1]), False)
@example(b'[{"Config": "config.json", "Layers": ["a\\nb"]}]', _config([L1]), False)
@example(b'[{"Config": "a\\nb", "Layers": []}]', _config([L1]), False)
def test_save_reader_hostile_json(repo, manifest, config, gzipped):
    layer = gzip.compress(L1, mtime=0) if gzipped else L1
    data = save_tar([("config.json", config), ("aaa/layer.tar", layer), ("loop1", ("symlink", "loop2")),
                     ("loop2", ("symlink", "loop1")), ("up", ("symlink", "../../../etc/passwd")),
                     ("hard", ("hardlink", "aaa/layer.tar")), ("a\nb", b"{}"), ("manifest.json", manifest)])
    expect_clean(_read, repo, data)


@FUZZ
@given(st.binary(min_size=0, max_size=600), st.sampled_from([b"\x1f\x8b", b"\x1f\x8b\x08\x00", b"\x28\xb5\x2f\xfd", b""]))
@example(b"\0" * 50, b"\x1f\x8b")
def test_save_reader_damaged_compressed_layers(repo, body, magic):
    """A blob that starts like gzip or zstd but is not."""
    blob = magic + body
    config = _config([L1])
    data = _oci(config, [blob], [blob])
    expect_clean(_read, repo, data)


def test_save_reader_truncated_gzip_layer(repo):
    gz = gzip.compress(L1, mtime=0)
    for cut in (10, len(gz) // 2, len(gz) - 4):
        blob = gz[:cut]
        expect_clean(_read, repo, _oci(_config([L1]), [blob], [blob]))


# -- the other parsers --------------------------------------------------------------

@QUICK
@given(st.binary(max_size=300), st.booleans())
@example(b"abc \xff\xfe\n", False)
@example(b"abc\0\xff\0", True)
@example(b"x" * 70000, False)
@example(b"x" * 70000, True)
def test_read_records_any_bytes(data, nul):
    stream = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
    records = expect_clean(lambda: list(read_records(stream, nul=nul)))
    for record in records or []:
        assert all(field and not any(c.isspace() for c in field) for field in record)


@QUICK
@given(st.text(max_size=300))
@example("app:latest\n")
@example("app\n:latest")
@example("app:é")
@example("app:ＡＢＣ")
def test_parse_ref_any_text(text):
    ref = expect_clean(parse_ref, text)
    if ref is not None:
        # a valid ref must be safe as repositories/<name>/<tag>: ASCII, one line, no escape
        key = f"{ref.name}/{ref.tag}"
        assert key.isascii() and key.isprintable() and ".." not in key.split("/") and not key.startswith("/")
    if looks_like_id(text):
        assert text.isascii() and "\n" not in text


@QUICK
@given(st.text(max_size=500))
@example("[remote \"x\"]\nurl = /a\0b\n")
@example("[x\n")
@example("key = v")
def test_config_parse_any_text(text):
    expect_clean(Config.parse, text, "dogestry.cfg")


@FUZZ
@given(st.binary(max_size=400))
@example(b'{"id": "sha256:' + b"a" * 64 + b'\\n", "config": {"digest": "sha256:' + b"a" * 64 + b'\\n", "size": 1}, '
         b'"layers": []}')
@example(b'{"id": 1, "config": [], "layers": {}}')
@example(b"[" * 100000)
def test_image_record_any_bytes(data):
    image = expect_clean(Image.from_record, data, "images/sha256/x.json in /repo")
    if image is not None:
        assert all(d.isascii() and "\n" not in d for d in [image.id] + image.diff_ids)


@FUZZ
@given(st.builds(lambda obj: json.dumps(obj).encode(), json_values) | st.binary(max_size=200))
@example(b'{"diff_id": "sha256:' + b"a" * 64 + b'\\n", "codec": "lz4", "digest": "sha256:' + b"a" * 64
         + b'", "size": 1, "uncompressed_size": 1}')
def test_layer_descriptor_any_bytes(data):
    desc = expect_clean(LayerDescriptor.from_bytes, data, "layers/sha256/x.json in /repo")
    if desc is not None:
        assert "\n" not in desc.diff_id + desc.digest


def _decode_all(codec, chunks):
    """What layerstore does with a decompressor: ValueError is its one documented failure."""
    decomp = compress.decompressor(codec)
    try:
        for chunk in chunks:
            for out in decomp.decompress(chunk):
                assert len(out) <= compress.OUT_CHUNK
        decomp.end()
    except ValueError:
        pass


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=4), st.sampled_from(["lz4", "none"]))
@example([b"\x04\x22\x4d\x18" + b"\0" * 20], "lz4")
def test_decompressors_random_bytes(chunks, codec):
    _decode_all(codec, chunks)


@FUZZ
@given(st.integers(0, 200), st.binary(max_size=20))
def test_lz4_damaged_frames(cut, tail):
    import lz4.frame

    frame = lz4.frame.compress(os.urandom(500) + b"\0" * 5000)
    _decode_all("lz4", [frame[:cut] + tail, frame[cut:]])


@QUICK
@given(st.text(max_size=100))
@example("s3://[bucket/p/")
@example("s3://b\uff03x/p/")
@example("s3://b/p/?endpoint=notaurl")
@example("s3://b/p/?region=us%0Aeast")
def test_parse_s3_url_any_text(text):
    from dogestry.backends.s3 import parse_s3_url

    expect_clean(parse_s3_url, "s3://" + text)


# -- memory -------------------------------------------------------------------------

MEMORY_PROBE = textwrap.dedent('''
    import io, itertools, resource, sys
    sys.path.insert(0, {root!r})
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    from dogestry.backends import open_backend
    from dogestry.dockertar import MAX_METADATA, read_save_stream
    from dogestry.errors import DogestryError
    from dogestry.repo import (FORMAT_KEY, Repository, config_key, image_key, layer_descriptor_key, layer_key,
                           ref_key)

    def numbered_entries():
        # endless distinct empty *.json files, each a valid tar header
        for i in itertools.count():
            header = bytearray(512)
            header[0:17] = b"m%011d.json" % i
            header[100:108] = b"0000644\\0"
            header[124:136] = b"00000000000\\0"
            header[156:157] = b"0"
            header[148:156] = b" " * 8
            header[148:156] = b"%06o\\0 " % sum(header)
            yield bytes(header)

    class Endless(io.RawIOBase):
        # a stream that never ends (a hostile `docker save` on a pipe): head, then fill forever
        def __init__(self, head, fill):
            self.buf, self.fill = head, fill
        def readable(self):
            return True
        def readinto(self, b):
            while len(self.buf) < len(b):
                self.buf += next(self.fill)
            n = len(b)
            b[:n], self.buf = self.buf[:n], self.buf[n:]
            return n

    class Sink:
        def __init__(self, repo):
            self.repo = repo
        def store(self, chunks, expect, path=None, size=None):
            return self.repo.store_layer(chunks, expect)[0]
        def known(self, diff_id, size):
            return self.repo.present_layer(diff_id)

    head = open(sys.argv[1], "rb").read()
    fill = numbered_entries() if sys.argv[2] == "numbered" else itertools.repeat(bytes.fromhex(sys.argv[2]) * 4096)
    try:
        read_save_stream(io.BufferedReader(Endless(head, fill)), Sink(Repository(open_backend(sys.argv[3]))))
    except DogestryError as err:
        print("DogestryError", err)
    except MemoryError:
        print("MemoryError")
''')


def _entry_with_size(name, type_, size_field, payload=b""):
    header = bytearray(_entry(name, type_, b"")[:512])
    header[124:136] = size_field
    _fix_checksum(header, 0)
    return bytes(header) + payload


def _json_bomb_tar(manifest_bomb):
    """As small as the size caps allow on disk, as large as possible once parsed: configs
    of empty objects (each `{}` a Python dict), or a manifest naming one config many
    times, each with many layers."""
    if manifest_bomb:
        config = json.dumps({"rootfs": {"diff_ids": [_digest(L2)] * 100}}).encode()
        manifest = json.dumps([{"Config": "c.json", "Layers": ["l.json"] * 100}] * 60000).encode()
        return save_tar([("c.json", config), ("l.json", L2), ("manifest.json", manifest)], fmt=tarfile.USTAR_FORMAT)
    body = b"[" + b",".join([b"{}"] * (MAX_METADATA // 3 - 10)) + b"]"  # as large as one may be
    names = [f"c{i}.json" for i in range(3)]
    manifest = json.dumps([{"Config": n, "Layers": []} for n in names]).encode()
    return save_tar([(n, body) for n in names] + [("manifest.json", manifest)], fmt=tarfile.USTAR_FORMAT)


@pytest.mark.parametrize("case", ["negative-pax-size", "huge-base256-size", "endless-longname", "config-json-bomb",
                                  "manifest-json-bomb", "endless-metadata-entries"])
def test_hostile_stream_memory_is_bounded(tmp_path, case):
    fill = b"\0".hex()
    if case == "negative-pax-size":      # a pax header of size -1 once meant read(-1): the whole stream
        head = _entry_with_size(b"pax", b"x", b"-0000000001\0")
        fill = b"7 a=b\n".hex()
    elif case == "huge-base256-size":
        head = _entry_with_size(b"manifest.json", b"0", b"\x80" + (1 << 80).to_bytes(11, "big"))
    elif case == "endless-longname":
        head = _entry_with_size(b"././@LongLink", b"L", b"\x80" + (1 << 80).to_bytes(11, "big"))
    elif case.endswith("json-bomb"):
        head = _json_bomb_tar(case == "manifest-json-bomb")[:-1024]  # the endless zero fill ends it
    else:  # endless empty metadata files, each remembered
        head, fill = b"", "numbered"
    script, head_file = tmp_path / "probe.py", tmp_path / "head"
    script.write_text(MEMORY_PROBE.format(root=ROOT))
    head_file.write_bytes(head)
    proc = subprocess.run([sys.executable, str(script), str(head_file), fill, str(tmp_path / "repo")],
                          capture_output=True, timeout=120)
    out = proc.stdout.decode()
    assert out.startswith("DogestryError") and "\n" not in out.strip(), (out, proc.stderr.decode()[-2000:])


# -- repository readers ---------------------------------------------------------------

@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A repository holding one image and a ref, saved from the docker-25 seed; returns
    (root, image id, {kind: key of the file of that kind})."""
    root = tmp_path_factory.mktemp("stored") / "repo"
    repo = Repository(open_backend(str(root)))
    saved = read_save_stream(io.BytesIO(SEEDS["docker-25"]), _Sink(repo))[0]
    image = Image.from_config(saved.config, saved.layer_results)
    repo.put_config(image.config)
    repo.put_image(image)
    repo.set_ref(parse_ref("app:2"), image.id)
    layer = image.layers[0].diff_id
    # the layout is repo.py's to define: ask it where each kind of file lives
    keys = {"marker": FORMAT_KEY, "ref": ref_key(parse_ref("app:2")), "record": image_key(image.id),
            "config": config_key(image.id), "descriptor": layer_descriptor_key(layer), "layer": layer_key(layer)}
    return root, image.id, keys


def _pull_reads(root):
    """What a pull reads from a repository: marker, ref, record, config, descriptors, layers."""
    repo = Repository(open_backend(str(root)))
    read = 0
    for image_id, ref in repo.list_refs():
        image = repo.load_image(repo.resolve(str(ref))[0], tags=[ref])
        for layer in image.layers:
            for chunk in repo.layer_chunks(repo.layer_descriptor(layer.diff_id)):
                read += len(chunk)
    return read


def test_repository_seed_is_read_whole(stored):
    assert _pull_reads(stored[0]) == len(L1) + len(L2)


@settings(FUZZ, max_examples=int(60 * SCALE))
@given(st.sampled_from(["marker", "ref", "record", "config", "descriptor", "layer"]),
       st.binary(max_size=300) | st.builds(lambda obj: json.dumps(obj).encode(), json_values),
       st.booleans())
@example("layer", b"\x04\x22\x4d\x18" + b"\0" * 30, False)
@example("ref", b"sha256:" + b"0" * 64 + b"\n", False)
@example("descriptor", b'{"diff_id": 1}', True)
def test_repository_readers_over_hostile_files(stored, kind, data, append):
    root, _, keys = stored
    path = root / keys[kind]
    original = path.read_bytes()
    mode = path.stat().st_mode
    path.chmod(0o644)
    try:
        path.write_bytes(original + data if append else data)
        expect_clean(_pull_reads, root)
    finally:
        path.write_bytes(original)
        path.chmod(mode)


# one path component each, never "/" (an absolute component would leave the repository)
_component = st.text(st.characters(blacklist_characters="/\0"), min_size=1, max_size=30).filter(
    lambda c: c not in (".", ".."))


@settings(QUICK, max_examples=int(60 * SCALE))
@given(_component, _component)
@example("app", "x\ny")
@example("APP", "1")
@example("app", ".hidden")
def test_repository_ref_files_with_hostile_names(stored, name, tag):
    """A ref file a hostile writer named: listing and resolving refs stay clean."""
    root = stored[0]
    try:
        directory = root / "repositories" / name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / tag).write_bytes(b"sha256:" + b"0" * 64 + b"\n")
    except (OSError, ValueError):
        return  # a name this file system refuses cannot be in a repository either
    try:
        expect_clean(_pull_reads, root)
    finally:
        (directory / tag).unlink()
        for parent in [directory, *directory.parents]:
            if parent == root / "repositories":
                break
            try:
                parent.rmdir()
            except OSError:
                break
