import json
import logging
import threading

import pytest

from dd_prompting.data.jsonl import JsonlWriter, MalformedLineError, read_jsonl, repair_torn_tail, write_jsonl


def _lines(path, *records, tail=""):
    path.write_text("".join(json.dumps(record) + "\n" for record in records) + tail, encoding="utf-8")
    return path


def test_read_yields_line_numbers_and_objects_skipping_blank_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"n": 1}\n\n   \n{"n": 2}\n', encoding="utf-8")
    assert list(read_jsonl(path)) == [(1, {"n": 1}), (4, {"n": 2})]


def test_parse_converts_each_object(tmp_path):
    path = _lines(tmp_path / "a.jsonl", {"n": 1}, {"n": 2})
    assert list(read_jsonl(path, parse=lambda row: row["n"] * 10)) == [(1, 10), (2, 20)]


def test_a_missing_file_is_an_error_naming_it_at_the_call(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_jsonl(tmp_path / "nope.jsonl")  # not only at the first next()


def _reject_odd(row):
    if row["n"] % 2:
        raise ValueError(f"n must be even, got {row['n']}")
    return row


@pytest.mark.parametrize("line, reason", [
    ("{not json", r"invalid JSON \(Expecting property name enclosed in double quotes at column 2\)"),
    ('["a list"]', "expected a JSON object, got list"),
    ('{"n": 3}', "n must be even, got 3"),
])
def test_a_malformed_line_names_file_line_reason_and_the_way_out(tmp_path, line, reason):
    path = _lines(tmp_path / "a.jsonl", {"n": 2}, tail=line + "\n")
    with pytest.raises(MalformedLineError, match=rf"a.jsonl:2: not a valid record: {reason}\. Fix or delete the "
                                                 r"line, or read the file with skip_malformed=True") as info:
        list(read_jsonl(path, parse=_reject_odd))
    assert info.value.line == 2 and info.value.path == path


def test_a_type_error_in_parse_is_the_reason_too(tmp_path):
    path = _lines(tmp_path / "a.jsonl", {"n": "two"})
    with pytest.raises(MalformedLineError, match=r"a.jsonl:1: .*can only concatenate"):
        list(read_jsonl(path, parse=lambda row: row["n"] + 1))


def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"q": "ok"}\n{"q": "caf\xe9"}\n')  # Latin-1
    with pytest.raises(MalformedLineError, match=r"a.jsonl:2: .*not UTF-8 text \(byte 0xe9 at column 11\)"):
        list(read_jsonl(path))


def test_a_byte_order_mark_on_the_first_line_is_not_an_error(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes('{"n": 1}\n'.encode("utf-8-sig"))
    assert list(read_jsonl(path)) == [(1, {"n": 1})]


def test_skip_malformed_logs_and_counts_every_bad_line(tmp_path, caplog):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"n": 2}\n{broken\n[1]\n{"n": 3}\n\xff\n{"n": 4}\n')
    skipped = []
    with caplog.at_level(logging.WARNING, logger="dd_prompting.data.jsonl"):
        rows = list(read_jsonl(path, parse=_reject_odd, skip_malformed=True, skipped=skipped))
    assert rows == [(1, {"n": 2}), (6, {"n": 4})]
    assert [line for line, _ in skipped] == [2, 3, 4, 5]
    assert "not UTF-8" in skipped[3][1]
    assert [record.getMessage().split(":")[1] for record in caplog.records] == ["2", "3", "4", "5"]


def test_a_torn_last_line_gets_the_hint(tmp_path):
    path = _lines(tmp_path / "a.jsonl", {"n": 2}, tail='{"n": 4, "te')
    with pytest.raises(MalformedLineError, match="a.jsonl:2: .*cut short: was the run killed while writing it"):
        list(read_jsonl(path))


def test_repair_cuts_a_torn_last_line_and_keeps_complete_ones(tmp_path):
    path = _lines(tmp_path / "a.jsonl", {"n": 2}, {"n": 4}, tail='{"n": 6, "te')
    assert repair_torn_tail(path) is True
    assert [row for _, row in read_jsonl(path)] == [{"n": 2}, {"n": 4}]
    assert repair_torn_tail(path) is False  # nothing left to cut


def test_repair_keeps_a_complete_last_record_and_adds_its_newline(tmp_path):
    path = _lines(tmp_path / "a.jsonl", {"n": 2}, tail='{"n": 4}')
    assert repair_torn_tail(path) is False
    assert path.read_text() == '{"n": 2}\n{"n": 4}\n'


def test_repair_cuts_a_complete_last_line_that_parse_rejects(tmp_path):
    path = _lines(tmp_path / "a.jsonl", {"n": 2}, tail='{"n": 3}')
    assert repair_torn_tail(path, parse=_reject_odd) is True
    assert path.read_text() == '{"n": 2}\n'


def test_repair_finds_the_last_line_of_a_file_longer_than_one_block(tmp_path):
    path = _lines(tmp_path / "a.jsonl", *({"n": 2, "pad": "x" * 1000} for _ in range(200)), tail='{"n": ')
    assert repair_torn_tail(path) is True
    assert len(list(read_jsonl(path))) == 200
    only_torn = tmp_path / "b.jsonl"
    only_torn.write_text('{"n": "' + "x" * 70_000)
    assert repair_torn_tail(only_torn) is True and only_torn.read_bytes() == b""


def test_repair_of_a_missing_or_empty_file_does_nothing(tmp_path):
    assert repair_torn_tail(tmp_path / "nope.jsonl") is False
    (tmp_path / "empty.jsonl").write_text("")
    assert repair_torn_tail(tmp_path / "empty.jsonl") is False


def test_writer_appends_flushed_lines_opening_the_file_lazily(tmp_path):
    path = tmp_path / "sub" / "a.jsonl"
    writer = JsonlWriter(path)
    assert not path.exists()
    writer.write({"n": 1, "text": "naïve"})
    assert path.read_text(encoding="utf-8") == '{"n": 1, "text": "naïve"}\n'  # readable before close
    writer.write({"n": 2})
    writer.close()
    with JsonlWriter(path) as again:
        again.write({"n": 3})
    assert [row["n"] for _, row in read_jsonl(path)] == [1, 2, 3] and again.written == 1


def test_writer_repairs_a_torn_last_line_before_appending(tmp_path):
    path = _lines(tmp_path / "a.jsonl", {"n": 2}, tail='{"n": 4, "te')
    with JsonlWriter(path) as writer:
        writer.write({"n": 6})
    assert [row for _, row in read_jsonl(path)] == [{"n": 2}, {"n": 6}]


def test_writer_is_safe_to_share_between_threads(tmp_path):
    path = tmp_path / "a.jsonl"
    with JsonlWriter(path) as writer:
        threads = [threading.Thread(target=lambda t=t: [writer.write({"t": t, "i": i, "pad": "x" * 500})
                                                        for i in range(100)]) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    rows = [row for _, row in read_jsonl(path)]
    assert len(rows) == 800 and writer.written == 800
    assert {(row["t"], row["i"]) for row in rows} == {(t, i) for t in range(8) for i in range(100)}


def test_writer_refuses_a_record_that_is_not_an_object(tmp_path):
    with JsonlWriter(tmp_path / "a.jsonl") as writer, pytest.raises(TypeError, match="mapping"):
        writer.write(["a", "list"])


def test_writer_default_converts_values_json_cannot_hold(tmp_path):
    path = tmp_path / "a.jsonl"
    with JsonlWriter(path, default=str) as writer:
        writer.write({"path": tmp_path})
    assert list(read_jsonl(path)) == [(1, {"path": str(tmp_path)})]


def test_write_jsonl_replaces_the_whole_file(tmp_path):
    path = _lines(tmp_path / "a.jsonl", {"old": True})
    assert write_jsonl(path, [{"n": 1}, {"n": 2}]) == path
    assert [row for _, row in read_jsonl(path)] == [{"n": 1}, {"n": 2}]
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_write_jsonl_that_fails_midway_leaves_the_old_file_whole(tmp_path):
    path = _lines(tmp_path / "a.jsonl", {"old": True})

    def records():
        yield {"n": 1}
        raise RuntimeError("the producer broke")

    with pytest.raises(RuntimeError, match="producer"):
        write_jsonl(path, records())
    assert path.read_text() == '{"old": true}\n'
    assert list(tmp_path.iterdir()) == [path]
