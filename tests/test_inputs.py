"""The app's inputs: its own limits, and their conversion to GenerationSettings."""

import pytest

from xldemo.engine import GenerationSettings
from xldemo.errors import XLDemoError
from xldemo.web.inputs import (DATA_INPUTS, DEFAULTS, DRAWN_SEEDS, INPUTS, INSPECT_INPUTS, MAX_PROMPT_BYTES,
                               SAMPLING, check_prompt, escape_stop, parse_stop, read_upload, settings_from_inputs)


def inputs(**changes) -> dict:
    return {**DEFAULTS, "prompt": "x", **changes}


def test_every_sampling_input_is_a_generation_setting_and_its_default_is_valid():
    assert set(SAMPLING) <= set(GenerationSettings.__dataclass_fields__)
    for names in (INPUTS, DATA_INPUTS, INSPECT_INPUTS):
        assert names[0] == "prompt" and set(names[1:]) <= set(DEFAULTS)
    for name, spec in SAMPLING.items():
        assert spec.minimum <= spec.value <= spec.maximum, name
        settings_from_inputs(inputs(**{name: spec.minimum}))  # each end of each range is a valid setting
        settings_from_inputs(inputs(**{name: spec.maximum}))


def test_whole_numbers_arrive_as_floats_and_become_ints():
    settings = settings_from_inputs(inputs(max_new_tokens=12.0, top_k=3.0, seed=5.0, mem_len=7.0))
    assert (settings.max_new_tokens, settings.top_k, settings.seed, settings.mem_len) == (12, 3, 5, 7)
    assert isinstance(settings.max_new_tokens, int)
    with pytest.raises(XLDemoError, match="top_k must be an integer"):
        settings_from_inputs(inputs(top_k=2.5))


def test_seed_minus_one_is_drawn_small_enough_to_type_back():
    seeds = {settings_from_inputs(inputs(seed=-1)).seed for _ in range(20)}
    assert len(seeds) > 1 and all(0 <= s < DRAWN_SEEDS for s in seeds)
    assert settings_from_inputs(inputs(seed=0)).seed == 0


def test_stop_box_escapes_round_trip():
    for text in ("\n", "a\\b", "\t!", "\\n literally"):
        assert parse_stop(escape_stop(text)) == (text,)
    assert parse_stop("END\n\\n\\n") == ("END", "\n\n")
    assert parse_stop("") == () and parse_stop(None) == ()
    with pytest.raises(XLDemoError, match="At most 8"):
        parse_stop("\n".join("abcdefghi"))


def test_prompt_limits_are_in_bytes():
    assert check_prompt("abc") == "abc"
    check_prompt("é" * (MAX_PROMPT_BYTES // 2))
    with pytest.raises(XLDemoError, match="262,146 bytes"):
        check_prompt("é" * (MAX_PROMPT_BYTES // 2 + 1))
    for empty in ("", "  \n", None):
        with pytest.raises(XLDemoError, match="empty"):
            check_prompt(empty)
    with pytest.raises(XLDemoError, match="must be text"):
        check_prompt(3)


def test_uploads_must_be_small_utf8_text(tmp_path):
    (tmp_path / "ok.txt").write_text("Macbeth", encoding="utf-8")
    assert read_upload(str(tmp_path / "ok.txt")) == "Macbeth"
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(XLDemoError, match="not UTF-8"):
        read_upload(str(tmp_path / "latin1.txt"))
