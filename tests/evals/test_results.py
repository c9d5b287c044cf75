import json

import pytest

from dd_prompting.data import MalformedLineError
from dd_prompting.result_store import ResultStore


def _row(example_id, **extra):
    return {"cell": "c", "example_id": example_id, **extra}


def test_opening_cuts_a_torn_last_row_but_keeps_a_complete_one(tmp_path):
    torn = tmp_path / "torn.jsonl"
    torn.write_text(json.dumps(_row("a")) + "\n" + json.dumps(_row("b"))[:10])
    assert [row["example_id"] for row in ResultStore(torn).read()] == ["a"]
    whole = tmp_path / "whole.jsonl"
    whole.write_text(json.dumps(_row("a")) + "\n" + json.dumps(_row("b")))  # complete, only the newline missing
    store = ResultStore(whole)
    store.append(_row("c"))
    store.close()
    assert [row["example_id"] for row in store.read()] == ["a", "b", "c"]


def test_a_malformed_row_is_an_error_naming_it_unless_skipped(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(_row("a")) + "\n{garbled\n" + json.dumps(_row("b")) + "\n")
    with pytest.raises(MalformedLineError, match=r"results.jsonl:2: .*invalid JSON"):
        ResultStore(path).read()
    store = ResultStore(path, skip_malformed=True)
    assert [row["example_id"] for row in store.read()] == ["a", "b"] and [n for n, _ in store.skipped] == [2]


def test_rows_are_appended_from_many_threads(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    store = ResultStore(tmp_path / "out" / "results.jsonl")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: store.append(_row(str(i), path=tmp_path)), range(200)))
    store.close()
    rows = store.read()
    assert len(rows) == 200 and rows[0]["path"] == str(tmp_path)  # default=str for what JSON cannot hold
