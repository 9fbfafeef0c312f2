"""`aha chat` in a child process on the scripted model: on a terminal the thinking is dimmed and the answer
plain, Ctrl+C stops a reply mid-thought and keeps it in the store as `stopped` (and the chat goes on), and
`-p … --json` prints one JSON object per line. The data directory is the test's (AHA_HOME, inherited)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.chat.terminal import DIM, RESET
from engine.store import Message, Store
from tests.support import ends_in_thought, platforms
from tests.support.scripted_model import ANSWER, QUESTION, THOUGHT

REPO = Path(__file__).resolve().parents[1]
XOFF, XON = b"\x13", b"\x11"  # Ctrl+S / Ctrl+Q: the terminal stops / resumes the output of what runs on it


class TerminalChat:
    """`aha chat MODEL …` with stdout and stderr on a pseudo-terminal (so the view sees a TTY) and stdin a
    pipe the test types into."""

    def __init__(self, model: Path, *flags: str):
        import pty

        self.master, slave = pty.openpty()
        self.slave_name = os.ttyname(slave)
        self.child = subprocess.Popen([sys.executable, "-m", "engine.cli", "chat", str(model), *flags], cwd=REPO,
                                      stdin=subprocess.PIPE, stdout=slave, stderr=slave)
        os.close(slave)
        self.received = bytearray()

    @property
    def text(self) -> str:
        """What the terminal has shown so far (its \\r\\n as \\n, without the probe's NUL bytes)."""
        return self.received.replace(b"\0", b"").decode("utf-8", errors="replace").replace("\r\n", "\n")

    def read_until(self, predicate, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while not predicate(self.text):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; the terminal shows {self.text!r}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the child has closed the terminal
                    chunk = b""
                assert chunk, f"the child left; the terminal shows {self.text!r}"
                self.received += chunk
        return self.text

    def type(self, line: str) -> None:
        self.child.stdin.write(line.encode() + b"\n")
        self.child.stdin.flush()

    def stop_output(self) -> None:
        """Ctrl+S: the child's next write to the terminal blocks until `resume_output`. Returns once the
        terminal really is stopped (a non-blocking probe write is refused)."""
        os.write(self.master, XOFF)
        probe = os.open(self.slave_name, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    os.write(probe, b"\0")
                except BlockingIOError:
                    return
                assert time.monotonic() < deadline, "the terminal did not stop its output"
                time.sleep(0.02)
        finally:
            os.close(probe)

    def resume_output(self) -> None:
        os.write(self.master, XON)

    def leave(self, timeout: float = 60) -> int:
        """Ctrl+D at the prompt (end of input): the chat ends; returns its exit code."""
        self.child.stdin.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                self.received += chunk
        return self.child.wait(timeout=timeout)

    def close(self) -> None:
        if self.child.poll() is None:
            self.child.kill()
            self.child.wait(timeout=30)
        os.close(self.master)


@pytest.fixture
def chat(scripted_gguf):
    sessions: list[TerminalChat] = []

    def start(*flags: str) -> TerminalChat:
        sessions.append(TerminalChat(scripted_gguf, *flags))
        return sessions[-1]

    yield start
    for session in sessions:
        session.close()


def the_reply() -> Message:
    """The one assistant message in the test's store: the leaf of its one conversation."""
    with Store() as store:
        conversations = store.list_conversations()
        assert len(conversations) == 1
        leaf = conversations[0].leaf_id
        message = store.get_message(leaf) if leaf is not None else None
    assert message is not None and message.role == "assistant"
    return message


def reply_is_streaming() -> bool:
    try:
        return the_reply().status == "streaming"
    except AssertionError:
        return False


@platforms.pseudo_terminal
def test_interactive_chat_dims_the_thinking_and_not_the_answer(chat):
    """A whole reply on a terminal: "Thinking…" and the thought between the dim and reset codes, the answer
    after the reset with no dim code of its own, then the dimmed stats line; Ctrl+D leaves (exit 0) and the
    reply is in the store as `complete`."""
    session = chat("--temperature", "0")
    session.read_until(lambda text: text.endswith("> "))
    session.type(QUESTION)
    text = session.read_until(lambda text: text.count("> ") == 2)
    assert session.leave() == 0
    assert f"{DIM}Thinking…\n{THOUGHT}{RESET}\n{ANSWER}{RESET}\n{DIM}Thought for " in text, text
    stats = text.split(f"{ANSWER}{RESET}\n{DIM}", 1)[1].split(RESET, 1)[0]
    assert " tokens · answer " in stats and "tok/s" in stats and "stopped" not in stats
    reply = the_reply()
    assert (reply.status, reply.thinking, reply.content.strip()) == ("complete", THOUGHT, ANSWER)


@platforms.pseudo_terminal
@platforms.posix_signals
def test_ctrl_c_stops_a_reply_mid_thought_and_keeps_it_as_stopped(chat):
    """The terminal's output is stopped (Ctrl+S) before the question goes in, so the reply cannot run ahead
    of the test: its first write blocks inside the thought. SIGINT (what Ctrl+C sends) while the reply streams,
    then Ctrl+Q: the reply ends after that token with the stats line saying "stopped", the prompt comes back
    (the first Ctrl+C does not leave), and the store holds the partial thought with status `stopped`."""
    session = chat("--temperature", "0")
    session.read_until(lambda text: text.endswith("> "))
    session.stop_output()
    session.type(QUESTION)
    deadline = time.monotonic() + 60
    while not reply_is_streaming():  # the reply has begun: the child is inside its Ctrl+C handling
        assert time.monotonic() < deadline and session.child.poll() is None, "the reply never started"
        time.sleep(0.05)
    session.child.send_signal(signal.SIGINT)
    session.resume_output()
    text = session.read_until(lambda text: text.count("> ") == 2)
    assert session.leave() == 0
    reply = the_reply()
    assert reply.status == "stopped" and reply.content == ""
    assert reply.thinking and THOUGHT.startswith(reply.thinking) and len(reply.thinking) < len(THOUGHT)
    assert reply.stats["stop_reason"] == "cancelled" and reply.stats["thinking_unfinished"] is True
    assert f"{DIM}Thinking…\n{reply.thinking}{RESET}\n{DIM}" in text, text
    stats = text.split(f"{reply.thinking}{RESET}\n{DIM}", 1)[1].split(RESET, 1)[0]
    assert stats.startswith("Stopped by you while thinking · ") and stats.count("Stopped") == 1, stats
    assert "Traceback" not in text and "cancelled" not in text  # not the "aha: cancelled" of a second Ctrl+C


def test_one_shot_json_lines(scripted_gguf):
    """`aha chat MODEL -p … --json`: one JSON object per line — thinking deltas, answer deltas, then `done`
    with the stats and the ids of the saved conversation and message — and no terminal codes."""
    done = subprocess.run([sys.executable, "-m", "engine.cli", "chat", str(scripted_gguf), "-p", QUESTION, "--json",
                           "--temperature", "0"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout
    records = [json.loads(line) for line in done.stdout.splitlines()]
    kinds = [record["type"] for record in records]
    assert kinds[-1] == "done" and kinds.count("done") == 1 and set(kinds) == {"thinking", "answer", "done"}
    assert kinds.index("answer") > max(i for i, kind in enumerate(kinds) if kind == "thinking")  # thought first
    assert "".join(r["text"] for r in records if r["type"] == "thinking") == THOUGHT
    assert "".join(r["text"] for r in records if r["type"] == "answer").strip() == ANSWER
    stats = records[-1]["stats"]
    assert stats["stop_reason"] == "eos" and stats["thinking_tokens"] > 0 and stats["answer_tokens"] > 0
    reply = the_reply()
    assert reply.id == stats["message_id"] and reply.conversation_id == stats["conversation_id"]
    assert (reply.status, reply.thinking) == ("complete", THOUGHT)


def test_a_reader_that_goes_away_ends_the_chat_quietly(scripted_gguf):
    """`aha chat … --json | head -1`: when the reader closes the pipe, aha stops with the shell's 141 and no
    traceback, and the reply so far is saved as stopped."""
    child = subprocess.Popen([sys.executable, "-m", "engine.cli", "chat", str(scripted_gguf), "-p", QUESTION, "--json",
                              "--temperature", "0"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = json.loads(child.stdout.readline())
    child.stdout.close()                                  # as head does after its line
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=120) == 141, stderr
    assert first["type"] == "thinking" and stderr == ""
    reply = the_reply()
    assert reply.status == "stopped" and THOUGHT.startswith(reply.thinking) and reply.thinking


@pytest.fixture(scope="session")
def ends_model(tiny_dir, checkpoint):
    return ends_in_thought.ends_in_thought_gguf(tiny_dir, checkpoint("qwen2"))


def one_shot(model: Path, *flags: str) -> list[str]:
    """`aha chat MODEL -p … FLAGS` with stdout a pipe (no terminal codes): the lines it printed."""
    done = subprocess.run([sys.executable, "-m", "engine.cli", "chat", str(model), "--temperature", "0", *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_a_reply_that_ends_inside_its_thought_says_the_model_ended_it(ends_model):
    """EOS inside <think>: the stats line says so in the window's words, and nothing says it was stopped."""
    lines = one_shot(ends_model, "-p", ends_in_thought.QUESTION)
    stats = the_reply().stats
    assert stats["stop_reason"] == "eos" and stats["thinking_unfinished"]
    assert lines[:2] == ["Thinking…", ends_in_thought.THOUGHT.strip()]
    assert lines[-1].startswith(f"The model ended inside its thought · {stats['thinking_s']:.1f} s · "
                                f"{stats['thinking_tokens']} tokens · first token "), lines
    assert not any("topped" in line or "cut off" in line for line in lines)


def test_a_one_token_reply_says_1_token_and_that_the_budget_cut_it(scripted_gguf):
    """--max-tokens 1: one thinking token, cut by the budget while thinking."""
    line = one_shot(scripted_gguf, "-p", QUESTION, "--max-tokens", "1")[-1]
    stats = the_reply().stats
    assert stats["thinking_tokens"] == 1 and stats["stop_reason"] == "max_tokens"
    assert line.startswith(f"Cut by the token budget while thinking · {stats['thinking_s']:.1f} s · 1 token · "), line
