"""`aha desktop install|uninstall` under a temporary XDG_DATA_HOME: the .desktop entry, the hicolor icons (SVG
and every PNG size) and the AppStream metainfo, checked by freedesktop's own validators (Debian's
desktop-file-utils and appstream; `make test` installs them when it can); uninstall removes exactly what
install wrote; the shipped PNGs are the SVG rendered now (packaging/render_icons.py)."""

from __future__ import annotations

import importlib.util
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engine import desktop
from engine.assets import asset_path
from engine.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]


def validator(name: str, package: str) -> str:
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed and `make test` could not install it (it runs "
                    f"`apt-get install {package}` when it is root or has sudo): apt-get install {package}")
    return found


def validate(path: Path) -> None:
    """Both validators accept what install wrote: no error, no warning (hints and pedantic notes allowed)."""
    entry = subprocess.run([validator("desktop-file-validate", "desktop-file-utils"), str(path)],
                           capture_output=True, text=True)
    assert entry.returncode == 0 and "error" not in entry.stdout and "warning" not in entry.stdout, entry.stdout
    meta = next((path.parents[1] / "metainfo").glob("*.metainfo.xml"))
    stream = subprocess.run([validator("appstreamcli", "appstream"), "validate", "--no-net", str(meta)],
                            capture_output=True, text=True)
    assert stream.returncode == 0 and "W:" not in stream.stdout and "E:" not in stream.stdout, stream.stdout


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (bytes 16–24)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def tree(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() if path.is_file() else b"<dir>"
            for path in sorted(folder.rglob("*"))}


def test_install_writes_a_valid_menu_entry_icons_and_metainfo_and_uninstall_removes_them(tmp_path, monkeypatch,
                                                                                       capsys):
    home = tmp_path / "share"
    (home / "applications").mkdir(parents=True)
    (home / "applications" / "other.desktop").write_text("[Desktop Entry]\n", encoding="utf-8")  # someone else's
    before = tree(home)
    monkeypatch.setenv("XDG_DATA_HOME", str(home))
    assert cli_main(["desktop", "install"]) == 0
    written = [Path(line.removeprefix("wrote ")) for line in capsys.readouterr().out.splitlines()
               if line.startswith("wrote ")]
    entry = home / "applications" / f"{desktop.APP_ID}.desktop"
    icons = home / "icons" / "hicolor"
    assert entry in written and all(path.is_relative_to(home) and path.is_file() for path in written)
    assert (icons / "scalable" / "apps" / f"{desktop.APP_ID}.svg").read_bytes() == asset_path("aha.svg").read_bytes()
    for size in desktop.PNG_SIZES:
        assert png_size(icons / f"{size}x{size}" / "apps" / f"{desktop.APP_ID}.png") == (size, size)
    assert len(written) == len(desktop.PNG_SIZES) + 3                      # + the SVG, the entry, the metainfo
    text = entry.read_text(encoding="utf-8")
    assert f"Icon={desktop.APP_ID}\n" in text
    assert f"Exec={desktop.exec_value(desktop.aha_command())}\n" in text
    assert Path(desktop.aha_command()[0]).is_file()                        # the menu runs an aha that exists
    validate(entry)
    assert cli_main(["desktop", "install"]) == 0                           # again: the same files, replaced
    added = {name for name, content in tree(home).items() if content != b"<dir>"} - set(before)
    assert added == {path.relative_to(home).as_posix() for path in written}
    capsys.readouterr()
    assert cli_main(["desktop", "uninstall"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(written)
    assert tree(home) == before                                            # exactly what install wrote is gone
    assert cli_main(["desktop", "uninstall"]) == 0
    assert "nothing to remove" in capsys.readouterr().out


def test_an_exec_path_with_spaces_quotes_and_percent_is_quoted_as_the_spec_says(tmp_path):
    assert desktop.exec_value(["/usr/bin/aha"]) == "/usr/bin/aha"
    assert desktop.exec_value(["/opt/my apps/aha"]) == '"/opt/my apps/aha"'
    # In quotes `$` and `\` get a backslash; the string escape then doubles each backslash; % becomes %%.
    assert desktop.exec_value(["/opt/$x\\y/100%/aha", "-m"]) == '"/opt/\\\\$x\\\\\\\\y/100%%/aha" -m'
    home = tmp_path / "share"
    desktop.install(home, ["/opt/my apps/$HOME's 100%/aha"])
    validate(home / "applications" / f"{desktop.APP_ID}.desktop")


def test_the_shipped_pngs_are_the_svg_rendered_now(tmp_path, qapp):
    spec = importlib.util.spec_from_file_location("render_icons", ROOT / "packaging" / "render_icons.py")
    render_icons = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_icons)
    from app.qt import QtGui

    def pixels(image: QtGui.QImage) -> np.ndarray:
        image = image.convertToFormat(QtGui.QImage.Format.Format_ARGB32)
        return np.frombuffer(image.constBits(), np.uint8, count=image.sizeInBytes()).astype(int)

    for size in desktop.PNG_SIZES:
        shipped = QtGui.QImage(str(asset_path("icons", f"aha-{size}.png")))
        assert (shipped.width(), shipped.height()) == (size, size)
        fresh = pixels(render_icons.render(asset_path("aha.svg"), size))
        # Another Qt may antialias a little differently; an edited SVG changes far more than 1 % of the bytes.
        assert np.mean(np.abs(pixels(shipped) - fresh) > 8) < 0.01, f"assets/icons/aha-{size}.png: run make icons"
