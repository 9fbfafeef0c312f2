"""Render assets/aha.svg into the PNG icons Aha ships (assets/icons/aha-<size>.png, the hicolor sizes that
`aha desktop install` copies, engine.desktop.PNG_SIZES). Run it after editing the SVG: `make icons`.

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
