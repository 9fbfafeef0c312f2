"""Light and dark looks: the Fusion style with Aha's palettes, following the system's color scheme.

`AHA_THEME=light|dark` forces one (screenshots, tests). Colors used by custom widgets come from
`colors()`, so every widget follows a switch of the system scheme while the app runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from app.qt import Qt, QtGui, QtWidgets
from engine.assets import asset_path

ACCENT = "#7c5cff"
# A ticked box's mark: Fusion's own outline is drawn from the window colour, which leaves an unticked box
# nearly invisible on the dark palette, so the indicators are styled here, and a styled box needs its mark.
CHECK_MARK = asset_path("check.svg").as_posix()


@dataclass(frozen=True)
class Colors:
    window: str
    surface: str          # cards, composer
    surface_alt: str      # sidebar, think block
    text: str
    muted: str            # secondary text: stats, timers
    border: str
    accent: str = ACCENT
    warning: str = "#d97706"
    danger: str = "#dc2626"


LIGHT = Colors(window="#f6f6f8", surface="#ffffff", surface_alt="#eeeef3", text="#1d1d22", muted="#6b6b78",
               border="#dcdce4")
DARK = Colors(window="#17171b", surface="#202027", surface_alt="#191920", text="#ececf1", muted="#9a9aa8",
              border="#33333d")


def status_color(status: str, c: Colors) -> str | None:
    """A run's (or a pipeline stage's) status colour: danger for crashed and error, warning for cancelled,
    the accent while it runs (created, running); None (the text's own) for the rest."""
    if status in ("crashed", "error"):
        return c.danger
    if status == "cancelled":
        return c.warning
    return c.accent if status in ("created", "running") else None


def system_is_dark() -> bool:
    forced = os.environ.get("AHA_THEME", "").lower()
    if forced in ("light", "dark"):
        return forced == "dark"
    hints = QtGui.QGuiApplication.styleHints()
    return hints.colorScheme() == Qt.ColorScheme.Dark


def colors() -> Colors:
    return DARK if system_is_dark() else LIGHT


def palette_for(c: Colors) -> QtGui.QPalette:
    palette = QtGui.QPalette()
    role = QtGui.QPalette.ColorRole
    for name, value in ((role.Window, c.window), (role.Base, c.surface), (role.AlternateBase, c.surface_alt),
                        (role.Button, c.surface), (role.ToolTipBase, c.surface), (role.WindowText, c.text),
                        (role.Text, c.text), (role.ButtonText, c.text), (role.ToolTipText, c.text),
                        (role.PlaceholderText, c.muted), (role.Highlight, c.accent), (role.Link, c.accent),
                        (role.HighlightedText, "#ffffff"), (role.Mid, c.border), (role.Dark, c.border)):
        palette.setColor(name, QtGui.QColor(value))
    return palette


def stylesheet(c: Colors) -> str:
    """Widget styling by object name; layout stays in code."""
    return f"""
    #Sidebar {{ background: {c.surface_alt}; border-right: 1px solid {c.border}; }}
    #Sidebar QListWidget {{ background: transparent; border: none; font-size: 13px; outline: 0; }}
    #Sidebar QListWidget::item {{ padding: 10px 14px; border-radius: 8px; margin: 2px 8px; }}
    #Sidebar QListWidget::item:selected {{ background: {c.accent}; color: white; }}
    #ConversationList {{ background: {c.surface_alt}; border: none; }}
    #ConversationList::item {{ padding: 8px 10px; border-radius: 6px; margin: 1px 4px; }}
    #ConversationList::item:selected {{ background: {c.accent}; color: white; }}
    #MessageCard {{ background: {c.surface}; border: 1px solid {c.border}; border-radius: 10px; }}
    #UserCard {{ background: {c.surface_alt}; border: 1px solid {c.border}; border-radius: 10px; }}
    #ThinkBlock {{ background: {c.surface_alt}; border: 1px solid {c.border}; border-radius: 8px; }}
    #ThinkHeader {{ border: none; text-align: left; color: {c.muted}; font-weight: 600; padding: 4px 6px; }}
    #ThinkHeader:hover {{ color: {c.text}; }}
    #ThinkBody {{ background: transparent; border: none; color: {c.muted}; }}
    #Stats, #Muted {{ color: {c.muted}; font-size: 11px; }}
    #Warning {{ color: {c.warning}; font-size: 11px; }}
    #Banner {{ background: {c.surface_alt}; border: 1px solid {c.border}; border-radius: 8px; }}
    #Composer {{ background: {c.surface}; border: 1px solid {c.border}; border-radius: 10px; padding: 6px; }}
    #PrimaryButton {{ background: {c.accent}; color: white; border: none; border-radius: 8px; padding: 6px 16px;
                      font-weight: 600; }}
    #PrimaryButton:disabled {{ background: {c.border}; color: {c.muted}; }}
    #StopButton {{ background: {c.danger}; color: white; border: none; border-radius: 8px; padding: 6px 16px;
                   font-weight: 600; }}
    #EmptyTitle {{ font-size: 22px; font-weight: 700; }}
    #SectionTitle {{ font-size: 15px; font-weight: 700; padding: 4px 0 8px 0; }}
    #Toast {{ background: {c.text}; color: {c.window}; border-radius: 8px; padding: 8px 12px; }}
    #Toast QLabel {{ color: {c.window}; background: transparent; }}
    #Toast QPushButton {{ color: {c.window}; background: transparent; border: 1px solid {c.window};
                          border-radius: 6px; padding: 2px 10px; font-weight: 600; }}
    QToolButton#LinkButton {{ border: none; color: {c.accent}; }}
    QCheckBox::indicator, QRadioButton::indicator, QGroupBox::indicator {{
        width: 12px; height: 12px; border: 1px solid {c.muted}; background: {c.surface}; border-radius: 3px; }}
    QRadioButton::indicator {{ border-radius: 7px; }}
    QRadioButton::indicator:checked {{ border: 1px solid {c.accent}; background: qradialgradient(cx: 0.5,
        cy: 0.5, radius: 0.5, fx: 0.5, fy: 0.5, stop: 0 {c.accent}, stop: 0.5 {c.accent}, stop: 0.6 {c.surface}); }}
    QCheckBox::indicator:checked, QGroupBox::indicator:checked {{ background: {c.accent};
        border: 1px solid {c.accent}; image: url({CHECK_MARK}); }}
    QCheckBox::indicator:disabled, QRadioButton::indicator:disabled {{ border-color: {c.border};
        background: {c.surface_alt}; }}
    """


def apply(app: QtWidgets.QApplication) -> Colors:
    """Style the application for the current scheme; returns the colors used."""
    app.setStyle("Fusion")
    c = colors()
    app.setPalette(palette_for(c))
    app.setStyleSheet(stylesheet(c))
    return c
