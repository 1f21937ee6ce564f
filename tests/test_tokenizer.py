"""Tokenizers: bytes, character vocabularies and tokenizer.json files; split characters stream out whole."""

import json
import re
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors

from conftest import byte_level_bpe

from xldemo.errors import XLDemoError
from xldemo.tokenizer import ByteTokenizer, TokenizerJson, VocabTokenizer, load_tokenizer, read_tokenizer


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


# a character vocabulary (vocab.json) and Hugging Face tokenizer.json files

def vocab_file(tmp_path, pieces) -> Path:
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(pieces))
    return path


def test_character_vocabulary_encodes_each_character_and_names_the_end_token(tmp_path):
    tokenizer = read_tokenizer(vocab_file(tmp_path, ["<pad>", "a", "b", "é", "\n", "</s>"]))
    assert isinstance(tokenizer, VocabTokenizer) and tokenizer.vocab_size == 6 and tokenizer.eos_id == 5
    assert tokenizer.encode("abé\n") == [1, 2, 3, 4]
    assert tokenizer.encode("abé".encode()) == [1, 2, 3]  # a prompt file's bytes, read as UTF-8
    assert tokenizer.decode([1, 3, 5, 9]) == "aé</s>\ufffd"
    assert read_tokenizer(vocab_file(tmp_path, ["a", "b"])).eos_id is None


@pytest.mark.parametrize("prompt, message", [
    ("ab\tc", r"the prompt holds '\t' (U+0009, character 3), which the model's vocabulary lacks"),
    (b"a\xffb", "the prompt is not UTF-8 text (byte 0xff at offset 1)"),
])
def test_character_vocabulary_refuses_what_it_cannot_encode_in_one_line(tmp_path, prompt, message):
    tokenizer = read_tokenizer(vocab_file(tmp_path, ["a", "b", "c"]))
    with pytest.raises(XLDemoError) as error:
        tokenizer.encode(prompt)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def tokenizer_json(tmp_path, hf: HFTokenizer) -> TokenizerJson:
    hf.save(str(tmp_path / "tokenizer.json"))
    tokenizer = read_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(tokenizer, TokenizerJson)
    return tokenizer


def test_bpe_streams_a_character_only_once_all_its_tokens_have_come(tmp_path):
    tokenizer = tokenizer_json(tmp_path, byte_level_bpe("the quick brown fox jumps over the lazy dog " * 20))
    text = "the fox: é, 精霊 🌊 dog"
    ids = tokenizer.encode(text)
    decoder = tokenizer.stream_decoder()
    pieces = [decoder.push(i) for i in ids]
    assert "".join(pieces) + decoder.flush() == text == tokenizer.decode(ids)
    wave = tokenizer.encode("🌊")
    assert len(wave) == 4  # one token per byte: this BPE learnt no merge for it
    decoder = tokenizer.stream_decoder()
    assert [decoder.push(i) for i in wave] == ["", "", "", "🌊"]
    assert decoder.push(wave[0]) == "" and decoder.flush() == "\ufffd"  # a character cut short, at the end
    assert decoder.push(tokenizer.encode("d")[0]) == "d"  # and the decoder starts afresh


def test_bpe_end_token_is_the_special_one_and_prompts_get_no_special_tokens(tmp_path):
    hf = byte_level_bpe("a b c </s> " * 30)
    hf.post_processor = processors.TemplateProcessing(single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", 0)])
    tokenizer = tokenizer_json(tmp_path, hf)
    assert tokenizer.eos_id == 0  # "<|endoftext|>", the trainer's special token; "</s>" here is only text
    assert hf.encode("a b </s>").ids[-1] == 0 and 0 not in tokenizer.encode("a b </s>")


def test_wordpiece_streams_with_its_neighbours_context(tmp_path):
    """WordPiece writes "##ld" as "ld" after a word and a space before a word: a token's text depends on the one
    before, which the stream keeps."""
    hf = HFTokenizer(models.WordPiece({"[UNK]": 0, "hello": 1, "wor": 2, "##ld": 3, "[EOS]": 4}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.decoder = decoders.WordPiece()
    hf.add_special_tokens(["[EOS]"])
    tokenizer = tokenizer_json(tmp_path, hf)
    assert tokenizer.encode("hello world") == [1, 2, 3] and tokenizer.eos_id == 4
    decoder = tokenizer.stream_decoder()
    assert [decoder.push(i) for i in [1, 2, 3, 1]] == ["hello", " wor", "ld", " hello"]


@pytest.mark.parametrize("name, content, message", [
    ("sentencepiece", None, "unknown tokenizer 'sentencepiece'"),
    ("../vocab.json", None, "unknown tokenizer '../vocab.json'"),
    ("vocab.json", "[1, 2]", "neither a vocab.json"),
    ("vocab.json", '{"version": "1.0"}', "neither a vocab.json"),
    ("vocab.json", "[oops", "not valid JSON"),
    ("vocab.json", '["a", "b", "a"]', "'a' is listed twice (ids 0 and 2)"),
    ("vocab.json", '["a", "b"]', "vocab.json: 2 tokens, but the model has num_tokens=3; they must be equal"),
    ("tokenizer.json", '{"model": {"type": "nothing"}}', "`tokenizers` cannot read it"),
])
def test_bad_tokenizer_files_are_one_line_errors(tmp_path, name, content, message):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    if content is not None:
        (folder / name).write_text(content)
    (tmp_path / "vocab.json").write_text('["a", "b", "c"]')  # beside the folder, not in it
    with pytest.raises(XLDemoError, match=re.escape(message)) as error:
        load_tokenizer(name, folder, num_tokens=3)
    assert "\n" not in str(error.value)


def test_bytes_need_no_file_and_keep_their_extra_ids():
    assert isinstance(load_tokenizer("bytes", None, num_tokens=257), ByteTokenizer)
    assert ByteTokenizer().eos_id is None
