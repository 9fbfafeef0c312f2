"""Linux desktop integration (`aha desktop install|uninstall`): a freedesktop .desktop entry, the icon in the
hicolor theme (the SVG and PNGs of each size) and an AppStream metainfo file, under the user's data directory
($XDG_DATA_HOME, else ~/.local/share), so Aha is in the application menu with its icon.

The PNGs are rendered from assets/aha.svg ahead of time (packaging/render_icons.py, Qt) and ship in
assets/icons/: this module copies files and writes text, and imports no Qt. Menus watch these folders, so
nothing else is run. Uninstall removes the same files, and the folders that are left empty.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from xml.sax.saxutils import escape

from engine.assets import asset_path
from engine.errors import AhaError

APP_ID = "io.github.aha_workbench.Aha"   # reverse-DNS: the .desktop file's name, the icon's and AppStream's id
PNG_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
SUMMARY = "Chat with, train and export reasoning models"
DESCRIPTION = (
    "Aha is a desktop workbench for DeepSeek-R1-style reasoning models, the ones that think before they answer.",
    "Chat with GGUF models through llama.cpp and watch them think, train your own with GRPO and "
    "distillation, evaluate them side by side, and export them to GGUF and Ollama.",
)
# Characters that make an Exec argument need double quotes (Desktop Entry Specification, "The Exec key").
_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")


def data_home() -> Path:
    """$XDG_DATA_HOME when it is set to an absolute path, else ~/.local/share (XDG Base Directory spec)."""
    value = os.environ.get("XDG_DATA_HOME", "")
    return Path(value) if value and Path(value).is_absolute() else Path.home() / ".local" / "share"


def aha_command() -> list[str]:
    """The command the menu entry runs: the `aha` script beside this Python (a venv, pipx, uv tool),
    else `aha` on PATH, else this Python running app.launch."""
    beside = Path(sys.executable).with_name("aha")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("aha")
    return [found] if found else [sys.executable, "-m", "app.launch"]


def exec_value(command: list[str]) -> str:
    """The Exec key's value for `command`: an argument with a reserved character is double-quoted, with
    `"`, `` ` ``, `$` and `\\` escaped inside; then the key's string escape doubles every backslash and a
    literal % is written %%. Example: ["/opt/my apps/aha"] → `"/opt/my apps/aha"`."""
    def quoted(argument: str) -> str:
        if not _RESERVED & set(argument):
            return argument
        inner = "".join("\\" + char if char in '"`$\\' else char for char in argument)
        return f'"{inner}"'
    return " ".join(quoted(argument) for argument in command).replace("\\", "\\\\").replace("%", "%%")


def desktop_entry(command: list[str]) -> str:
    """The .desktop file's text."""
    return "\n".join([
        "[Desktop Entry]",
        "Type=Application",
        "Name=Aha",
        "GenericName=Reasoning model workbench",
        f"Comment={SUMMARY}",
        f"Exec={exec_value(command)}",
        f"Icon={APP_ID}",
        "Terminal=false",
        "Categories=Science;ArtificialIntelligence;",   # one main category: the entry is listed once
        "Keywords=LLM;GGUF;GRPO;DeepSeek;R1;llama.cpp;Ollama;chat;",
        "StartupNotify=true",
        "StartupWMClass=Aha",                           # X11: the class Qt gives the window (its app name)
        "",
    ])


def metainfo() -> str:
    """The AppStream metainfo file's text (a desktop-application component launched by the entry)."""
    paragraphs = "\n".join(f"    <p>{escape(text)}</p>" for text in DESCRIPTION)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<component type="desktop-application">
  <id>{APP_ID}</id>
  <metadata_license>CC0-1.0</metadata_license>
  <project_license>MIT</project_license>
  <name>Aha</name>
  <summary>{escape(SUMMARY)}</summary>
  <description>
{paragraphs}
  </description>
  <launchable type="desktop-id">{APP_ID}.desktop</launchable>
  <icon type="stock">{APP_ID}</icon>
  <categories>
    <category>Science</category>
    <category>ArtificialIntelligence</category>
  </categories>
  <provides>
    <binary>aha</binary>
  </provides>
  <content_rating type="oars-1.1"/>
</component>
"""


def entry_files(home: Path) -> dict[Path, Path | str]:
    """What install writes under the data directory `home`: each path, with the asset it copies or its text
    (the .desktop entry's text is left out here: it depends on the command, see install)."""
    icons = home / "icons" / "hicolor"
    files: dict[Path, Path | str] = {icons / "scalable" / "apps" / f"{APP_ID}.svg": asset_path("aha.svg")}
    for size in PNG_SIZES:
        files[icons / f"{size}x{size}" / "apps" / f"{APP_ID}.png"] = asset_path("icons", f"aha-{size}.png")
    files[home / "metainfo" / f"{APP_ID}.metainfo.xml"] = metainfo()
    return files


def desktop_file(home: Path) -> Path:
    return home / "applications" / f"{APP_ID}.desktop"


def _check_platform() -> None:
    if sys.platform in ("win32", "darwin"):
        raise AhaError("`aha desktop` writes a Linux (freedesktop) menu entry; on Windows and macOS build the "
                       "bundle instead (see packaging/README.md)")


def install(home: Path | None = None, command: list[str] | None = None) -> list[Path]:
    """Write the entry, the icons and the metainfo under `home` (default data_home()); returns the paths
    written. Writing again replaces them (a new Exec after the install moved)."""
    _check_platform()
    home = home or data_home()
    files = entry_files(home)
    files[desktop_file(home)] = desktop_entry(command or aha_command())
    missing = [source for source in files.values() if isinstance(source, Path) and not source.is_file()]
    if missing:
        raise AhaError(f"this install of Aha lacks {missing[0]}; reinstall aha-workbench")
    try:
        for path, source in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, Path):
                shutil.copyfile(source, path)
            else:
                path.write_text(source, encoding="utf-8")
    except OSError as error:
        raise AhaError(f"cannot write the menu entry under {home}: {error.strerror}; check that folder's "
                       f"permissions or set XDG_DATA_HOME") from None
    return list(files)


def uninstall(home: Path | None = None) -> list[Path]:
    """Remove what install writes under `home`, then the folders that are left empty (up to `home`);
    returns the files removed."""
    _check_platform()
    home = home or data_home()
    removed = []
    for path in [*entry_files(home), desktop_file(home)]:
        if path.is_file():
            path.unlink()
            removed.append(path)
            folder = path.parent
            while folder != home and folder.is_relative_to(home) and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent
    return removed
