import numpy as np
import pytest
import tifffile

from hemaseg.data.io import DataError, atomic_write, read_image, read_label_image, write_image

from conftest import save_png


def test_read_common_formats(tmp_path):
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    for ext in (".png", ".bmp", ".tif"):
        write_image(tmp_path / f"a{ext}", rgb)
        assert np.array_equal(read_image(tmp_path / f"a{ext}"), rgb)


def test_read_16bit_png_and_chw_tiff(tmp_path):
    g16 = np.array([[0, 1000], [65535, 7]], np.uint16)
    write_image(tmp_path / "g.png", g16)
    back = read_image(tmp_path / "g.png")
    assert back.dtype == np.uint16 and np.array_equal(back, g16)
    chw = np.zeros((3, 5, 6), np.uint8)
    chw[1] = 200
    tifffile.imwrite(tmp_path / "c.tif", chw, photometric="rgb", planarconfig="separate")
    hwc = read_image(tmp_path / "c.tif")
    assert hwc.shape == (5, 6, 3) and (hwc[:, :, 1] == 200).all()


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    bad = tmp_path / "broken image.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="broken image.png"):
        read_image(bad)
    good = save_png(tmp_path / "t.png", np.zeros((50, 50, 3), np.uint8) + 7)
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(DataError, match="trunc.png"):
        read_image(tmp_path / "trunc.png")


def test_colour_mask_refused_gray_rgb_mask_accepted(tmp_path):
    m = np.zeros((4, 4, 3), np.uint8)
    m[1, 1] = 128
    assert read_label_image(save_png(tmp_path / "gray.png", m))[1, 1] == 128
    m[2, 2] = (255, 0, 0)
    with pytest.raises(DataError, match="colour.png.*single-channel"):
        read_label_image(save_png(tmp_path / "colour.png", m))


def test_atomic_write_keeps_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    import os
    import stat

    target = tmp_path / "perm.txt"
    atomic_write(target, lambda t: t.write_text("x"))
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert stat.S_IMODE(os.stat(target).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)
