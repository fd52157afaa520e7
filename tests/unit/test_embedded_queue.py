"""The embedded default's queue writes each message atomically (medparse/queue.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from medparse import queue


def _connection(folder: Path) -> Connection:
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "store_processed": False,
               "control_folder": str(folder / "control")}
    return Connection(transport=queue.AtomicFilesystemTransport, transport_options=options)


def test_a_message_is_never_listed_before_it_is_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen_at_rename: list[list[str]] = []
    real_replace = os.replace

    def watching_replace(src: Any, dst: Any) -> None:
        # kombu's reader takes any "<n>_<id>.<queue>.msg" it lists: none may exist before the rename.
        if Path(src).name.startswith("partial-"):  # ours (os is shared: kombu renames other files too)
            seen_at_rename.append([n for n in os.listdir(tmp_path) if n.endswith(".msg")])
        real_replace(src, dst)

    monkeypatch.setattr(queue.os, "replace", watching_replace)
    with _connection(tmp_path) as conn:
        q = conn.SimpleQueue("segmentation")
        q.put({"job": "a" * 10_000})
        assert seen_at_rename == [[]]
        assert q.get(timeout=1).payload == {"job": "a" * 10_000}
        q.close()
    assert [n for n in os.listdir(tmp_path) if n.startswith("partial-")] == []


def test_each_queue_folder_in_one_process_gets_its_own_messages(tmp_path: Path) -> None:
    # kombu records declared bindings once per process; they live in each folder's control folder.
    for name in ("first", "second"):
        folder = tmp_path / name
        folder.mkdir()
        with _connection(folder) as conn:
            q = conn.SimpleQueue("segmentation")
            q.put({"folder": name})
            assert q.get(timeout=1).payload == {"folder": name}
            q.close()
