"""The example record: round trips and validation errors that name the record and field."""

from __future__ import annotations

import pytest

from r1ov_jax.data.formalize import generate
from r1ov_jax.data.record import Record, RecordError

PNG = generate("table", 0).images[0]


def _rec(**kw):
    base = dict(
        id="x1",
        images=[PNG],
        formal="a,b",
        question="q?",
        answer="3",
        choices=None,
        trace=None,
        meta={"type": "t", "level": "College"},
    )
    base.update(kw)
    return Record(**base)


def test_round_trips_dict_and_bytes():
    rec = generate("scene", 5)
    rec.trace = "<think>x</think><answer>1</answer>"
    assert Record.from_dict(rec.to_dict()) == rec
    assert Record.from_bytes(rec.to_bytes()) == rec
    mc = _rec(choices=["1", "2", "3"], answer="B")
    assert Record.from_bytes(mc.to_bytes()) == mc
    assert mc.prompt_text() == "q?\nChoices:\nA. 1\nB. 2\nC. 3"


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(id=""), "'id'"),
        (dict(images=[b"not an image"]), r"images\[0\] is not PNG"),
        (dict(images="x"), "'images' must be a list"),
        (dict(answer="  "), "'answer' is empty"),
        (dict(question=""), "'question' is empty"),
        (dict(choices=["only one"]), "2..26 options"),
        (dict(choices=[1, 2]), "'choices' must be a list of str"),
        (dict(meta={"x": object()}), "not JSON-serializable"),
        (dict(meta={"x": float("nan")}), "not JSON-serializable"),
        (dict(trace=5), "'trace' must be a str"),
    ],
)
def test_validation_names_record_and_field(kw, match):
    with pytest.raises(RecordError, match=match) as e:
        _rec(**kw).validate()
    assert "record" in str(e.value)


def test_from_dict_and_from_bytes_reject_malformed_input():
    d = _rec().to_dict()
    with pytest.raises(RecordError, match="unknown field"):
        Record.from_dict({**d, "extra": 1})
    d.pop("answer")
    with pytest.raises(RecordError, match="missing field"):
        Record.from_dict(d)
    data = _rec().to_bytes()
    with pytest.raises(RecordError, match="bad magic"):
        Record.from_bytes(b"XXXX" + data[4:])
    with pytest.raises(RecordError):
        Record.from_bytes(data[:-10])
    with pytest.raises(RecordError, match="trailing"):
        Record.from_bytes(data + b"\0")
