"""Tokenizers: bytes, a character vocabulary (vocab.json) or a Hugging Face tokenizer.json, all streamed as text."""

import codecs
import json
from pathlib import Path

from .errors import XLDemoError, one_line

BYTES = "bytes"
# what tokenizers call their end-of-text token; the first one a vocabulary holds is the default EOS
EOS_NAMES = ("<|endoftext|>", "</s>", "[EOS]", "<eos>", "<|end_of_text|>")


class Tokenizer:
    """What the engine, the CLI and the app use: encode, decode, stream_decoder, vocab_size and eos_id
    (None where the tokenizer names no end-of-text token). name: what config.json's "tokenizer" holds for it."""
    name: str
    vocab_size: int
    eos_id: int | None = None

    def decode(self, ids) -> str:
        decoder = self.stream_decoder()
        return "".join(decoder.push(i) for i in ids) + decoder.flush()


class ByteTokenizer(Tokenizer):
    """Each byte is one token (ids 0-255)."""
    name = BYTES
    vocab_size = 256

    def encode(self, text: str | bytes) -> list[int]:
        return list(text.encode("utf-8") if isinstance(text, str) else text)

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


class VocabTokenizer(Tokenizer):
    """A character vocabulary, vocab.json: a JSON list whose entry i is token i's text. A prompt is encoded one
    character at a time; longer entries (special tokens such as "<eos>") are only ever generated."""
    name = "vocab.json"

    def __init__(self, pieces: list[str]):
        self.pieces, self.vocab_size = pieces, len(pieces)
        self._ids = {}
        for i, piece in enumerate(pieces):
            if len(piece) == 1 and piece in self._ids:  # two ids for one character: encoding would be ambiguous
                raise XLDemoError(f"vocab.json: {piece!r} is listed twice (ids {self._ids[piece]} and {i})")
            self._ids.setdefault(piece, i)
        self.eos_id = next((self._ids[n] for n in EOS_NAMES if n in self._ids), None)

    def encode(self, text: str | bytes) -> list[int]:
        text = _as_text(text)
        for position, char in enumerate(text):
            if char not in self._ids:
                raise XLDemoError(f"the prompt holds {char!r} (U+{ord(char):04X}, character {position + 1}), "
                                  f"which the model's vocabulary lacks")
        return [self._ids[char] for char in text]

    def stream_decoder(self) -> "PieceStream":
        return PieceStream(self.pieces)


class PieceStream:
    """Each id is its whole text at once."""

    def __init__(self, pieces: list[str]):
        self._pieces = pieces

    def push(self, token_id: int) -> str:
        return self._pieces[token_id] if 0 <= token_id < len(self._pieces) else "\ufffd"

    def flush(self) -> str:
        return ""


class TokenizerJson(Tokenizer):
    """A Hugging Face `tokenizers` tokenizer.json (BPE, WordPiece, Unigram)."""
    name = "tokenizer.json"

    def __init__(self, text: str):
        from tokenizers import Tokenizer as HFTokenizer  # only checkpoints with a tokenizer.json need the package

        try:
            self._tokenizer = HFTokenizer.from_str(text)
        except Exception as e:  # the Rust side reports a malformed file as a bare Exception
            raise XLDemoError(f"tokenizer.json: `tokenizers` cannot read it ({one_line(e)})") from None
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        # only special tokens: a BPE may have learnt "</s>" as ordinary text
        specials = {t.content: i for i, t in self._tokenizer.get_added_tokens_decoder().items() if t.special}
        self.eos_id = next((specials[n] for n in EOS_NAMES if n in specials), None)

    def encode(self, text: str | bytes) -> list[int]:
        # no special tokens: a prompt is text to continue, not a whole input to wrap in [CLS] ... [SEP]
        return self._tokenizer.encode(_as_text(text), add_special_tokens=False).ids

    def stream_decoder(self) -> "TextStream":
        return TextStream(self._tokenizer)


class TextStream:
    """Streams a tokenizer.json's text: each push decodes a short window of recent ids and gives the text beyond
    what was shown, unless it ends in U+FFFD (a character whose bytes have not all come). The window keeps the
    last ids shown, since decoders such as Metaspace and WordPiece write a token's text from its neighbours."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._ids, self._shown, self._context = [], "", 0

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        text = self._decode(self._ids)
        if len(text) <= len(self._shown) or text.endswith("\ufffd"):
            return ""
        new_context = len(self._ids) - self._context
        self._ids = self._ids[self._context:]
        self._context, piece, self._shown = new_context, text[len(self._shown):], self._decode(self._ids)
        return piece

    def flush(self) -> str:
        """Whatever an unfinished character leaves behind, as U+FFFD; the decoder starts afresh."""
        pending = self._decode(self._ids)[len(self._shown):]
        self._ids, self._shown, self._context = [], "", 0
        return pending

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False)


def load_tokenizer(name, folder: str | Path | None = None, num_tokens: int | None = None) -> Tokenizer:
    """config.json's "tokenizer": "bytes", or the name of a tokenizer file in the checkpoint's folder."""
    if name == BYTES:
        return ByteTokenizer()
    # a bare file name only: config.json may not reach outside its folder
    if not isinstance(name, str) or Path(name).name != name or folder is None or not (Path(folder) / name).is_file():
        raise XLDemoError(f"config.json: unknown tokenizer {name!r}: neither {BYTES!r} nor a file in the checkpoint's "
                          f"folder")
    return read_tokenizer(Path(folder) / name, num_tokens)


def read_tokenizer(path: str | Path, num_tokens: int | None = None) -> Tokenizer:
    """A tokenizer file, told apart by its content: a JSON list of strings is a vocab.json, a JSON object a
    tokenizer.json. With num_tokens, its vocabulary must be that size, one id per row of the model's logits."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except OSError as e:
        raise XLDemoError(f"tokenizer {path}: cannot read it ({e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise XLDemoError(f"tokenizer {path}: not valid JSON ({one_line(e)})") from None
    if isinstance(data, list) and all(isinstance(piece, str) for piece in data):
        tokenizer = VocabTokenizer(data)
    elif isinstance(data, dict) and "model" in data:
        tokenizer = TokenizerJson(text)
    else:
        raise XLDemoError(f"tokenizer {path}: neither a vocab.json (a JSON list of strings) nor a Hugging Face "
                          f"tokenizer.json (an object with a 'model')")
    if num_tokens is not None and tokenizer.vocab_size != num_tokens:
        raise XLDemoError(f"tokenizer {path.name}: {tokenizer.vocab_size} tokens, but the model has num_tokens="
                          f"{num_tokens}; they must be equal")
    return tokenizer


def _as_text(prompt: str | bytes) -> str:
    """A prompt given as bytes (a prompt file) read as UTF-8: only the byte tokenizer takes raw bytes."""
    if isinstance(prompt, str):
        return prompt
    try:
        return prompt.decode("utf-8")
    except UnicodeDecodeError as e:
        raise XLDemoError(f"the prompt is not UTF-8 text (byte {prompt[e.start]:#04x} at offset {e.start}), and "
                          f"this model's tokenizer reads text") from None
