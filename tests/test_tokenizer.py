"""Byte tokens and streaming UTF-8: split characters come out whole, bad bytes as U+FFFD, never an error."""

from xldemo.tokenizer import ByteTokenizer


def stream(data: bytes) -> list[str]:
    decoder = ByteTokenizer().stream_decoder()
    return [decoder.push(b) for b in data] + [decoder.flush()]


def test_encode_is_bytes_and_round_trips():
    tokenizer = ByteTokenizer()
    text = "Ariel — 精霊 🌊"
    assert tokenizer.encode(text) == list(text.encode())
    assert tokenizer.encode(b"\xff\x00") == [255, 0]
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_split_characters_appear_once_complete():
    pieces = stream("é🌊".encode())
    assert pieces == ["", "é", "", "", "", "🌊", ""]


def test_invalid_bytes_become_replacement_characters():
    assert "".join(stream(b"a\xffb\xc3")) == "a\ufffdb\ufffd"
    assert "".join(stream(b"\xe2\x82")) == "\ufffd"
    data = bytes(range(256))
    assert "".join(stream(data)) == data.decode("utf-8", errors="replace")


def test_ids_beyond_the_bytes_are_one_replacement_character_each():
    # a checkpoint may have more ids than bytes (num_tokens 257 for an end token, say): no id may raise
    assert stream([0x68, 256, 0xC3, 300, 0x69]) == ["h", "\ufffd", "", "\ufffd\ufffd", "i", ""]
    assert ByteTokenizer().decode([0x68, 256, 0xC3]) == "h\ufffd\ufffd"
