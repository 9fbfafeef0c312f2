"""Render assets/aha.svg into the PNG icons Aha ships (assets/icons/aha-<size>.png, the hicolor sizes that
`aha desktop install` copies, engine.desktop.PNG_SIZES). Run it after editing the SVG: `make icons`. `platform_icon` makes the .ico / .icns of a Windows or macOS
bundle from the same SVG (packaging/aha.spec, at build time).

Rendered here, once, with Qt's SVG image plugin, so that installing the menu entry needs no Qt and no
display; tests/test_desktop.py renders again and fails when the PNGs and the SVG have drifted apart.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.qt import QtCore, QtGui  # noqa: E402
from engine.desktop import PNG_SIZES  # noqa: E402


def render(svg: Path, size: int) -> QtGui.QImage:
    """The SVG drawn at size × size pixels (ARGB, transparent around the shape)."""
    reader = QtGui.QImageReader(str(svg))
    reader.setScaledSize(QtCore.QSize(size, size))
    image = reader.read()
    if image.isNull():
        raise SystemExit(f"cannot render {svg}: {reader.errorString()} (is Qt's SVG image plugin installed?)")
    return image.convertToFormat(QtGui.QImage.Format.Format_ARGB32)


ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)  # Windows' .ico: one image per size, 256 its largest
ICNS_SOURCE = 1024                           # macOS' .icns: Pillow makes its 16 … 1024 (and @2x) images from this


def platform_icon(kind: str, path: Path, svg: Path = ROOT / "assets" / "aha.svg") -> Path:
    """The SVG as a Windows .ico or macOS .icns file at `path`: drawn by Qt at each size (one 1024-pixel
    drawing for .icns), written by Pillow (matplotlib's dependency, so in every Aha environment), which
    writes the icon sizes each OS looks for. packaging/aha.spec makes the bundle's icon with it at build
    time. Needs a QGuiApplication."""
    import io

    from PIL import Image

    def pillow(size: int) -> Image.Image:
        buffer = QtCore.QBuffer()
        buffer.open(QtCore.QIODevice.OpenModeFlag.WriteOnly)
        render(svg, size).save(buffer, "PNG")
        return Image.open(io.BytesIO(bytes(buffer.data()))).convert("RGBA")

    if kind == "ico":
        largest, *smaller = [pillow(size) for size in reversed(ICO_SIZES)]
        largest.save(path, format="ICO", sizes=[(size, size) for size in ICO_SIZES], append_images=smaller)
    elif kind == "icns":
        pillow(ICNS_SOURCE).save(path, format="ICNS")
    else:
        raise ValueError(f"unknown icon kind {kind!r}: ico or icns")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "assets" / "icons", help="where the PNGs go")
    args = parser.parse_args(argv)
    app = QtGui.QGuiApplication.instance() or QtGui.QGuiApplication(["render_icons", "-platform", "offscreen"])
    args.out.mkdir(parents=True, exist_ok=True)
    for size in PNG_SIZES:
        path = args.out / f"aha-{size}.png"
        if not render(ROOT / "assets" / "aha.svg", size).save(str(path), "PNG"):
            raise SystemExit(f"cannot write {path}")
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    del app
    return 0


if __name__ == "__main__":
    sys.exit(main())
