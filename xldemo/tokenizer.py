"""Byte tokenizer: each byte is one token (ids 0-255), decoded as UTF-8 while streaming."""

import codecs

from .errors import XLDemoError


class ByteTokenizer:
    vocab_size = 256

    def encode(self, text: str | bytes) -> list[int]:
        return list(text.encode("utf-8") if isinstance(text, str) else text)

    def decode(self, ids) -> str:
        decoder = self.stream_decoder()
        return "".join(decoder.push(i) for i in ids) + decoder.flush()

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder()


class StreamDecoder:
    """Turns ids into text as they arrive: a character split over several bytes comes out once
    it is complete, and bytes that can never form UTF-8 come out as U+FFFD."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        if not 0 <= token_id < 256:  # a model's extra ids beyond the bytes (a padding or end token) are no text
            return self.flush() + "\ufffd"
        return self._decoder.decode(bytes((token_id,)))

    def flush(self) -> str:
        """Whatever an unfinished character leaves behind, as U+FFFD; the decoder starts afresh."""
        pending = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return pending


TOKENIZERS = {"bytes": ByteTokenizer}


def load_tokenizer(name: str):
    if name not in TOKENIZERS:
        raise XLDemoError(f"config.json: unknown tokenizer {name!r} (known: {', '.join(TOKENIZERS)})")
    return TOKENIZERS[name]()
