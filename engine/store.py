"""The SQLite store (sqlite-utils, WAL): conversations as message trees, runs, metrics, samples, artifacts.

Schema changes are ordered migrations keyed by `PRAGMA user_version`. Streaming answers are written
by a `MessageWriter` in small committed batches, so a killed process loses at most about a second
of tokens. A run row records the pid of the process running it and a heartbeat, so `recover_runs`
can tell a crashed run from a live one. The store keeps text and numbers; it knows nothing of models,
templates or the GUI.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import sqlite_utils

from engine.errors import AhaError
from engine.paths import data_dir

ROLES = ("system", "user", "assistant")
STATUSES = ("streaming", "complete", "stopped", "error")
FINAL_STATUSES = ("complete", "stopped", "error")
BUSY_TIMEOUT_MS = 5000
# Not checked on write: `aha distill generate` also records "incomplete" (a teacher that stopped early).
RUN_STATUSES = ("created", "running", "complete", "cancelled", "error", "crashed")
ACTIVE_RUN_STATUSES = ("created", "running")  # a process should be working on the run
# A running job refreshes its heartbeat at least every 30 s; a run silent for longer than this is crashed
# (or hung) even when a process with its pid exists (pids are reused).
STALE_AFTER_S = 120.0

# --- schema ---------------------------------------------------------------------------------------
# Timestamps are UNIX seconds (REAL); JSON columns hold objects. Messages form a tree per
# conversation (parent_id); a conversation's leaf_id picks the branch shown. Roles and statuses are
# checked in Python, not by CHECK constraints, so a later migration can widen them without a rebuild.

_V1_TABLES = """
CREATE TABLE conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL DEFAULT '',
    settings TEXT NOT NULL DEFAULT '{}',
    leaf_id INTEGER REFERENCES messages(id) ON DELETE SET NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    deleted_at REAL
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    parent_id INTEGER REFERENCES messages(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL DEFAULT '',
    thinking TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'complete',
    stats TEXT NOT NULL DEFAULT '{}',
    model TEXT,
    sampling TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE INDEX messages_by_conversation ON messages(conversation_id);
CREATE INDEX messages_by_parent ON messages(parent_id);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    config TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL,
    dir TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, name, step)
) WITHOUT ROWID;
CREATE TABLE samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    data TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE INDEX samples_by_run ON samples(run_id, step);
CREATE TABLE artifacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER REFERENCES runs(id) ON DELETE SET NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
"""

# Full-text index over finished messages only: a streaming row is indexed when its status leaves
# 'streaming', so the many small flushes of a long answer never re-tokenize its growing text.
_V1_SEARCH = """
CREATE VIRTUAL TABLE messages_fts USING fts5(
    content, thinking, content='messages', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages WHEN new.status != 'streaming' BEGIN
    INSERT INTO messages_fts(rowid, content, thinking) VALUES (new.id, new.content, new.thinking);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages WHEN old.status != 'streaming' BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content, thinking)
        VALUES ('delete', old.id, old.content, old.thinking);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF content, thinking, status ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content, thinking)
        SELECT 'delete', old.id, old.content, old.thinking WHERE old.status != 'streaming';
    INSERT INTO messages_fts(rowid, content, thinking)
        SELECT new.id, new.content, new.thinking WHERE new.status != 'streaming';
END;
"""


def _v1_initial(db: sqlite_utils.Database) -> None:
    db.executescript(_V1_TABLES)
    db.executescript(_V1_SEARCH)


def _v2_run_process(db: sqlite_utils.Database) -> None:
    """Runs record the process working on them (pid) and when it last said it was alive (heartbeat_at)."""
    db.execute("ALTER TABLE runs ADD COLUMN pid INTEGER")
    db.execute("ALTER TABLE runs ADD COLUMN heartbeat_at REAL")


def _v3_run_parent(db: sqlite_utils.Database) -> None:
    """A run may belong to another (a pipeline's stages are its children): parent_id, with an index for the
    children of one run. Deleting the parent keeps the children (their files are theirs), parentless."""
    db.execute("ALTER TABLE runs ADD COLUMN parent_id INTEGER REFERENCES runs(id) ON DELETE SET NULL")
    db.execute("CREATE INDEX runs_by_parent ON runs(parent_id)")


def _v4_removed_thinking(db: sqlite_utils.Database) -> None:
    """The thoughts taken out of a conversation ("remove thinking", to be restored by its undo): one row per
    assistant message, gone with the message (so deleting the conversation for good deletes them)."""
    db.execute("""
        CREATE TABLE removed_thinking (
            message_id INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
            thinking TEXT NOT NULL,
            removed_at REAL NOT NULL
        )""")


# Append only; never edit a released migration. Entry i brings the schema to version i + 1.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1_initial, _v2_run_process, _v3_run_parent,
                                                            _v4_removed_thinking]
SCHEMA_VERSION = len(MIGRATIONS)


# --- records --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    settings: dict  # model path, sampling, history policy ("strip"|"keep"), system prompt, ...
    leaf_id: int | None  # the message whose branch is shown
    created_at: float
    updated_at: float
    deleted_at: float | None  # set while in the trash (undo with restore_conversation)


@dataclass(frozen=True)
class Message:
    id: int
    conversation_id: int
    parent_id: int | None
    role: str
    content: str  # the answer (or the user's text)
    thinking: str  # reasoning, kept apart from the answer
    status: str  # streaming | complete | stopped | error
    stats: dict
    model: str | None
    sampling: dict
    created_at: float


class SearchHit(NamedTuple):
    conversation_id: int
    message_id: int
    snippet: str


class ConversationHits(NamedTuple):
    """The search hits of one conversation, best first (a search result list shows one row per chat)."""

    conversation_id: int
    hits: tuple[SearchHit, ...]


def group_by_conversation(hits: list[SearchHit]) -> list[ConversationHits]:
    """Hits (best first) grouped per conversation, the conversations in the order of their best hit.

    Example:
    >>> hits = [SearchHit(1, 11, "a"), SearchHit(2, 21, "b"), SearchHit(1, 12, "c")]
    >>> [(group.conversation_id, [hit.message_id for hit in group.hits]) for group in group_by_conversation(hits)]
    [(1, [11, 12]), (2, [21])]
    """
    groups: dict[int, list[SearchHit]] = {}
    for hit in hits:
        groups.setdefault(hit.conversation_id, []).append(hit)
    return [ConversationHits(conversation_id, tuple(group)) for conversation_id, group in groups.items()]


def _conversation(row: dict) -> Conversation:
    return Conversation(row["id"], row["title"], json.loads(row["settings"]), row["leaf_id"],
                        row["created_at"], row["updated_at"], row["deleted_at"])


def _message(row: dict) -> Message:
    return Message(row["id"], row["conversation_id"], row["parent_id"], row["role"], row["content"],
                   row["thinking"], row["status"], json.loads(row["stats"]), row["model"],
                   json.loads(row["sampling"]), row["created_at"])


def _json(value: Mapping | None) -> str:
    return json.dumps(dict(value or {}), ensure_ascii=False, sort_keys=True)


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


def _run(row: dict) -> dict:
    return {**row, "config": json.loads(row["config"])}


def process_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists on this machine (it may be another program if the pid was reused).

    POSIX: `kill(pid, 0)` sends nothing and only checks. Windows: signal 0 there is CTRL_C_EVENT, so ask
    OpenProcess and GetExitCodeProcess instead."""
    if pid is None or pid <= 0:  # kill(0, 0) would address our own process group
        return False
    if sys.platform == "win32":
        return _windows_process_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    except OSError:
        return False
    return True


def _windows_process_alive(pid: int) -> bool:
    import ctypes

    query_limited_information, still_active, access_denied = 0x1000, 259, 5
    kernel32 = ctypes.windll.kernel32
    handle = kernel32.OpenProcess(query_limited_information, False, pid)
    if not handle:
        return kernel32.GetLastError() == access_denied  # denied: it exists; invalid parameter: it does not
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True  # cannot tell: count it alive, so nothing is marked crashed or deleted by mistake
        return code.value == still_active
    finally:
        kernel32.CloseHandle(handle)


def fts_query(text: str) -> str:
    """User input → a safe FTS5 query: every word quoted (so `"`, `-`, `AND`, `*` are plain text),
    matched as a prefix, all words required. Empty when nothing searchable is left."""
    words = [word for word in text.split() if any(char.isalnum() for char in word)]
    return " ".join('"' + word.replace('"', '""') + '"*' for word in words)


# --- the store ------------------------------------------------------------------------------------


def _open_failure(path: Path, exc: sqlite3.DatabaseError) -> str:
    """What to do when the store cannot be opened: a damaged file is moved aside, anything else (a missing or
    read-only folder, another program's lock) is fixed where it is."""
    if "not a database" in str(exc) or "malformed" in str(exc):
        return (f"the conversation store {path} is damaged ({exc}); move it aside (Aha then starts a new one) "
                "or restore it from a backup")
    return (f"cannot open the conversation store {path} ({exc}); check that its folder exists and is writable "
            "and that no other program holds it")


def _enable_wal(db: sqlite_utils.Database) -> None:
    """Turn on WAL, waiting for other processes as the busy timeout does. SQLite answers a journal-mode
    change "database is locked" at once, without calling the busy handler, while another connection holds
    the file (two training ranks opening a new store together did, in CI), so the change is retried here."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while True:
        try:
            db.enable_wal()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)


class Store:
    """One connection to `aha.db`. Safe to share between threads (calls are serialized); other
    processes may open the same file at the same time (WAL, busy timeout)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else data_dir() / "aha.db"
        self._lock = threading.RLock()
        self.closed = False  # set by close(): a window's late callbacks check it before reading
        try:
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
            self.db = sqlite_utils.Database(connection, execute_plugins=False)
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _enable_wal(self.db)
            self.db.execute("PRAGMA synchronous = NORMAL")  # in WAL mode: durable across process crashes
            self.db.execute("PRAGMA foreign_keys = ON")
            self.migrate()
        except sqlite3.DatabaseError as exc:  # one line, and the file is left as it is
            raise AhaError(_open_failure(self.path, exc)) from exc

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> int:
        """Bring the schema to `SCHEMA_VERSION`, one committed transaction per migration; returns
        the version. Safe when another process migrates at the same time."""
        with self._lock:
            while (version := self.schema_version) < SCHEMA_VERSION:
                with self._write():
                    if self.schema_version != version:  # another process got there first
                        continue
                    MIGRATIONS[version](self.db)
                    self.db.execute(f"PRAGMA user_version = {version + 1}")
            if version > SCHEMA_VERSION:
                raise AhaError(f"{self.path} has schema version {version}, newer than this Aha knows "
                               f"({SCHEMA_VERSION}); update Aha to open it")
            return version

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """One committed write transaction. BEGIN IMMEDIATE takes the write lock up front, so a
        concurrent writer waits (busy timeout) instead of failing half-way."""
        with self._lock:
            connection = self.db.conn
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def _rows(self, sql: str, params: tuple | dict = ()) -> list[dict]:
        with self._lock:
            return list(self.db.query(sql, params))

    # --- conversations ----------------------------------------------------------------------------

    def create_conversation(self, title: str = "New chat", settings: Mapping | None = None) -> Conversation:
        now = time.time()
        with self._write():
            table = self.db.table("conversations")
            table.insert({"title": title, "settings": _json(settings), "created_at": now, "updated_at": now})
            conversation_id = table.last_pk
        return self.get_conversation(conversation_id)

    def get_conversation(self, conversation_id: int) -> Conversation:
        rows = self._rows("SELECT * FROM conversations WHERE id = ?", (conversation_id,))
        if not rows:
            raise AhaError(f"conversation {conversation_id} does not exist; it may have been purged")
        return _conversation(rows[0])

    def list_conversations(self, include_deleted: bool = False) -> list[Conversation]:
        """Most recently updated first: a new message or a rename updates a conversation; opening it, changing
        its settings, switching its branch or a trip to the trash and back do not."""
        where = "" if include_deleted else "WHERE deleted_at IS NULL"
        rows = self._rows(f"SELECT * FROM conversations {where} ORDER BY updated_at DESC, id DESC")
        return [_conversation(row) for row in rows]

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        self._update_conversation(conversation_id, touch=True, title=title)

    def update_settings(self, conversation_id: int, settings: Mapping) -> None:
        self._update_conversation(conversation_id, settings=_json(settings))

    def delete_conversation(self, conversation_id: int) -> None:
        """Move to the trash: hidden from lists and search until restored or purged."""
        self._update_conversation(conversation_id, deleted_at=time.time())

    def restore_conversation(self, conversation_id: int) -> None:
        self._update_conversation(conversation_id, deleted_at=None)

    def purge_deleted(self, older_than_s: float = 0.0) -> int:
        """Delete for good the conversations trashed at least `older_than_s` ago; returns how many."""
        with self._write():
            cursor = self.db.execute("DELETE FROM conversations WHERE deleted_at <= ?",
                                     (time.time() - older_than_s,))
            return cursor.rowcount

    def _update_conversation(self, conversation_id: int, *, touch: bool = False, **fields: Any) -> None:
        """Change fields; `touch` also sets updated_at (the list's order)."""
        self.get_conversation(conversation_id)
        if touch:
            fields["updated_at"] = time.time()
        with self._write():
            self.db.table("conversations").update(conversation_id, fields)

    # --- messages ---------------------------------------------------------------------------------

    def add_message(self, conversation_id: int, parent_id: int | None, role: str, content: str = "", *,
                    thinking: str = "", status: str = "complete", stats: Mapping | None = None,
                    model: str | None = None, sampling: Mapping | None = None,
                    make_leaf: bool = True) -> Message:
        """Add a message under `parent_id` (None: a root). A second child of the same parent is a
        branch (edit or regenerate); nothing is overwritten. `make_leaf` shows the new branch."""
        _check(role, ROLES, "role")
        _check(status, STATUSES, "message status")
        if parent_id is not None and self.get_message(parent_id).conversation_id != conversation_id:
            raise ValueError(f"message {parent_id} is not in conversation {conversation_id}")
        row = {"conversation_id": conversation_id, "parent_id": parent_id, "role": role, "content": content,
               "thinking": thinking, "status": status, "stats": _json(stats), "model": model,
               "sampling": _json(sampling), "created_at": time.time()}
        with self._write():
            table = self.db.table("messages")
            table.insert(row)
            message_id = table.last_pk
            self.db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?",
                            (row["created_at"], conversation_id))
            if make_leaf:
                self._set_leaf(conversation_id, message_id)
        return self.get_message(message_id)

    def get_message(self, message_id: int) -> Message:
        rows = self._rows("SELECT * FROM messages WHERE id = ?", (message_id,))
        if not rows:
            raise AhaError(f"message {message_id} does not exist; its conversation may have been purged")
        return _message(rows[0])

    def branch_path(self, leaf_id: int) -> list[Message]:
        """The messages from the root down to `leaf_id`, in order."""
        rows = self._rows("""
            WITH RECURSIVE path(id, depth) AS (
                SELECT ?, 0
                UNION ALL
                SELECT messages.parent_id, path.depth + 1 FROM messages JOIN path ON messages.id = path.id
                WHERE messages.parent_id IS NOT NULL
            )
            SELECT messages.* FROM path JOIN messages ON messages.id = path.id ORDER BY path.depth DESC
        """, (leaf_id,))
        return [_message(row) for row in rows]

    def children(self, message_id: int) -> list[Message]:
        """Direct replies to a message, oldest first."""
        rows = self._rows("SELECT * FROM messages WHERE parent_id = ? ORDER BY id", (message_id,))
        return [_message(row) for row in rows]

    def siblings(self, message_id: int) -> list[Message]:
        """The message and its alternatives (same parent, or all roots), oldest first: for ‹ 2/3 ›."""
        message = self.get_message(message_id)
        if message.parent_id is not None:
            return self.children(message.parent_id)
        rows = self._rows("SELECT * FROM messages WHERE conversation_id = ? AND parent_id IS NULL ORDER BY id",
                          (message.conversation_id,))
        return [_message(row) for row in rows]

    def latest_leaf(self, message_id: int) -> int:
        """Follow the newest reply down from a message; where switching to a sibling should land."""
        while children := self.children(message_id):
            message_id = children[-1].id
        return message_id

    def set_leaf(self, conversation_id: int, message_id: int) -> None:
        if self.get_message(message_id).conversation_id != conversation_id:
            raise ValueError(f"message {message_id} is not in conversation {conversation_id}")
        with self._write():
            self._set_leaf(conversation_id, message_id)

    def _set_leaf(self, conversation_id: int, message_id: int) -> None:
        self.db.execute("UPDATE conversations SET leaf_id = ? WHERE id = ?", (message_id, conversation_id))

    def begin_assistant_message(self, conversation_id: int, parent_id: int | None, model: str | None = None,
                                sampling: Mapping | None = None, *, flush_interval_s: float = 0.25,
                                max_delay_s: float = 1.0) -> MessageWriter:
        """Start a streaming assistant reply (status `streaming`, shown as the leaf)."""
        message = self.add_message(conversation_id, parent_id, "assistant", status="streaming",
                                   model=model, sampling=sampling)
        return MessageWriter(self, message.id, flush_interval_s=flush_interval_s, max_delay_s=max_delay_s)

    def recover(self) -> list[int]:
        """Mark replies left `streaming` by a crashed process as `stopped` (returns their ids), and runs
        whose process is gone as `crashed` (`recover_runs`). Call once at app start: it cannot tell a
        crashed reply writer from a live one in another process (runs it can: call `recover_runs` alone
        wherever another Aha may be chatting)."""
        with self._write():
            rows = self.db.execute("UPDATE messages SET status = 'stopped' WHERE status = 'streaming' "
                                   "RETURNING id").fetchall()
        self.recover_runs()
        return sorted(row[0] for row in rows)

    def _append_text(self, message_id: int, thinking: str, answer: str) -> None:
        """One committed UPDATE that appends deltas (the writer's flush)."""
        with self._write():
            self.db.execute("UPDATE messages SET thinking = thinking || ?, content = content || ? WHERE id = ?",
                            (thinking, answer, message_id))

    def _finish_message(self, message_id: int, thinking: str, answer: str, status: str,
                        stats: Mapping | None) -> None:
        with self._write():
            self.db.execute("UPDATE messages SET thinking = thinking || ?, content = content || ?, status = ?, "
                            "stats = ? WHERE id = ?", (thinking, answer, status, _json(stats), message_id))
            self.db.execute("UPDATE conversations SET updated_at = ? WHERE id = "
                            "(SELECT conversation_id FROM messages WHERE id = ?)", (time.time(), message_id))

    # --- removing thinking ------------------------------------------------------------------------

    def remove_thinking(self, conversation_id: int) -> int:
        """Take the thoughts out of a conversation's finished assistant messages (every branch): each one's
        `thinking` is emptied and kept aside for `restore_thinking`, in one transaction. Returns how many
        messages lost a thought (0 when none had one; a reply still streaming is left alone)."""
        self.get_conversation(conversation_id)
        with self._write():
            self.db.execute("""
                INSERT INTO removed_thinking (message_id, thinking, removed_at)
                SELECT id, thinking, ? FROM messages
                WHERE conversation_id = ? AND role = 'assistant' AND thinking != '' AND status != 'streaming'
            """, (time.time(), conversation_id))
            return self.db.execute("""
                UPDATE messages SET thinking = ''
                WHERE id IN (SELECT removed_thinking.message_id FROM removed_thinking
                             JOIN messages ON messages.id = removed_thinking.message_id
                             WHERE messages.conversation_id = ?) AND thinking != ''
            """, (conversation_id,)).rowcount

    def restore_thinking(self, conversation_id: int) -> int:
        """Put back the thoughts `remove_thinking` took out of a conversation, in one transaction; returns how
        many messages got theirs back."""
        self.get_conversation(conversation_id)
        with self._write():
            restored = self.db.execute("""
                UPDATE messages SET thinking = (SELECT thinking FROM removed_thinking WHERE message_id = messages.id)
                WHERE conversation_id = ? AND id IN (SELECT message_id FROM removed_thinking)
            """, (conversation_id,)).rowcount
            self.db.execute("DELETE FROM removed_thinking WHERE message_id IN "
                            "(SELECT id FROM messages WHERE conversation_id = ?)", (conversation_id,))
            return restored

    def removed_thinking_ids(self, conversation_id: int) -> set[int]:
        """The ids of a conversation's messages whose thought is kept aside (a view can say it was removed)."""
        return {row["message_id"] for row in self._rows(
            "SELECT removed_thinking.message_id FROM removed_thinking JOIN messages "
            "ON messages.id = removed_thinking.message_id WHERE messages.conversation_id = ?", (conversation_id,))}

    def removed_thinking_count(self, conversation_id: int) -> int:
        """How many of a conversation's messages have a removed thought that `restore_thinking` can put back."""
        return self._rows("SELECT COUNT(*) AS count FROM removed_thinking JOIN messages "
                          "ON messages.id = removed_thinking.message_id WHERE messages.conversation_id = ?",
                          (conversation_id,))[0]["count"]

    # --- search -----------------------------------------------------------------------------------

    def search(self, query: str, limit: int = 50, marks: tuple[str, str] = ("[", "]")) -> list[SearchHit]:
        """Finished messages (answer or thinking) of conversations not in the trash that contain every
        word of `query` (as a prefix), best match first. Any user input is safe."""
        match = fts_query(query)
        if not match:
            return []
        rows = self._rows("""
            SELECT messages.conversation_id, messages.id,
                   snippet(messages_fts, -1, :open, :close, '…', 12) AS snippet
            FROM messages_fts
            JOIN messages ON messages.id = messages_fts.rowid
            JOIN conversations ON conversations.id = messages.conversation_id
            WHERE messages_fts MATCH :match AND conversations.deleted_at IS NULL
            ORDER BY messages_fts.rank, messages.id DESC
            LIMIT :limit
        """, {"match": match, "open": marks[0], "close": marks[1], "limit": limit})
        return [SearchHit(row["conversation_id"], row["id"], row["snippet"]) for row in rows]

    # --- export -----------------------------------------------------------------------------------

    def export_json(self, conversation_id: int, leaf_id: int | None = None) -> dict:
        """The conversation's shown branch (or the one ending at `leaf_id`), reasoning as its own field."""
        conversation = self.get_conversation(conversation_id)
        messages = self._export_path(conversation, leaf_id)
        return {
            "format": "aha-conversation", "version": 1,
            "id": conversation.id, "title": conversation.title, "settings": conversation.settings,
            "created_at": _iso(conversation.created_at), "updated_at": _iso(conversation.updated_at),
            "messages": [_message_json(message) for message in messages],
        }

    def export_markdown(self, conversation_id: int, leaf_id: int | None = None,
                        names: Mapping[str, str] | None = None) -> str:
        """The shown branch as Markdown; each thought in a collapsed `<details>` block; a reply's heading names
        its model by `names` (file name → the name the user knows, e.g. an Ollama tag for a sha256 blob)."""
        conversation = self.get_conversation(conversation_id)
        parts = [f"# {conversation.title or 'Untitled chat'}",
                 f"*Exported from Aha · created {_iso(conversation.created_at)}*"]
        parts += [_message_markdown(message, names or {}) for message in self._export_path(conversation, leaf_id)]
        return "\n\n".join(parts) + "\n"

    def _export_path(self, conversation: Conversation, leaf_id: int | None) -> list[Message]:
        leaf_id = leaf_id if leaf_id is not None else conversation.leaf_id
        return self.branch_path(leaf_id) if leaf_id is not None else []

    # --- runs -------------------------------------------------------------------------------------

    def create_run(self, kind: str, config: Mapping | None = None, dir: str | Path | None = None,
                   status: str = "created", pid: int | None = None) -> int:
        """A new run row; with `pid`, that process owns it from now (its heartbeat starts now)."""
        now = time.time()
        with self._write():
            table = self.db.table("runs")
            table.insert({"kind": kind, "config": _json(config), "status": status,
                          "dir": str(dir) if dir is not None else None, "created_at": now, "updated_at": now,
                          "pid": pid, "heartbeat_at": now if pid is not None else None})
            return table.last_pk

    def get_run(self, run_id: int) -> dict:
        """A run row: id, kind, status, dir, config (a dict), created_at, updated_at, pid, heartbeat_at, parent_id."""
        rows = self._rows("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise AhaError(f"run {run_id} does not exist; list runs with `aha runs list`")
        return _run(rows[0])

    def list_runs(self, kind: str | None = None, status: str | None = None) -> list[dict]:
        """Run rows as `get_run` gives them, newest first, optionally of one kind and/or status."""
        where, params = [], []
        for column, value in (("kind", kind), ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        return [_run(row) for row in self._rows(f"SELECT * FROM runs {clause} ORDER BY created_at DESC, id DESC",
                                                tuple(params))]

    def set_run_parent(self, run_id: int, parent_id: int | None) -> None:
        """Make `run_id` a child of `parent_id` (a stage of a pipeline run), or of none."""
        with self._write():
            self.db.execute("UPDATE runs SET parent_id = ? WHERE id = ?", (parent_id, run_id))

    def child_runs(self, parent_id: int) -> list[dict]:
        """The runs whose parent is `parent_id`, as `get_run` gives them, oldest first (a pipeline's stages in
        the order they started)."""
        return [_run(row) for row in self._rows("SELECT * FROM runs WHERE parent_id = ? ORDER BY created_at, id",
                                                (parent_id,))]

    def claim_run(self, run_id: int, pid: int | None = None) -> None:
        """The process `pid` (default: this one) now runs the run: status `running`, heartbeat now."""
        now = time.time()
        with self._write():
            self.db.execute("UPDATE runs SET status = 'running', pid = ?, heartbeat_at = ?, updated_at = ? "
                            "WHERE id = ?", (os.getpid() if pid is None else pid, now, now, run_id))

    def heartbeat(self, run_id: int) -> None:
        """Say the run's process is still alive: one small UPDATE. Call it every ≤ 30 s (STALE_AFTER_S is 120 s),
        from any thread; a thread that owns its own Store never waits on this one's lock."""
        with self._write():
            self.db.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ?", (time.time(), run_id))

    def recover_runs(self, stale_after_s: float = STALE_AFTER_S) -> list[int]:
        """Mark `crashed` the runs still `created` or `running` whose process is gone from this machine, or whose
        heartbeat (or, without one, last update) is older than `stale_after_s`; returns their ids. Either
        rule alone would miss a case: a pid can be reused by another program (the heartbeat then goes stale),
        and a run killed a moment ago still has a fresh heartbeat (its pid is then gone). Safe to call while
        other processes run jobs."""
        placeholders = ", ".join("?" for _ in ACTIVE_RUN_STATUSES)
        with self._write():
            now = time.time()
            rows = self.db.execute(f"SELECT id, pid, COALESCE(heartbeat_at, updated_at) FROM runs "
                                   f"WHERE status IN ({placeholders})", ACTIVE_RUN_STATUSES).fetchall()
            crashed = [run_id for run_id, pid, seen_at in rows
                       if (pid is not None and not process_alive(pid)) or now - seen_at > stale_after_s]
            for run_id in crashed:
                self.db.execute("UPDATE runs SET status = 'crashed', updated_at = ? WHERE id = ?", (now, run_id))
        return sorted(crashed)

    def run_artifacts(self, run_id: int) -> list[dict]:
        """The artifacts a run recorded, oldest first: id, kind, path, meta (a dict), created_at."""
        rows = self._rows("SELECT id, kind, path, meta, created_at FROM artifacts WHERE run_id = ? ORDER BY id",
                          (run_id,))
        return [{**row, "meta": json.loads(row["meta"])} for row in rows]

    def last_steps(self) -> dict[int, int]:
        """Each run's highest recorded metrics step (runs without metrics are left out)."""
        return {row["run_id"]: row["step"]
                for row in self._rows("SELECT run_id, MAX(step) AS step FROM metrics GROUP BY run_id")}

    def delete_run(self, run_id: int) -> None:
        """Delete a run's row with its metrics, samples and artifact records (the files are the caller's)."""
        self.get_run(run_id)
        with self._write():
            self.db.execute("DELETE FROM artifacts WHERE run_id = ?", (run_id,))
            self.db.execute("DELETE FROM runs WHERE id = ?", (run_id,))  # metrics and samples cascade

    def set_run_dir(self, run_id: int, directory: str | Path) -> None:
        with self._write():
            self.db.execute("UPDATE runs SET dir = ?, updated_at = ? WHERE id = ?", (str(directory), time.time(), run_id))

    def forget_steps_after(self, run_id: int, step: int) -> None:
        """Drop a run's metrics and samples of steps after `step` (recorded after the checkpoint a resume
        starts from; the resumed run records them again)."""
        with self._write():
            for table in ("samples", "metrics"):
                self.db.execute(f"DELETE FROM {table} WHERE run_id = ? AND step > ?", (run_id, step))

    def update_run_status(self, run_id: int, status: str) -> None:
        with self._write():
            self.db.execute("UPDATE runs SET status = ?, updated_at = ? WHERE id = ?",
                            (status, time.time(), run_id))

    def add_metrics(self, run_id: int, step: int, values: Mapping[str, float]) -> None:
        """Record metrics of one step; logging a step again (after a resume) replaces its values."""
        rows = [(run_id, step, name, float(value)) for name, value in values.items()]
        with self._write():
            self.db.conn.executemany(
                "INSERT OR REPLACE INTO metrics (run_id, step, name, value) VALUES (?, ?, ?, ?)", rows)

    def metric_names(self, run_id: int) -> list[str]:
        """The names of the metrics a run recorded, sorted."""
        return [row["name"] for row in self._rows("SELECT DISTINCT name FROM metrics WHERE run_id = ? ORDER BY name",
                                                  (run_id,))]

    def metric_series(self, run_id: int, name: str) -> list[tuple[int, float | None]]:
        rows = self._rows("SELECT step, value FROM metrics WHERE run_id = ? AND name = ? ORDER BY step",
                          (run_id, name))
        return [(row["step"], row["value"]) for row in rows]

    def add_sample(self, run_id: int, step: int, data: Mapping) -> int:
        with self._write():
            table = self.db.table("samples")
            table.insert({"run_id": run_id, "step": step, "data": _json(data), "created_at": time.time()})
            return table.last_pk

    def add_artifact(self, kind: str, path: str | Path, run_id: int | None = None,
                     meta: Mapping | None = None) -> int:
        with self._write():
            table = self.db.table("artifacts")
            table.insert({"run_id": run_id, "kind": kind, "path": str(path), "meta": _json(meta),
                          "created_at": time.time()})
            return table.last_pk


# --- streaming writes -----------------------------------------------------------------------------


class WriterState(enum.Enum):
    STREAMING = "streaming"
    FINISHED = "finished"


class MessageWriter:
    """Buffers a streaming reply and writes it in batches: on `append` once `flush_interval_s` has
    passed since the last write, and from a helper thread when text has waited `max_delay_s` (a
    stalled stream). Each write is one committed UPDATE, so a killed process loses at most the
    text of the last `max_delay_s`. Use as a context manager: an exception finishes it as `error`.
    """

    def __init__(self, store: Store, message_id: int, flush_interval_s: float = 0.25,
                 max_delay_s: float = 1.0):
        self.store, self.message_id = store, message_id
        self.flush_interval_s, self.max_delay_s = flush_interval_s, max_delay_s
        self.state = WriterState.STREAMING
        self.flushes = 0  # committed batches so far
        self._pending: dict[str, list[str]] = {"thinking": [], "answer": []}
        self._last_flush = time.monotonic()
        self._condition = threading.Condition()
        self._watcher: threading.Thread | None = None

    def append(self, kind: str, text: str) -> None:
        """Add a delta of kind "thinking" or "answer" (a `engine.think.Segment`'s kind and text)."""
        _check(kind, ("thinking", "answer"), "text kind")
        with self._condition:
            self._require_streaming("append")
            if not text:
                return
            self._pending[kind].append(text)
            if time.monotonic() - self._last_flush >= self.flush_interval_s:
                self._flush()
            else:
                self._watch()

    def flush(self) -> None:
        """Write buffered text now."""
        with self._condition:
            self._require_streaming("flush")
            self._flush()

    def finish(self, status: str = "complete", stats: Mapping | None = None) -> Message:
        """Write the rest, the final status (complete, stopped or error) and the stats, in one commit."""
        _check(status, FINAL_STATUSES, "final status")
        with self._condition:
            self._require_streaming("finish")
            thinking, answer = self._take_pending()
            self.store._finish_message(self.message_id, thinking, answer, status, stats)
            self.state = WriterState.FINISHED
            self._condition.notify_all()
        return self.store.get_message(self.message_id)

    def __enter__(self) -> MessageWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self.state is WriterState.FINISHED:
            return
        if exc is None:
            self.finish("complete")
        else:
            self.finish("error", {"error": f"{type(exc).__name__}: {exc}"})

    def _flush(self) -> None:
        thinking, answer = self._take_pending()
        if thinking or answer:
            self.store._append_text(self.message_id, thinking, answer)
            self.flushes += 1
        self._last_flush = time.monotonic()

    def _take_pending(self) -> tuple[str, str]:
        thinking, answer = "".join(self._pending["thinking"]), "".join(self._pending["answer"])
        self._pending = {"thinking": [], "answer": []}
        return thinking, answer

    def _watch(self) -> None:
        """Make sure the helper thread is there to flush text that waits too long."""
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch_loop, name=f"aha-writer-{self.message_id}",
                                             daemon=True)
            self._watcher.start()
        else:
            self._condition.notify()

    def _watch_loop(self) -> None:
        with self._condition:
            while self.state is WriterState.STREAMING:
                if not (self._pending["thinking"] or self._pending["answer"]):
                    self._condition.wait()
                    continue
                due_in = self._last_flush + self.max_delay_s - time.monotonic()
                if due_in > 0:
                    self._condition.wait(due_in)
                else:
                    self._flush()

    def _require_streaming(self, call: str) -> None:
        if self.state is not WriterState.STREAMING:
            raise RuntimeError(f"MessageWriter.{call}: expected state streaming, got {self.state.value}")


# --- export helpers -------------------------------------------------------------------------------


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _message_json(message: Message) -> dict:
    return {"id": message.id, "parent_id": message.parent_id, "role": message.role,
            "thinking": message.thinking, "content": message.content, "status": message.status,
            "model": message.model, "sampling": message.sampling, "stats": message.stats,
            "created_at": _iso(message.created_at)}


def _message_markdown(message: Message, names: Mapping[str, str]) -> str:
    heading = f"## {message.role.capitalize()}"
    if message.model:
        heading += f" · {names.get(message.model, message.model)}"
    parts = [heading]
    if message.thinking:
        parts.append(f"<details>\n<summary>{_thought_label(message)}</summary>\n\n"
                     f"{message.thinking.strip()}\n\n</details>")
    if message.content:
        parts.append(message.content.strip())
    if message.status != "complete":
        parts.append(f"*({message.status})*")
    return "\n\n".join(parts)


def _thought_label(message: Message) -> str:
    """'Thought for 12.3 s' when the stats carry `thinking_s`; a stopped thought says so."""
    seconds = message.stats.get("thinking_s")
    label = f"Thought for {seconds:.1f} s" if isinstance(seconds, int | float) else "Thought"
    return label + (" (stopped)" if message.status != "complete" and not message.content else "")
