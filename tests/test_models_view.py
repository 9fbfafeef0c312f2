"""The models pane: a real tiny GGUF in the table and details, unreadable files as one line, remove that keeps the
file, and downloads through `aha models pull` in a child process against the fake Hub (tests/support/fake_hub.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.models.view import (
    ARCHITECTURE,
    CONTEXT,
    NAME,
    PARAMETERS,
    QUANTIZATION,
    SIZE,
    SOURCE,
    DownloadDialog,
    DownloadState,
    ModelsPane,
    scan_summary,
    summary,
)
from app.qt import Qt, QtCore, QtGui, QtWidgets
from engine.models import R1_DEFAULT, Library, format_count, read_gguf_info
from tests.support import platforms
from tests.support.fake_hub import FakeHub

REPO, FILE = "unsloth/Tiny-R1-GGUF", "Tiny-R1-Q8_0.gguf"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny(gguf_file, tmp_path):
    """A copy of the tiny qwen2 Q8_0 GGUF in a folder of its own (tests may break it)."""
    folder = tmp_path / "models"
    folder.mkdir()
    return shutil.copy(gguf_file("qwen2", "q8_0"), folder / "tiny-qwen2.gguf")


@pytest.fixture
def pane(qtbot):
    widget = ModelsPane(Library())
    qtbot.addWidget(widget, before_close_func=lambda w: w.shutdown())
    qtbot.waitUntil(lambda: not widget.is_busy())
    return widget


def cells(pane, row=0) -> list[str]:
    return [pane.proxy.index(row, column).data() for column in range(pane.proxy.columnCount())]


def add_and_wait(qtbot, pane, paths) -> None:
    with qtbot.waitSignal(pane.library_changed):
        pane.add_paths(paths)
    qtbot.waitUntil(lambda: pane.model.rowCount() > 0 and not pane.is_busy())


def test_an_added_model_shows_its_header_in_the_table(qtbot, pane, tiny):
    add_and_wait(qtbot, pane, [tiny])
    info = read_gguf_info(tiny)
    row = cells(pane)
    assert row[NAME] == "tiny-qwen2" and row[ARCHITECTURE] == "qwen2" and row[QUANTIZATION] == "Q8_0"
    assert row[PARAMETERS] == format_count(info.parameter_count) and row[CONTEXT] == f"{info.context_length:,}"
    assert row[SIZE].endswith("MB") and row[SOURCE] == str(tiny.parent)
    assert pane.proxy.index(0, PARAMETERS).data(Qt.ItemDataRole.TextAlignmentRole) & Qt.AlignmentFlag.AlignRight
    assert pane.count.text() == "1 model" and pane.table_stack.currentWidget() is pane.table
    assert pane.status.full_text() == "1 added"


def test_selecting_a_model_shows_details_and_chat_template_and_chat_emits_its_path(qtbot, pane, tiny):
    add_and_wait(qtbot, pane, [tiny])
    assert pane.selected_row() is not None                       # the added model is selected
    details = pane.details
    assert details.title.full_text() == "tiny-qwen2" and "Q8_0" in details.subtitle.full_text()
    assert "<think>" in details.template.toPlainText() and details.template.isReadOnly()
    assert "general.architecture = 'qwen2'" in details.metadata.toPlainText()
    fields = details.fields()
    assert fields["architecture"] == "qwen2" and fields["quantization"] == "Q8_0" and fields["path"] == str(tiny)
    assert fields["chat template"] == "yes" and fields["file size"].endswith("MB")
    assert not details.problem.isVisible()
    with qtbot.waitSignal(pane.chat_requested) as chat:
        qtbot.mouseClick(details.chat_button, Qt.MouseButton.LeftButton)
    assert chat.args == [str(tiny)]


def test_show_in_folder_opens_the_models_folder(qtbot, pane, tiny, monkeypatch):
    opened = []
    monkeypatch.setattr(QtGui.QDesktopServices, "openUrl", lambda url: opened.append(url.toLocalFile()))
    add_and_wait(qtbot, pane, [tiny])
    pane.details.folder_button.click()
    assert opened == [str(tiny.parent)]


def test_a_broken_file_is_refused_with_its_one_line_reason(qtbot, pane, tmp_path):
    broken = tmp_path / "x.gguf"
    broken.write_bytes(os.urandom(4096))
    pane.add_paths([broken])
    qtbot.waitUntil(lambda: pane.status.full_text().startswith("Not added:"))
    assert "is not a GGUF file" in pane.status.full_text() and "\n" not in pane.status.full_text()
    assert pane.status.objectName() == "Warning" and pane.model.rowCount() == 0


def test_a_folder_adds_the_good_files_and_lists_why_it_skipped_the_others(qtbot, pane, tiny):
    (tiny.parent / "x.gguf").write_bytes(b"PK\x03\x04" + os.urandom(64))
    add_and_wait(qtbot, pane, [tiny.parent])
    assert pane.model.rowCount() == 1 and pane.status.full_text() == "1 added · 1 skipped"
    assert "a zip archive" in pane.status.toolTip()


def test_a_model_that_became_corrupt_shows_unreadable_and_its_reason(qtbot, pane, tiny):
    add_and_wait(qtbot, pane, [tiny])
    tiny.write_bytes(b"GGUF" + os.urandom(60))                 # garbage after the magic: corrupt or truncated
    pane.refresh()
    qtbot.waitUntil(lambda: cells(pane)[ARCHITECTURE] == "unreadable")
    reason = pane.proxy.index(0, NAME).data(Qt.ItemDataRole.ToolTipRole)
    assert str(tiny) in reason and "\n" not in reason
    assert pane.proxy.index(0, QUANTIZATION).data() == "—" and "1 unreadable" in pane.count.text()
    details = pane.details
    assert details.problem.text() == reason and not details.problem.isHidden()
    assert not details.chat_button.isEnabled() and details.remove_button.isEnabled()
    assert details.template.toPlainText() == ""


def test_a_missing_file_and_a_broken_library_are_lines_not_crashes(qtbot, pane, tiny):
    add_and_wait(qtbot, pane, [tiny])
    tiny.unlink()
    pane.refresh()
    qtbot.waitUntil(lambda: cells(pane)[ARCHITECTURE] == "unreadable")
    assert "does not exist" in pane.details.problem.text()
    pane.library.path.write_text("{not json")
    pane.refresh()
    qtbot.waitUntil(lambda: pane.model.rowCount() == 0)
    assert "cannot read the model library" in pane.status.full_text()
    assert pane.table_stack.currentWidget() is pane.table   # not "No models yet": the library is broken


def test_remove_asks_first_and_leaves_the_file_on_disk(qtbot, pane, tiny, monkeypatch):
    asked = []

    def answer(reply):
        def question(parent, title, text, *args):
            asked.append(text)
            return reply
        return question

    add_and_wait(qtbot, pane, [tiny])
    monkeypatch.setattr(QtWidgets.QMessageBox, "question", answer(QtWidgets.QMessageBox.StandardButton.No))
    pane.details.remove_button.click()
    assert len(Library().entries()) == 1 and "stays on disk" in asked[0]
    monkeypatch.setattr(QtWidgets.QMessageBox, "question", answer(QtWidgets.QMessageBox.StandardButton.Yes))
    with qtbot.waitSignal(pane.library_changed):
        pane.details.remove_button.click()
    qtbot.waitUntil(lambda: pane.model.rowCount() == 0)
    assert Library().entries() == [] and tiny.exists()
    assert "the file is still at" in pane.status.full_text()
    assert pane.table_stack.currentWidget() is pane.empty


def test_an_empty_library_shows_a_friendly_empty_state(pane):
    assert pane.table_stack.currentWidget() is pane.empty
    buttons = [pane.empty.download_button, pane.empty.add_button, pane.empty.scan_button]
    assert all(button.text() for button in buttons) and pane.count.text() == "0 models"


def test_filter_and_numeric_sort(qtbot, pane, tiny, gguf_file):
    big = shutil.copy(gguf_file("qwen2", "q8_0"), tiny.parent / "other-model.gguf")
    with open(big, "ab") as stream:
        stream.write(b"\0" * 10_000_000)                      # bigger file, same header
    add_and_wait(qtbot, pane, [tiny.parent])
    qtbot.waitUntil(lambda: pane.model.rowCount() == 2)
    pane.table.sortByColumn(SIZE, Qt.SortOrder.DescendingOrder)
    assert [cells(pane, row)[NAME] for row in range(2)] == ["other-model", "tiny-qwen2"]
    pane.filter.setText("TINY")
    assert pane.proxy.rowCount() == 1 and cells(pane)[NAME] == "tiny-qwen2"


@platforms.symlinks
def test_rescan_summarizes_what_it_found_and_skipped(qtbot, pane, tiny, tmp_path, monkeypatch):
    studio = tmp_path / "lmstudio"
    (studio / "bartowski" / "Tiny-GGUF").mkdir(parents=True)
    shutil.copy(tiny, studio / "bartowski" / "Tiny-GGUF" / "tiny.gguf")
    snapshot = tmp_path / "hub" / "models--org--gone" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "gone.gguf").symlink_to(tmp_path / "hub" / "missing-blob")
    roots = {"lmstudio": [studio], "hf-cache": [tmp_path / "hub"]}
    monkeypatch.setattr("engine.models.library.default_roots", lambda: roots)
    with qtbot.waitSignal(pane.library_changed):
        pane.rescan_button.click()
    qtbot.waitUntil(lambda: pane.model.rowCount() == 1 and not pane.is_busy())
    assert pane.status.full_text() == "Found 1 new model · 1 skipped" and "blob is missing" in pane.status.toolTip()
    assert cells(pane)[SOURCE] == "LM Studio" and pane.rescan_button.isEnabled()
    pane.table.selectRow(0)
    assert pane.details.fields()["source"] == "LM Studio · bartowski/Tiny-GGUF"


def test_summary_lines():
    assert summary(3, 1) == "3 added · 1 skipped"
    assert summary(0, 0) == "No new models" and summary(0, 2) == "No new models · 2 skipped"
    assert scan_summary(2, 0, 0) == "Found 2 new models" and scan_summary(1, 1, 2) == "Found 1 new model · 1 removed · 2 skipped"
    assert scan_summary(0, 0, 0) == "No new models" and scan_summary(0, 1, 0) == "No new models · 1 removed"


def aha(*args: str) -> subprocess.CompletedProcess:
    """The `aha` command line in a child process (same data directory: AHA_HOME is inherited)."""
    done = subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def test_rescan_reports_the_models_the_command_line_added_meanwhile(qtbot, pane, tiny, gguf_file, monkeypatch):
    """`aha models add` twice while the pane is open; Rescan (no Ollama, LM Studio or HF cache here) shows
    them, says "Found 2 new models" and tells the window the library changed (Compare, Settings)."""
    add_and_wait(qtbot, pane, [tiny])
    monkeypatch.setattr("engine.models.library.default_roots", lambda: {})
    aha("models", "add", str(gguf_file("llama", "q8_0")))
    aha("models", "add", str(gguf_file("qwen3", "q8_0")))
    with qtbot.waitSignal(pane.library_changed):
        pane.rescan_button.click()
    qtbot.waitUntil(lambda: pane.model.rowCount() == 3 and not pane.is_busy())
    assert pane.status.full_text() == "Found 2 new models"
    pane.rescan_button.click()
    qtbot.waitUntil(lambda: pane.rescan_button.isEnabled() and not pane.is_busy())
    assert pane.status.full_text() == "No new models"


def test_rescan_before_the_table_is_read_counts_only_new_models(qtbot, tiny, monkeypatch):
    """Rescan clicked at once, before the table has shown the library: the model already in it is not "new"."""
    Library().add(tiny)
    monkeypatch.setattr("engine.models.library.default_roots", lambda: {})
    widget = ModelsPane(Library())
    qtbot.addWidget(widget, before_close_func=lambda w: w.shutdown())
    assert widget.model.rowCount() == 0  # the first read is still on its way
    widget.rescan_button.click()
    qtbot.waitUntil(lambda: widget.rescan_button.isEnabled() and not widget.is_busy())
    assert widget.status.full_text() == "No new models" and widget.model.rowCount() == 1


def test_add_folder_on_a_hugging_face_checkpoint_offers_the_export_command(qtbot, pane, checkpoint, tmp_path):
    """A checkpoint folder (config.json + safetensors, no .gguf): the pane says what it is and offers the
    `aha export` command; the copied command, run as it is, makes a GGUF the pane then adds."""
    folder = Path(shutil.copytree(checkpoint("qwen2"), tmp_path / "Tiny-R1-Qwen2"))
    pane.add_paths([folder])
    qtbot.waitUntil(lambda: pane.export_offer is not None and pane.export_offer.isVisible())
    offer = pane.export_offer
    assert "Hugging Face checkpoint" in offer.text() and "not a GGUF model" in offer.text()
    command = offer.informativeText()
    assert command.startswith(f"aha export {folder} -o ") and command.endswith(" --type q8_0")
    assert pane.status.full_text().startswith(f"Not added: {folder} is a Hugging Face checkpoint")
    assert f"`{command}`" in pane.status.full_text() and pane.status.objectName() == "Warning"
    clipboard = QtWidgets.QApplication.clipboard()
    clipboard.clear()
    copy = next(button for button in offer.buttons() if button.text() == "Copy command")
    copy.click()
    assert clipboard.text() == command and not offer.isVisible()
    aha(*command.split()[1:])                              # the paths have no spaces: split is the shell's split
    converted = tmp_path / "Tiny-R1-Qwen2-q8_0.gguf"
    assert read_gguf_info(converted).quantization == "Q8_0"
    add_and_wait(qtbot, pane, [converted])
    assert cells(pane)[NAME] == "Tiny-R1-Qwen2-q8_0" and cells(pane)[QUANTIZATION] == "Q8_0"


# --- Downloads (a child process talking to the fake Hub) ---------------------------------------------------------

class _Trickle:
    """Writes through to a socket file in small pieces with pauses; gives up quietly when the client is gone."""

    def __init__(self, raw, piece: int = 16 << 10, pause_s: float = 0.02):
        self.raw, self.piece, self.pause_s = raw, piece, pause_s

    def write(self, data: bytes) -> int:
        try:
            for start in range(0, len(data), self.piece):
                self.raw.write(data[start:start + self.piece])
                self.raw.flush()
                time.sleep(self.pause_s)
        except OSError:
            pass
        return len(data)

    def flush(self) -> None:
        try:
            self.raw.flush()
        except OSError:
            pass


class SlowHub(FakeHub):
    """The fake Hub at about 800 KB/s, so a download is still running when the test cancels it."""

    def _answer(self, handler, body: bool) -> None:
        raw, handler.wfile = handler.wfile, _Trickle(handler.wfile)
        try:
            super()._answer(handler, body)
        finally:
            handler.wfile = raw                     # the server closes the real one


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """Environment for `aha models pull` children (they inherit os.environ): no telemetry, HF cache in tmp_path."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return monkeypatch


def test_a_download_shows_progress_then_selects_the_new_model(qtbot, pane, gguf_file, hub_env):
    data = gguf_file("qwen2", "q8_0").read_bytes()
    server = FakeHub()
    server.add(REPO, FILE, data)
    with server as endpoint:
        hub_env.setenv("HF_ENDPOINT", endpoint)
        row = pane.start_download(REPO, FILE)
        with qtbot.waitSignal(row.downloaded) as done:
            pass
    assert row.bar.value() == row.bar.maximum() and row.state == DownloadState.DONE
    qtbot.waitUntil(lambda: pane.model.rowCount() == 1 and pane.selected_row() is not None)
    assert pane.selected_row().path == done.args[0] and cells(pane)[SOURCE] == "Hugging Face"
    assert pane.details.fields()["source"] == f"Hugging Face · {REPO}"
    assert "Downloaded to" in row.detail.full_text() and row.dismiss_button.isVisibleTo(pane)


def test_cancel_stops_the_download_and_adds_nothing(qtbot, pane, hub_env):
    server = SlowHub()
    server.add(REPO, FILE, b"GGUF" + os.urandom(3 << 20))
    with server as endpoint:
        hub_env.setenv("HF_ENDPOINT", endpoint)
        row = pane.start_download(REPO, FILE)
        qtbot.waitUntil(lambda: "MB" in row.detail.full_text())   # the first progress event
        row.cancel_button.click()
        qtbot.waitUntil(lambda: row.state == DownloadState.CANCELLED)
    assert "cancelled" in row.detail.full_text().lower() and row.bar.format() == "cancelled"
    assert Library().entries() == [] and pane.model.rowCount() == 0 and not pane.is_busy()


def test_a_failed_download_shows_its_one_line_error(qtbot, pane, hub_env):
    server = FakeHub()
    server.add(REPO, FILE, b"GGUF")
    with server as endpoint:
        hub_env.setenv("HF_ENDPOINT", endpoint)
        row = pane.start_download(REPO, "Missing-Q4_K_M.gguf")
        qtbot.waitUntil(lambda: row.state == DownloadState.FAILED)
    assert "has no file Missing-Q4_K_M.gguf" in row.detail.full_text() and row.detail.objectName() == "Warning"
    assert "\n" not in row.detail.full_text()


def test_the_download_dialog_offers_deepseek_r1(qtbot):
    dialog = DownloadDialog()
    qtbot.addWidget(dialog)
    assert dialog.values() == R1_DEFAULT
    dialog.filename.setText("  ")
    assert not dialog.buttons.button(QtWidgets.QDialogButtonBox.StandardButton.Ok).isEnabled()


def test_the_pane_never_blocks_on_a_slow_read(qtbot, monkeypatch, tiny):
    """Header reads happen on a worker thread: the GUI thread keeps turning while one takes long."""
    Library().add(tiny)
    gate = QtCore.QSemaphore(0)
    real = read_gguf_info

    def slow(path):
        gate.acquire()
        return real(path)

    monkeypatch.setattr("app.models.view.read_gguf_info", slow)
    pane = ModelsPane(Library())
    qtbot.addWidget(pane, before_close_func=lambda w: w.shutdown())
    qtbot.wait(50)                                     # the event loop runs while the read is blocked
    assert pane.model.rowCount() == 0 and pane.is_busy()
    gate.release()
    qtbot.waitUntil(lambda: pane.model.rowCount() == 1)
