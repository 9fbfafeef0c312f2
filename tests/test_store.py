"""The SQLite store on real files: migrations, branches, trash, search, export, runs, streaming writes
and what a SIGKILL mid-answer leaves behind."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import engine.store as store_module
from engine.errors import AhaError
from engine.store import SCHEMA_VERSION, Store, fts_query, group_by_conversation
from tests.support import platforms

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "aha.db") as opened:
        yield opened


def fts_is_consistent(store):
    store.db.execute("INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')")
    return True


def chat(store, title="Sums"):
    """A conversation with one question and one reasoned answer."""
    conversation = store.create_conversation(title, {"model": "r1-1.5b.gguf", "history": "strip"})
    user = store.add_message(conversation.id, None, "user", "What is 2+2?")
    answer = store.add_message(conversation.id, user.id, "assistant", "It is **4**.",
                               thinking="Two plus two makes four.", model="r1-1.5b",
                               sampling={"temperature": 0.6}, stats={"thinking_s": 3.24, "tokens": 17})
    return conversation, user, answer


# --- schema -----------------------------------------------------------------------------------------


def test_fresh_database_gets_the_latest_schema_in_wal_mode(tmp_path):
    with Store(tmp_path / "aha.db") as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
        assert {"conversations", "messages", "runs", "metrics", "samples", "artifacts",
                "messages_fts"} <= set(store.db.table_names())


OPEN_TOGETHER = """
import sys
from pathlib import Path
from engine.store import Store
folder, rounds = Path(sys.argv[1]), int(sys.argv[2])
print("ready", flush=True)
for round in range(rounds):
    while not (folder / f"go-{round}").exists():
        pass            # spin: the children open the store within microseconds of each other
    try:
        Store(folder / f"aha-{round}.db").close()
        print("opened", flush=True)
    except Exception as exc:
        print(f"failed: {exc}", flush=True)
"""


def test_processes_opening_a_new_store_together_all_get_it(tmp_path):
    """Two training ranks (or the window and a job) may open a store that does not exist yet at the same
    moment: each waits for the other instead of failing ("database is locked" from the switch to WAL)."""
    rounds, count = 20, 4
    children = [subprocess.Popen([sys.executable, "-c", OPEN_TOGETHER, str(tmp_path), str(rounds)], cwd=REPO,
                                 stdout=subprocess.PIPE, text=True) for _ in range(count)]
    try:
        assert [child.stdout.readline().strip() for child in children] == ["ready"] * count
        for round in range(rounds):
            (tmp_path / f"go-{round}").touch()
            assert [child.stdout.readline().strip() for child in children] == ["opened"] * count, round
            with Store(tmp_path / f"aha-{round}.db") as store:
                assert store.schema_version == SCHEMA_VERSION
                assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        for child in children:
            child.kill()
            child.wait()


def test_reopening_is_idempotent_and_keeps_data(tmp_path):
    with Store(tmp_path / "aha.db") as store:
        conversation, _, _ = chat(store)
    with Store(tmp_path / "aha.db") as store:
        assert store.migrate() == SCHEMA_VERSION
        assert [c.id for c in store.list_conversations()] == [conversation.id]


def test_pending_migrations_run_once_in_order(tmp_path, monkeypatch):
    Store(tmp_path / "aha.db").close()
    calls = []

    def add_notes(db):
        calls.append("v2")
        db.execute("ALTER TABLE conversations ADD COLUMN notes TEXT NOT NULL DEFAULT ''")

    monkeypatch.setattr(store_module, "MIGRATIONS", [*store_module.MIGRATIONS, add_notes])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    for _ in range(2):
        with Store(tmp_path / "aha.db") as store:
            assert store.schema_version == SCHEMA_VERSION + 1
            assert "notes" in store.db.table("conversations").columns_dict
    assert calls == ["v2"]


def test_a_database_from_a_newer_aha_is_refused(tmp_path):
    Store(tmp_path / "aha.db").close()
    connection = sqlite3.connect(tmp_path / "aha.db")
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    connection.close()
    with pytest.raises(AhaError, match="newer than this Aha knows"):
        Store(tmp_path / "aha.db")


def test_default_path_is_in_aha_home(tmp_path, monkeypatch):
    monkeypatch.setenv("AHA_HOME", str(tmp_path / "home"))
    with Store() as store:
        assert store.path == tmp_path / "home" / "aha.db"
        assert store.path.exists()


# --- conversations and branches -------------------------------------------------------------------


def test_conversation_fields_and_listing_order(store):
    first = store.create_conversation("First", {"history": "keep"})
    second = store.create_conversation("Second")
    assert first.settings == {"history": "keep"} and first.leaf_id is None and first.deleted_at is None
    assert [c.id for c in store.list_conversations()] == [second.id, first.id]
    store.rename_conversation(first.id, "Renamed")
    assert [c.title for c in store.list_conversations()] == ["Renamed", "Second"]
    store.update_settings(second.id, {"system": "Be brief."})
    assert store.get_conversation(second.id).settings == {"system": "Be brief."}
    with pytest.raises(AhaError, match="does not exist"):
        store.get_conversation(999)


def test_messages_keep_thinking_answer_stats_model_and_sampling_apart(store):
    conversation, user, answer = chat(store)
    assert answer.parent_id == user.id and answer.role == "assistant" and answer.status == "complete"
    assert (answer.content, answer.thinking) == ("It is **4**.", "Two plus two makes four.")
    assert answer.stats == {"thinking_s": 3.24, "tokens": 17}
    assert (answer.model, answer.sampling) == ("r1-1.5b", {"temperature": 0.6})
    assert store.get_conversation(conversation.id).leaf_id == answer.id
    with pytest.raises(ValueError, match="role"):
        store.add_message(conversation.id, None, "robot", "hi")
    with pytest.raises(ValueError, match="not in conversation"):
        other = store.create_conversation("Other")
        store.add_message(other.id, user.id, "assistant", "x")


def test_regenerate_and_edit_make_siblings_and_keep_the_old_branch(store):
    conversation, user, first = chat(store)
    writer = store.begin_assistant_message(conversation.id, user.id, model="r1-1.5b")
    writer.append("answer", "Four.")
    second = writer.finish("complete")
    assert [m.id for m in store.siblings(first.id)] == [first.id, second.id]
    assert [m.id for m in store.children(user.id)] == [first.id, second.id]
    assert store.get_conversation(conversation.id).leaf_id == second.id
    assert [m.id for m in store.branch_path(second.id)] == [user.id, second.id]
    assert store.get_message(first.id).content == "It is **4**."  # nothing overwritten

    follow_up = store.add_message(conversation.id, first.id, "user", "And 3+3?")
    assert [m.id for m in store.branch_path(follow_up.id)] == [user.id, first.id, follow_up.id]
    assert store.latest_leaf(user.id) == second.id  # the newest reply wins
    assert store.latest_leaf(first.id) == follow_up.id

    edited = store.add_message(conversation.id, None, "user", "What is 2+3?")
    assert [m.id for m in store.siblings(user.id)] == [user.id, edited.id]
    store.set_leaf(conversation.id, follow_up.id)
    assert store.get_conversation(conversation.id).leaf_id == follow_up.id
    assert fts_is_consistent(store)


def test_only_new_messages_and_renames_move_a_conversation_up(store):
    first, first_user, first_answer = chat(store, "First")
    second, _, _ = chat(store, "Second")

    def order():
        return [c.title for c in store.list_conversations()]

    def stamps():
        return {c.id: c.updated_at for c in store.list_conversations(include_deleted=True)}

    assert order() == ["Second", "First"]
    before = stamps()
    store.update_settings(first.id, {"history": "keep"})           # what opening a conversation may write
    store.set_leaf(first.id, first_user.id)                         # showing another branch
    store.delete_conversation(first.id)
    store.restore_conversation(first.id)                            # undo puts it back where it was
    assert order() == ["Second", "First"] and stamps() == before
    store.add_message(first.id, first_answer.id, "user", "And 3+3?", make_leaf=False)
    assert order() == ["First", "Second"]
    store.rename_conversation(second.id, "Renamed")
    assert order() == ["Renamed", "First"]
    writer = store.begin_assistant_message(first.id, first_user.id)  # a reply starts streaming in First,
    store.rename_conversation(second.id, "Renamed again")            # Second is renamed meanwhile,
    writer.finish("complete")                                        # and the reply's end counts last
    assert order() == ["First", "Renamed again"]


def test_search_hits_group_per_conversation(store):
    three, user, _ = chat(store, "Three")
    for _ in range(2):                                               # two regenerated replies: the same words
        store.add_message(three.id, user.id, "assistant", "It is 4.", thinking="Two plus two makes four.")
    one, _, _ = chat(store, "One")
    hits = store.search("makes")
    groups = group_by_conversation(hits)
    assert sorted((g.conversation_id, len(g.hits)) for g in groups) == sorted([(three.id, 3), (one.id, 1)])
    assert groups[0].hits[0] == hits[0]                              # the conversation of the best hit first
    for group in groups:                                             # each group in the order of the search
        assert list(group.hits) == [hit for hit in hits if hit.conversation_id == group.conversation_id]


def test_delete_hides_restore_brings_back_purge_removes(store):
    conversation, _, answer = chat(store)
    store.delete_conversation(conversation.id)
    assert store.list_conversations() == []
    assert store.search("four") == []
    assert store.list_conversations(include_deleted=True)[0].deleted_at is not None
    store.restore_conversation(conversation.id)
    assert [c.id for c in store.list_conversations()] == [conversation.id]
    assert store.search("four")

    store.delete_conversation(conversation.id)
    assert store.purge_deleted(older_than_s=3600) == 0
    assert store.purge_deleted() == 1
    assert store.list_conversations(include_deleted=True) == []
    with pytest.raises(AhaError):
        store.get_message(answer.id)
    assert fts_is_consistent(store)


# --- search -----------------------------------------------------------------------------------------


def test_search_finds_words_in_thinking_and_in_answers(store):
    conversation, user, answer = chat(store)
    hits = store.search("makes")
    assert [(h.conversation_id, h.message_id) for h in hits] == [(conversation.id, answer.id)]
    assert "[makes]" in hits[0].snippet
    assert [h.message_id for h in store.search("2+2")] == [user.id]
    assert [h.message_id for h in store.search("It")] == [answer.id]
    assert [h.message_id for h in store.search("fou")] == [answer.id]  # prefix, as you type
    assert store.search("four missingword") == []  # every word must match


@pytest.mark.parametrize("query", ['"', "-foo", "AND", "", "   ", "NOT OR", 'a"b', "(", "*", "NEAR(x",
                                  "content:four", "^four", "'; DROP TABLE messages; --", "🤔"])
def test_odd_search_queries_do_not_raise(store, query):
    chat(store)
    assert isinstance(store.search(query), list)


def test_fts_query_quotes_every_word():
    assert fts_query('say "hi" -now AND') == '"say"* """hi"""* "-now"* "AND"*'
    assert fts_query(' " - * ') == ""


def test_streaming_messages_are_indexed_once_finished(store):
    conversation, user, _ = chat(store)
    writer = store.begin_assistant_message(conversation.id, user.id, flush_interval_s=0)
    writer.append("thinking", "zebra crossing")
    assert store.get_message(writer.message_id).thinking == "zebra crossing"
    assert store.search("zebra") == []
    writer.finish("stopped")
    assert [h.message_id for h in store.search("zebra")] == [writer.message_id]
    assert fts_is_consistent(store)


# --- export -----------------------------------------------------------------------------------------


def test_export_json_has_reasoning_as_its_own_field(store):
    conversation, user, answer = chat(store)
    exported = store.export_json(conversation.id)
    json.dumps(exported)  # serializable as is
    assert exported["title"] == "Sums" and exported["settings"]["history"] == "strip"
    assert [m["id"] for m in exported["messages"]] == [user.id, answer.id]
    assistant = exported["messages"][1]
    assert assistant["thinking"] == "Two plus two makes four."
    assert assistant["content"] == "It is **4**."
    assert assistant["sampling"] == {"temperature": 0.6} and assistant["status"] == "complete"


def test_export_follows_the_shown_branch(store):
    conversation, user, first = chat(store)
    second = store.add_message(conversation.id, user.id, "assistant", "Four.")
    assert [m["id"] for m in store.export_json(conversation.id)["messages"]] == [user.id, second.id]
    assert [m["id"] for m in store.export_json(conversation.id, leaf_id=first.id)["messages"]] == [
        user.id, first.id]
    assert store.export_json(store.create_conversation("Empty").id)["messages"] == []


def test_export_markdown_folds_the_thought(store):
    conversation, _, _ = chat(store)
    stopped = store.add_message(conversation.id, store.get_conversation(conversation.id).leaf_id, "assistant",
                                thinking="Hmm, let me", status="stopped")
    markdown = store.export_markdown(conversation.id, leaf_id=stopped.id)
    assert markdown.startswith("# Sums\n")
    assert "## User\n\nWhat is 2+2?" in markdown
    assert ("## Assistant · r1-1.5b\n\n<details>\n<summary>Thought for 3.2 s</summary>\n\n"
            "Two plus two makes four.\n\n</details>\n\nIt is **4**.") in markdown
    assert "<summary>Thought (stopped)</summary>" in markdown and "*(stopped)*" in markdown
    named = store.export_markdown(conversation.id, leaf_id=stopped.id, names={"r1-1.5b": "deepseek-r1:1.5b"})
    assert "## Assistant · deepseek-r1:1.5b\n" in named and "r1-1.5b" not in named  # the name the user knows


# --- runs -------------------------------------------------------------------------------------------


def test_runs_metrics_samples_artifacts(store, tmp_path):
    run_id = store.create_run("grpo", {"learning_rate": 1e-5}, dir=tmp_path / "runs" / "1")
    store.update_run_status(run_id, "running")
    run = store.get_run(run_id)
    assert (run["kind"], run["status"], run["config"]) == ("grpo", "running", {"learning_rate": 1e-5})
    store.add_metrics(run_id, 1, {"reward": 0.5, "kl": 0.01})
    store.add_metrics(run_id, 2, {"reward": 0.75})
    store.add_metrics(run_id, 2, {"reward": 0.8})  # a resumed run logs step 2 again
    assert store.metric_series(run_id, "reward") == [(1, 0.5), (2, 0.8)]
    assert store.add_sample(run_id, 2, {"completion": "<think>…</think>4", "reward": 1.0}) > 0
    store.add_sample(run_id, 1, {"completion": "3"})
    store.forget_steps_after(run_id, 1)  # a resume from step 1's checkpoint
    assert store.metric_series(run_id, "reward") == [(1, 0.5)]
    assert [row["step"] for row in store.db.query("SELECT step FROM samples WHERE run_id = ?", [run_id])] == [1]
    store.set_run_dir(run_id, tmp_path / "elsewhere")
    assert store.get_run(run_id)["dir"] == str(tmp_path / "elsewhere")
    artifact_id = store.add_artifact("gguf", tmp_path / "model.gguf", run_id=run_id, meta={"quant": "Q4_K_M"})
    assert store.add_artifact("modelfile", tmp_path / "Modelfile") > artifact_id
    row = store.db.table("artifacts").get(artifact_id)
    assert (row["run_id"], json.loads(row["meta"])) == (run_id, {"quant": "Q4_K_M"})


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_version_1_database_gains_pid_and_heartbeat_and_keeps_its_runs(tmp_path, monkeypatch):
    """A store written before runs had a process: the migration adds pid and heartbeat_at (empty on old rows),
    every other run field stays."""
    with monkeypatch.context() as patched:
        patched.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:1])
        patched.setattr(store_module, "SCHEMA_VERSION", 1)
        with Store(tmp_path / "aha.db") as old:  # the insert of that version's create_run
            assert "pid" not in old.db.table("runs").columns_dict
            run_id = old.db.execute("INSERT INTO runs (kind, config, status, dir, created_at, updated_at) "
                                    "VALUES ('grpo', '{\"max_steps\": 4}', 'complete', ?, 1, 2)",
                                    (str(tmp_path / "run"),)).lastrowid
            old.db.conn.commit()
    with Store(tmp_path / "aha.db") as store:
        assert store.schema_version == SCHEMA_VERSION
        run = store.get_run(run_id)
        assert (run["kind"], run["status"], run["config"], run["dir"]) == ("grpo", "complete", {"max_steps": 4},
                                                                           str(tmp_path / "run"))
        assert (run["pid"], run["heartbeat_at"]) == (None, None)
        assert store.recover_runs() == []  # a finished run is never touched


def test_a_version_2_database_gains_run_parents_and_a_pipeline_lists_its_stages(tmp_path, monkeypatch):
    """Migration 3 adds runs.parent_id (empty on old rows); child_runs lists a parent's runs oldest first, and
    deleting the parent keeps its children, parentless."""
    with monkeypatch.context() as patched:
        patched.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:2])
        patched.setattr(store_module, "SCHEMA_VERSION", 2)
        with Store(tmp_path / "aha.db") as old:
            assert "parent_id" not in old.db.table("runs").columns_dict
            old_run = old.create_run("grpo", {"max_steps": 4}, status="complete")
    with Store(tmp_path / "aha.db") as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.get_run(old_run)["parent_id"] is None
        pipeline = store.create_run("pipeline", status="running")
        stages = [store.create_run(kind, status="complete") for kind in ("distill-sft", "grpo", "generate")]
        for stage in reversed(stages):  # the order they were made in, whatever order they were adopted in
            store.set_run_parent(stage, pipeline)
        assert [run["id"] for run in store.child_runs(pipeline)] == stages
        assert [run["parent_id"] for run in store.child_runs(pipeline)] == [pipeline] * 3
        assert store.child_runs(old_run) == []
        store.delete_run(pipeline)
        assert [store.get_run(stage)["parent_id"] for stage in stages] == [None, None, None]


def test_claim_and_heartbeat_record_the_process(store):
    run_id = store.create_run("grpo", status="created")
    before = time.time()
    store.claim_run(run_id)
    run = store.get_run(run_id)
    assert (run["status"], run["pid"]) == ("running", os.getpid()) and run["heartbeat_at"] >= before
    store.db.execute("UPDATE runs SET heartbeat_at = 1 WHERE id = ?", (run_id,))
    store.db.conn.commit()
    store.heartbeat(run_id)
    assert store.get_run(run_id)["heartbeat_at"] >= before
    store.claim_run(run_id, pid=4242)
    assert store.get_run(run_id)["pid"] == 4242


def test_recover_marks_a_run_whose_process_is_gone_crashed(store):
    """Killed a moment ago: its heartbeat is fresh, its pid gone. recover() (the window's start) does it too."""
    run_id = store.create_run("grpo")
    store.claim_run(run_id, pid=dead_pid())
    live = store.create_run("distill-sft")
    store.claim_run(live)  # this test's own process: alive, heartbeat fresh
    assert store.recover_runs() == [run_id]
    assert (store.get_run(run_id)["status"], store.get_run(live)["status"]) == ("crashed", "running")
    assert store.recover_runs() == []
    other = store.create_run("distill-kd", pid=dead_pid())  # created, its process died while loading
    assert store.recover() == []  # the ids of stopped chat replies; the run is recovered all the same
    assert store.get_run(other)["status"] == "crashed"


def test_a_stale_heartbeat_is_crashed_even_when_the_pid_lives(store):
    """A pid can be reused by another program: a run that stopped beating for STALE_AFTER_S is crashed; one
    that beats stays running. A run without a process that has not moved for as long is crashed too."""
    stale, beating, idle, fresh = (store.create_run("grpo") for _ in range(4))
    for run_id in (stale, beating):
        store.claim_run(run_id)
    long_ago = time.time() - store_module.STALE_AFTER_S - 5
    store.db.execute("UPDATE runs SET heartbeat_at = ? WHERE id IN (?, ?)", (long_ago, stale, beating))
    store.db.execute("UPDATE runs SET updated_at = ? WHERE id = ?", (long_ago, idle))
    store.db.conn.commit()
    store.heartbeat(beating)
    assert store.recover_runs() == [stale, idle]
    assert [store.get_run(run_id)["status"] for run_id in (stale, beating, idle, fresh)] == [
        "crashed", "running", "crashed", "created"]


def test_heartbeats_from_another_thread_with_its_own_store(tmp_path):
    """The job's heartbeat thread opens its own Store and beats while the main thread writes metrics."""
    with Store(tmp_path / "aha.db") as store:
        run_id = store.create_run("grpo")
        store.claim_run(run_id)
        beats: list[float] = []

        def beat() -> None:
            with Store(tmp_path / "aha.db") as own:
                for _ in range(20):
                    own.heartbeat(run_id)
                    beats.append(own.get_run(run_id)["heartbeat_at"])

        worker = threading.Thread(target=beat)
        worker.start()
        for step in range(20):
            store.add_metrics(run_id, step, {"loss": 1.0 / (step + 1)})
        worker.join()
        assert len(beats) == 20 and beats == sorted(beats)
        assert store.get_run(run_id)["heartbeat_at"] == beats[-1]
        assert store.last_steps() == {run_id: 19}


def test_list_runs_newest_first_with_filters_artifacts_and_delete(store, tmp_path):
    first = store.create_run("grpo", {"model": "a"}, status="complete")
    second = store.create_run("distill-sft", status="crashed")
    third = store.create_run("grpo", status="crashed")
    assert [run["id"] for run in store.list_runs()] == [third, second, first]
    assert [run["id"] for run in store.list_runs(kind="grpo")] == [third, first]
    assert [run["id"] for run in store.list_runs(status="crashed")] == [third, second]
    assert [run["id"] for run in store.list_runs(kind="grpo", status="complete")] == [first]
    assert store.list_runs(kind="export") == []
    assert store.list_runs()[-1]["config"] == {"model": "a"}
    assert set(store.list_runs()[0]) == {"id", "kind", "status", "dir", "config", "created_at", "updated_at",
                                        "pid", "heartbeat_at", "parent_id"}
    store.add_artifact("checkpoint", tmp_path / "step-1", run_id=first, meta={"step": 1})
    store.add_artifact("adapter", tmp_path / "final", run_id=first)
    store.add_artifact("gguf", tmp_path / "other.gguf")
    assert [(artifact["kind"], artifact["meta"]) for artifact in store.run_artifacts(first)] == [
        ("checkpoint", {"step": 1}), ("adapter", {})]
    store.add_metrics(first, 1, {"reward": 0.5})
    store.add_sample(first, 1, {"completion": "4"})
    store.delete_run(first)
    assert [run["id"] for run in store.list_runs()] == [third, second]
    assert store.run_artifacts(first) == [] and store.metric_series(first, "reward") == []
    assert store.db.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 0
    assert store.db.execute("SELECT COUNT(*) FROM artifacts").fetchone()[0] == 1  # another run's (none) stays
    with pytest.raises(AhaError, match="run 999 does not exist"):
        store.delete_run(999)


# --- streaming writes ---------------------------------------------------------------------------------


def test_writer_batches_deltas_into_few_updates(store):
    conversation, user, _ = chat(store)
    writer = store.begin_assistant_message(conversation.id, user.id, flush_interval_s=60, max_delay_s=60)
    for index in range(100):
        writer.append("thinking" if index < 50 else "answer", f"t{index} ")
    assert writer.flushes == 0
    assert store.get_message(writer.message_id).status == "streaming"
    message = writer.finish("complete", {"tokens": 100})
    assert message.thinking == "".join(f"t{i} " for i in range(50))
    assert message.content == "".join(f"t{i} " for i in range(50, 100))
    assert (message.status, message.stats) == ("complete", {"tokens": 100})


def test_writer_flushes_on_append_after_the_interval(store):
    conversation, user, _ = chat(store)
    writer = store.begin_assistant_message(conversation.id, user.id, flush_interval_s=0.05, max_delay_s=60)
    writer.append("answer", "a")
    time.sleep(0.06)
    writer.append("answer", "b")
    assert writer.flushes == 1
    assert store.get_message(writer.message_id).content == "ab"
    writer.finish()


def test_writer_flushes_a_stalled_stream_within_max_delay(store):
    conversation, user, _ = chat(store)
    writer = store.begin_assistant_message(conversation.id, user.id, flush_interval_s=60, max_delay_s=0.1)
    writer.append("answer", "waiting")
    deadline = time.monotonic() + 2
    while store.get_message(writer.message_id).content != "waiting" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert store.get_message(writer.message_id).content == "waiting"
    writer.finish()


class ModelCrashed(Exception):
    pass


def test_writer_states_and_context_manager(store):
    conversation, user, _ = chat(store)
    with pytest.raises(ModelCrashed):
        with store.begin_assistant_message(conversation.id, user.id) as writer:
            writer.append("answer", "partial")
            raise ModelCrashed("llama_decode returned -1")
    message = store.get_message(writer.message_id)
    assert (message.content, message.status) == ("partial", "error")
    assert message.stats["error"] == "ModelCrashed: llama_decode returned -1"
    with pytest.raises(RuntimeError, match="expected state streaming, got finished"):
        writer.append("answer", "more")
    with pytest.raises(RuntimeError, match="expected state streaming, got finished"):
        writer.finish()
    with pytest.raises(ValueError, match="final status"):
        store.begin_assistant_message(conversation.id, user.id).finish("streaming")


def test_writer_works_from_another_thread(store):
    conversation, user, _ = chat(store)
    writer = store.begin_assistant_message(conversation.id, user.id, flush_interval_s=0)
    worker = threading.Thread(target=lambda: [writer.append("answer", "x") for _ in range(50)])
    worker.start()
    while worker.is_alive():
        store.list_conversations()  # the GUI thread reads meanwhile
    worker.join()
    assert writer.finish().content == "x" * 50


def test_recover_marks_leftover_streaming_rows_stopped(tmp_path):
    with Store(tmp_path / "aha.db") as store:
        conversation, user, _ = chat(store)
        writer = store.begin_assistant_message(conversation.id, user.id, flush_interval_s=0)
        writer.append("thinking", "half a thought")
    with Store(tmp_path / "aha.db") as store:
        assert store.recover() == [writer.message_id]
        message = store.get_message(writer.message_id)
        assert (message.thinking, message.status) == ("half a thought", "stopped")
        assert store.recover() == []
        assert [h.message_id for h in store.search("thought")] == [writer.message_id]


CHILD = """
import sys, time
from engine.store import Store
store = Store()
conversation = store.create_conversation("crash")
user = store.add_message(conversation.id, None, "user", "Count.")
writer = store.begin_assistant_message(conversation.id, user.id, model="test")
print("message", writer.message_id, flush=True)
index = 0
while True:
    writer.append("thinking" if index < 100 else "answer", f"t{index} ")
    print(index, time.monotonic(), writer.flushes, flush=True)
    index += 1
    time.sleep(0.005)  # about 200 tokens per second
"""


@platforms.posix_signals
def test_sigkill_mid_answer_loses_at_most_the_last_second(tmp_path):
    env = {**os.environ, "AHA_HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True, env=env,
                             cwd=REPO)
    try:
        message_id = int(child.stdout.readline().split()[1])
        produced = []  # (token index, monotonic time it was appended)
        while len(produced) < 320:  # ~1.6 s: well into the answer, several flushes done
            index, stamp, _ = child.stdout.readline().split()
            produced.append((int(index), float(stamp)))
        child.send_signal(signal.SIGKILL)
        rest = [line.split() for line in child.stdout if line.endswith("\n")]  # a line cut by the kill: dropped
        produced += [(int(fields[0]), float(fields[1])) for fields in rest if len(fields) == 3]
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL

    connection = sqlite3.connect(tmp_path / "aha.db")
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    connection.close()
    with Store(tmp_path / "aha.db") as store:
        assert store.get_message(message_id).status == "streaming"
        assert store.recover() == [message_id]
        message = store.get_message(message_id)
        assert fts_is_consistent(store)
    assert message.status == "stopped"

    saved = (message.thinking + message.content).split()
    assert saved == [f"t{i}" for i in range(len(saved))]  # a prefix of what was generated
    assert message.thinking == "".join(f"t{i} " for i in range(min(len(saved), 100)))
    # On the child's own clock (a loaded machine delays the parent's reading, not the child's writes): every
    # token appended more than 1 s before the last one it printed was committed.
    last_stamp = produced[-1][1]
    old_enough = [index for index, stamp in produced if stamp <= last_stamp - 1.0]
    assert len(saved) >= max(old_enough) + 1, (len(saved), max(old_enough) + 1, len(produced))
    assert len(saved) > 100  # killed mid-answer, not mid-thought


def test_a_store_that_cannot_be_opened_says_so_in_one_line_and_leaves_the_file(tmp_path):
    damaged = tmp_path / "aha.db"
    damaged.write_bytes(b"this is not an SQLite file" * 100)
    with pytest.raises(AhaError, match=r"^the conversation store .*aha\.db is damaged \(file is not a database\); "
                                       r"move it aside") as caught:
        Store(damaged)
    assert "\n" not in str(caught.value) and damaged.read_bytes() == b"this is not an SQLite file" * 100
    with pytest.raises(AhaError, match=r"^cannot open the conversation store .*missing.*; check that its folder "
                                       r"exists and is writable"):
        Store(tmp_path / "missing" / "aha.db")


# --- removing thinking ------------------------------------------------------------------------------


def test_remove_thinking_keeps_it_aside_and_restore_puts_it_back(store):
    conversation, user, answer = chat(store)
    second = store.add_message(conversation.id, answer.id, "user", "And 3+3?")
    reply = store.add_message(conversation.id, second.id, "assistant", "6", thinking="Three and three: six.")
    branch = store.add_message(conversation.id, second.id, "assistant", "Six", thinking="3+3 is 6.")
    plain = store.add_message(conversation.id, branch.id, "assistant", "No thought here.")
    other, _, other_answer = chat(store, "Other")
    assert store.removed_thinking_count(conversation.id) == 0

    assert store.remove_thinking(conversation.id) == 3               # every branch; a reply without one is left
    assert [store.get_message(m.id).thinking for m in (answer, reply, branch, plain)] == ["", "", "", ""]
    assert store.get_message(answer.id).content == "It is **4**."  # the answers stay
    assert store.removed_thinking_count(conversation.id) == 3
    assert store.removed_thinking_ids(conversation.id) == {answer.id, reply.id, branch.id}
    assert store.get_message(other_answer.id).thinking == "Two plus two makes four."  # another chat is untouched
    assert store.removed_thinking_count(other.id) == 0
    assert [hit.message_id for hit in store.search("three")] == []   # the search no longer finds a removed thought
    assert "<details>" not in store.export_markdown(conversation.id)
    assert store.remove_thinking(conversation.id) == 0               # nothing left to remove
    assert store.removed_thinking_count(conversation.id) == 3

    assert store.restore_thinking(conversation.id) == 3
    assert store.get_message(answer.id).thinking == "Two plus two makes four."
    assert store.get_message(reply.id).thinking == "Three and three: six."
    assert store.get_message(branch.id).thinking == "3+3 is 6."
    assert store.get_message(plain.id).thinking == ""
    assert store.removed_thinking_count(conversation.id) == 0 and store.removed_thinking_ids(conversation.id) == set()
    assert [hit.message_id for hit in store.search("three")] == [reply.id]
    assert store.restore_thinking(conversation.id) == 0
    assert fts_is_consistent(store)


def test_remove_thinking_leaves_a_streaming_reply_and_later_removals_add_to_the_archive(store):
    conversation, user, answer = chat(store)
    writer = store.begin_assistant_message(conversation.id, answer.id)
    writer.append("thinking", "Still thinking…")
    writer.flush()
    assert store.remove_thinking(conversation.id) == 1
    assert store.get_message(writer.message_id).thinking == "Still thinking…"
    writer.append("answer", "Done.")
    finished = writer.finish()
    assert store.remove_thinking(conversation.id) == 1               # the now finished reply joins the archive
    assert store.removed_thinking_count(conversation.id) == 2
    assert store.restore_thinking(conversation.id) == 2
    assert store.get_message(finished.id).thinking == "Still thinking…"
    assert store.get_message(answer.id).thinking == "Two plus two makes four."


def test_remove_thinking_is_one_transaction(store, monkeypatch):
    """A failure half-way (here: the UPDATE after the archive INSERT) leaves both the thoughts and the archive
    as they were."""
    conversation, _, answer = chat(store)
    real_execute = store.db.execute

    def failing_update(sql, *args):
        if sql.lstrip().startswith("UPDATE messages SET thinking = ''"):
            raise sqlite3.OperationalError("disk I/O error")
        return real_execute(sql, *args)

    monkeypatch.setattr(store.db, "execute", failing_update)
    with pytest.raises(sqlite3.OperationalError):
        store.remove_thinking(conversation.id)
    monkeypatch.undo()
    assert store.get_message(answer.id).thinking == "Two plus two makes four."
    assert store.removed_thinking_count(conversation.id) == 0


def test_purging_a_conversation_deletes_its_removed_thinking(store):
    conversation, _, _ = chat(store)
    other, _, _ = chat(store, "Other")
    store.remove_thinking(conversation.id)
    store.remove_thinking(other.id)
    store.delete_conversation(conversation.id)                       # the trash keeps it, for an undo
    assert store.removed_thinking_count(conversation.id) == 1
    assert store.purge_deleted() == 1
    assert store.db.execute("SELECT COUNT(*) FROM removed_thinking").fetchone()[0] == 1  # only the other's
    assert store.removed_thinking_count(other.id) == 1


def test_a_version_3_database_gains_the_removed_thinking_table(tmp_path, monkeypatch):
    with monkeypatch.context() as patched:
        patched.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:3])
        patched.setattr(store_module, "SCHEMA_VERSION", 3)
        with Store(tmp_path / "aha.db") as old:
            assert "removed_thinking" not in old.db.table_names()
            conversation, _, answer = chat(old)
    with Store(tmp_path / "aha.db") as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.remove_thinking(conversation.id) == 1
        assert store.restore_thinking(conversation.id) == 1
        assert store.get_message(answer.id).thinking == "Two plus two makes four."
