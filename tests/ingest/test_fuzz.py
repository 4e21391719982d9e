"""Broken files derived from valid ones (medassist.ingest.fuzz) and what ingest makes of them:
decoded, or one specific reason naming the file; never a crash, never a large allocation."""

from __future__ import annotations

import collections
import json
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medassist.datamodel import IngestProblem
from medassist.errors import MedassistError
from medassist.ingest import dicom as dicom_module
from medassist.ingest import discover_series, read_series_file
from medassist.ingest.dicom import DEFLATED_SYNTAX as DEFLATED
from medassist.ingest.dicom import read_dicom_header
from medassist.ingest.fuzz import (
    HUGE_LENGTH,
    MUTATIONS,
    STRUCTURAL_MUTATIONS,
    FuzzSource,
    default_sources,
    read_base,
    reason_category,
    replace_elements,
    write_fuzz_corpus,
)
from medassist.ingest.pixels import decode_file

SAMPLES = Path(__file__).resolve().parents[2] / "samples/export"
# Address space for the subprocess that ingests the corpus: any attempt to allocate what a lying
# header declares (hundreds of MB to 4 GiB) fails there with MemoryError, which the test catches.
ADDRESS_SPACE_LIMIT = 1536 * 1024**2

@pytest.fixture(scope="module")
def corpus(tmp_path_factory, dicom_data):
    return write_fuzz_corpus(default_sources(SAMPLES, dicom_data), tmp_path_factory.mktemp("fuzz"), per_mutation=4)


def test_the_full_corpus_is_over_1000_files_and_the_same_bytes_every_time(dicom_data, tmp_path):
    first = write_fuzz_corpus(default_sources(SAMPLES, dicom_data), tmp_path / "first", per_mutation=8)
    second = write_fuzz_corpus(default_sources(SAMPLES, dicom_data), tmp_path / "second", per_mutation=8)

    assert len(first) == 8 * len(MUTATIONS) * 8 >= 1000 and len(MUTATIONS) == 16
    assert [(b.path.name, b.detail) for b in first] == [(b.path.name, b.detail) for b in second]
    assert all(a.path.read_bytes() == b.path.read_bytes() for a, b in zip(first, second))
    # alike only where a file is cut inside the (all-zero) preamble or the magic, whatever its source
    assert len({b.path.read_bytes() for b in first}) > 0.99 * len(first)


def test_corpus_is_seeded_and_covers_every_mutation(corpus, dicom_data, tmp_path):
    again = write_fuzz_corpus(default_sources(SAMPLES, dicom_data), tmp_path / "again", per_mutation=4)
    other_seed = write_fuzz_corpus(default_sources(SAMPLES, dicom_data)[:1], tmp_path / "seed1", seed=1)

    assert len(corpus) >= 200
    assert collections.Counter(b.mutation for b in corpus) == {m: len(corpus) // len(MUTATIONS) for m in MUTATIONS}
    assert [b.path.read_bytes() for b in again] == [b.path.read_bytes() for b in corpus]
    assert [b.path.read_bytes() for b in other_seed] != [b.path.read_bytes() for b in corpus[: len(other_seed)]]
    uids = [pydicom.dcmread(b.path, stop_before_pixels=True).SeriesInstanceUID for b in corpus
            if b.mutation == "lie_rows_columns"]
    assert len(set(uids)) == len(uids), "every broken file is a series of its own"


_INGEST_EVERY_FILE = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from medassist.errors import MedassistError
from medassist.ingest import discover_series
from medassist.ingest.pixels import decode_file
outcome, direct = {{}}, {{}}
series, problems = discover_series([sys.argv[1]])
for problem in problems:
    outcome.setdefault(problem.path, []).append(["problem", problem.reason])
for one in series:
    try:
        image = one.load()
        outcome.setdefault(one.source_path, []).append(["decoded", str(image.pixels.shape)])
    except MedassistError as error:
        outcome.setdefault(one.source_path, []).append(["error", str(error)])
    except BaseException as error:  # what the test must never see: MemoryError above all
        outcome.setdefault(one.source_path, []).append(["crash", type(error).__name__ + ": " + str(error)[:200]])
for path in sorted(outcome):  # the decoder alone, also on files discovery refused
    try:
        decode_file(path)
        direct[path] = ["decoded", ""]
    except MedassistError as error:
        direct[path] = ["error", str(error)]
    except BaseException as error:
        direct[path] = ["crash", type(error).__name__ + ": " + str(error)[:200]]
# VmHWM: this process's own peak (ru_maxrss keeps the forking parent's across exec)
peak = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")]
print(json.dumps({{"outcome": outcome, "direct": direct, "maxrss_kb": peak[0]}}))
"""


def test_every_broken_file_is_decoded_or_named_with_a_specific_reason_in_bounded_memory(corpus, capsys):
    script = _INGEST_EVERY_FILE.format(limit=ADDRESS_SPACE_LIMIT)
    folder = corpus[0].path.parent
    done = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    outcome = report["outcome"]

    assert set(outcome) == {str(b.path) for b in corpus}, "no file lost, none invented"
    categories: collections.Counter[str] = collections.Counter()
    decoded_by_mutation: collections.Counter[str] = collections.Counter()
    for broken in corpus:
        (entry,) = outcome[str(broken.path)]  # exactly one outcome per file
        kind, text = entry
        assert kind != "crash", (broken, text)
        if kind == "decoded":
            decoded_by_mutation[broken.mutation] += 1
            continue
        reason = text.removeprefix(f"{broken.path}: ")
        assert kind == "problem" or text.startswith(f"{broken.path}: "), (broken, text)
        category = reason_category(reason)
        assert category is not None, (broken, reason)
        categories[category] += 1

    # What must never pass as an image: files cut short, lying sizes, 4 GiB lengths.
    for mutation in ("truncate", "lie_rows_columns", "huge_length"):
        assert decoded_by_mutation[mutation] == 0, mutation
    # Mutations of the layout mostly break the file; those of a value (a date, a UID, a sequence
    # the image does not need) may leave it a readable image.
    structural = [b for b in corpus if b.mutation in STRUCTURAL_MUTATIONS]
    assert sum(decoded_by_mutation[m] for m in STRUCTURAL_MUTATIONS) < len(structural) // 5
    # The decoder's own checks, without discovery's in front of them, hold as well.
    unspecific = [(path, kind, text) for path, (kind, text) in report["direct"].items()
                  if kind != "decoded" and not (text.startswith(f"{path}: ")
                                                and reason_category(text.removeprefix(f"{path}: ")))]
    assert unspecific == []
    with capsys.disabled():
        print(f"\nfuzz corpus: {len(corpus)} files, {sum(categories.values())} refused with a reason, "
              f"{sum(decoded_by_mutation.values())} still decodable {dict(decoded_by_mutation)}; "
              f"max RSS {report['maxrss_kb'] // 1024} MiB under a {ADDRESS_SPACE_LIMIT // 1024**2} MiB "
              f"address-space limit\nreasons: {dict(categories.most_common())}")


# --- declared sizes and lengths, one by one --------------------------------------------------


def _insert_private_element(path: Path, length: int) -> None:
    """Put a private OB element declaring ``length`` bytes (holding 4) just before the pixel data."""
    at = read_base(FuzzSource(path)).pixel_offset
    element = struct.pack("<HH", 0x0009, 0x1010) + b"OB\0\0" + struct.pack("<I", length) + bytes(4)
    data = path.read_bytes()
    path.write_bytes(data[:at] + element + data[at:])


def test_an_element_declaring_4_gib_is_named_not_read(tmp_path, write_dicom):
    path = write_dicom(tmp_path / "huge.dcm", np.zeros((4, 4)))
    _insert_private_element(path, HUGE_LENGTH)

    result = read_dicom_header(str(path))

    assert isinstance(result, IngestProblem)
    assert re.fullmatch(rf"element \(0009,1010\) declares {HUGE_LENGTH} bytes but only \d+ are left in the file",
                        result.reason)
    with pytest.raises(MedassistError, match=r"element \(0009,1010\) declares"):
        decode_file(str(path))


def test_more_pixel_data_than_the_header_declares_is_refused(tmp_path, write_dicom):
    path = write_dicom(tmp_path / "rows.dcm", np.zeros((16, 16)))
    ds = pydicom.dcmread(path)
    ds.Rows = 8  # the data still holds 16 rows: the image would be cut or sheared
    ds.save_as(path)

    (problem,) = discover_series([path])[1]
    with pytest.raises(MedassistError) as raised:
        decode_file(str(path))

    assert problem.reason.startswith("pixel data holds 512 bytes, 256 more than the header declares (8 x 16 x 16 bits)")
    assert str(raised.value) == f"{path}: {problem.reason}"


def test_trailing_padding_short_of_a_frame_is_accepted(tmp_path, write_dicom):
    image = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16)
    path = write_dicom(tmp_path / "padded.dcm", image)
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData + b"\0" * 100  # vendor padding: 100 bytes past a 512-byte frame
    ds.save_as(path)

    series, problems = discover_series([path])
    assert problems == [] and len(series) == 1
    decoded = decode_file(str(path))
    assert decoded.values.shape == (1, 16, 16)
    np.testing.assert_array_equal(decoded.values[0], image)


def test_compressed_image_with_lying_rows_is_a_specific_error(tmp_path, dicom_data):
    path = tmp_path / "jpeg.dcm"
    shutil.copy(dicom_data / "pylibjpeg-data/JPEGBaseline_1s_1f_u_08_08.dcm", path)
    ds = pydicom.dcmread(path)
    ds.Rows = 201
    ds.save_as(path)

    with pytest.raises(MedassistError, match="JPEG baseline stream undecodable: the decoded image size differs "
                                             "from the declared Rows, Columns and SamplesPerPixel"):
        read_series_file(path).load()


def test_more_frames_than_fragments_is_refused_before_decoding(tmp_path, dicom_data):
    path = tmp_path / "frames.dcm"
    shutil.copy(dicom_data / "pylibjpeg-data/JPEGBaseline_1s_1f_u_08_08.dcm", path)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 3  # its one frame is in two fragments
    ds.save_as(path)

    with pytest.raises(MedassistError, match=r"JPEG baseline stream holds 2 fragment\(s\) for 3 frames"):
        read_series_file(path).load()


def test_a_panicking_rle_decoder_becomes_an_error(tmp_path, dicom_data):
    # pylibjpeg-rle is Rust: a lying Rows makes it panic, and pyo3's PanicException is a
    # BaseException that used to escape every "except Exception" and stop the run.
    path = tmp_path / "rle.dcm"
    shutil.copy(dicom_data / "pydicom-data/emri_small_RLE.dcm", path)
    ds = pydicom.dcmread(path)
    ds.Rows = 1
    ds.save_as(path)

    with pytest.raises(MedassistError, match=r"RLE stream undecodable: "):
        read_series_file(path).load()


def test_a_series_too_large_to_decode_is_refused_before_allocating(tmp_path, write_dicom, monkeypatch):
    for z in range(3):
        write_dicom(tmp_path / f"{z}.dcm", np.zeros((10, 10)), position=(0.0, 0.0, float(z)))
    monkeypatch.setattr(dicom_module, "MAX_DECODED_BYTES", 1000)  # one slice needs 400 bytes, three 1200
    (series,), problems = discover_series([tmp_path])

    with pytest.raises(MedassistError, match=r"series of 3 slices: declared image size 10 x 10 x 3 frames x 32 bits "
                                             r"needs 1200 bytes decoded, over the 1000 byte limit"):
        series.load()
    assert problems == []


def test_rescale_to_non_finite_values_is_refused(tmp_path, write_dicom):
    path = write_dicom(tmp_path / "slope.dcm", np.full((2, 2), 1000), slope=1e38, intercept=0.0)

    with pytest.raises(MedassistError, match="rescale or Modality LUT gives non-finite pixel values"):
        read_series_file(path).load()


_GDCM_JPEG = """
import sys
from medassist.ingest.pixels import decode_file
print(decode_file(sys.argv[1]).values.shape)
"""


def test_an_8_bit_jpeg_with_fewer_bits_stored_decodes_without_aborting_the_process(tmp_path, dicom_data):
    # gdcm's JPEG codec throws a C++ exception nothing catches on this header: the process aborted
    # (std::terminate, exit -6). Run in a subprocess so that a regression cannot take pytest down.
    path = tmp_path / "bits7.dcm"
    shutil.copy(dicom_data / "pylibjpeg-data/JPEGBaseline_1s_1f_u_08_08.dcm", path)
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit = 7, 6
    ds.save_as(path)

    done = subprocess.run([sys.executable, "-c", _GDCM_JPEG, str(path)], capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "(1, 100, 100)"


def _deflate_bomb(path: Path, write_dicom, inflated: int) -> Path:
    """A deflated-syntax file whose data set inflates to ``inflated`` bytes: a tiny image's header,
    then a pixel data element of that size, all zeros (64 MiB blocks, each flushed so it repeats)."""
    write_dicom(path, np.zeros((4, 4)))
    base = read_base(FuzzSource(path))
    meta = replace_elements(base.data[: base.meta_end], base, {"TransferSyntaxUID": DEFLATED.encode()})
    header = base.data[base.meta_end : base.pixel_offset]
    length = inflated - len(header) - 12
    pixel = struct.pack("<HH", 0x7FE0, 0x0010) + b"OW\0\0" + struct.pack("<I", length)
    blocks, rest = divmod(length, 64 * 2**20)

    def deflate(data: bytes, final: bool) -> bytes:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        return compressor.compress(data) + compressor.flush(zlib.Z_FINISH if final else zlib.Z_FULL_FLUSH)

    path.write_bytes(meta + deflate(header + pixel, False) + deflate(bytes(64 * 2**20), False) * blocks
                     + deflate(bytes(rest), True))
    return path


_INGEST_DEFLATED = """
import json, sys
from medassist.ingest import dicom
dicom.MAX_INFLATED_BYTES = int(sys.argv[2])
from medassist.ingest import discover_series
from medassist.ingest.pixels import decode_file
problems = [p.reason for p in discover_series([sys.argv[1]])[1]]
try:
    decode_file(sys.argv[1])
    direct = "decoded"
except Exception as error:
    direct = str(error)
peak = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(json.dumps({"problems": problems, "direct": direct, "peak_kb": peak}))
"""


def test_a_deflate_bomb_is_refused_before_pydicom_inflates_it(tmp_path, write_dicom):
    # pydicom inflates a deflated data set whole, even for a header-only read: 600 MB from this 600 kB
    # file, twice. The limit is lowered to 100 MiB here to keep the test quick (2 GiB + 64 MiB in a run).
    path = _deflate_bomb(tmp_path / "bomb.dcm", write_dicom, 600 * 10**6)
    limit = 100 * 2**20

    done = subprocess.run([sys.executable, "-c", _INGEST_DEFLATED, str(path), str(limit)], capture_output=True,
                          text=True, timeout=300)

    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert len(report["problems"]) == 1 and report["problems"][0].startswith("deflated data set inflates to more "
                                                                             f"than {limit} bytes (from ")
    assert report["direct"] == f"{path}: {report['problems'][0]}"
    assert reason_category(report["problems"][0]) == "deflated data set too large"
    assert report["peak_kb"] < 300 * 1024, "nothing inflated was kept"


def test_a_deflated_file_under_the_limit_still_reads(tmp_path, write_dicom):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    image = np.arange(64, dtype=np.uint16).reshape(8, 8)
    path = write_dicom(tmp_path / "small.dcm", image, transfer_syntax=DeflatedExplicitVRLittleEndian)

    (series,), problems = discover_series([path])

    assert problems == []
    np.testing.assert_array_equal(series.load().pixels[0], image)
