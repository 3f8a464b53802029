"""The SSE encoder against a parser written from the WHATWG spec."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tidings.sse import SSEParser, comment, encode

names = st.text(st.characters(blacklist_characters="\r\n\0", blacklist_categories=["Cs"]))
payloads = st.text(st.characters(blacklist_categories=["Cs"]))


@given(data=payloads, event=names.filter(bool), id=names)
def test_any_string_survives_encoding(data: str, event: str, id: str) -> None:
    parser = SSEParser()
    [msg] = parser.feed(encode(data, event=event, id=id))
    # The spec turns every CRLF / CR into LF inside data; nothing else changes.
    assert msg.data == data.replace("\r\n", "\n").replace("\r", "\n")
    assert msg.event == event
    assert msg.id == id


@given(data=st.lists(payloads, min_size=1, max_size=5), cut=st.integers(min_value=1, max_value=7))
def test_messages_survive_arbitrary_chunking(data: list[str], cut: int) -> None:
    wire = b"".join(encode(d, event="e", id=str(i)) for i, d in enumerate(data))
    parser = SSEParser()
    got = []
    for i in range(0, len(wire), cut):
        got += parser.feed(wire[i : i + cut])
    assert [m.data for m in got] == [d.replace("\r\n", "\n").replace("\r", "\n") for d in data]
    assert [m.id for m in got] == [str(i) for i in range(len(data))]


def test_data_lines_inside_payload_are_not_fields() -> None:
    [msg] = SSEParser().feed(encode("data: x\nevent: evil\nid: 9", event="ok", id="1"))
    assert (msg.event, msg.id, msg.data) == ("ok", "1", "data: x\nevent: evil\nid: 9")


def test_comments_and_retry() -> None:
    parser = SSEParser()
    assert parser.feed(comment("ping") + encode("x", retry=2500)) != []
    assert parser.comments == ["ping"]
    assert parser.retry == 2500


def test_crlf_split_across_chunks_is_one_line_break() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\ndata: b\r\n") == []
    [msg] = parser.feed(b"\r\n")
    assert msg.data == "a\nb"


def test_bom_and_multibyte_split() -> None:
    wire = "\ufeffdata: héllo ✓\n\n".encode()
    parser = SSEParser()
    got = []
    for b in wire:
        got += parser.feed(bytes([b]))
    assert [m.data for m in got] == ["héllo ✓"]


def test_encoder_rejects_line_breaks_in_id_and_event() -> None:
    import pytest

    with pytest.raises(ValueError):
        encode("x", id="1\n2")
    with pytest.raises(ValueError):
        encode("x", event="a\rb")
