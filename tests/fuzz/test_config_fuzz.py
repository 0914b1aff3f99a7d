"""Any TOML document (deep nesting, extreme numbers, wrong types, random bytes): settings or a clean ConfigError."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardsync.config import ConfigError, Settings, load_config
from shardsync.config.models import SECTIONS

KEYS = {section: list(Settings.model_fields[section].annotation.model_fields)  # type: ignore[union-attr]
        for section in SECTIONS}


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{orjson.dumps(k).decode()} = {toml_value(v)}" for k, v in value.items()) + "}"


scalars = st.one_of(
    st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["all", "0-3", "modUserId", "sqlite", "postgres", "json", "127.0.0.1:0", "7d", "\x00"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(min_size=1, max_size=8), inner, max_size=3), max_leaves=12)


@st.composite
def documents(draw: st.DrawFn) -> str:
    lines = []
    for section in draw(st.lists(st.sampled_from([*SECTIONS, "bogus"]), unique=True, max_size=8)):
        lines.append(f"[{section}]")
        known = KEYS.get(section, ["x"])
        for key in draw(st.lists(st.sampled_from([*known, "typo_key"]), unique=True, max_size=6)):
            lines.append(f"{key} = {toml_value(draw(values))}")
    if draw(st.booleans()):
        depth = draw(st.integers(min_value=1, max_value=3000))
        lines.append("deep = " + "[" * depth + "]" * depth)
    return "\n".join(lines) + "\n"


def _check(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_bytes(raw)
        try:
            load_config(path, machine_id=lambda: "m", user=lambda: "u")
        except ConfigError as exc:
            assert exc.errors and all(isinstance(e, str) and e for e in exc.errors)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_any_toml_document_validates_or_fails_cleanly(text: str) -> None:
    """A generated TOML document (real keys, wrong types, nesting up to 3000) never raises anything but ConfigError."""
    _check(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_fail_cleanly(raw: bytes) -> None:
    """Arbitrary bytes as a config file are a ConfigError (or, by chance, valid settings), never a traceback."""
    _check(raw)
