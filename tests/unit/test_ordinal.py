"""Remainders from a host's ordinal (--host-index/--host-count) and their override of a loaded config."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardsync.config import ConfigError, load_config
from shardsync.ordinal import HostSlot, host_remainders, parse_host_index


@given(st.integers(1, 4096).flatmap(lambda d: st.tuples(st.just(d), st.integers(1, d))))
def test_the_blocks_of_all_hosts_partition_the_remainders(case: tuple[int, int]) -> None:
    """For any divisor and host count <= divisor, the hosts' blocks are contiguous, non-empty, in host order,
    differ in size by at most one, and together hold every remainder 0..divisor-1 exactly once."""
    divisor, count = case
    blocks = [host_remainders(divisor, index, count) for index in range(count)]
    assert [r for block in blocks for r in block] == list(range(divisor))
    assert all(block and block == tuple(range(block[0], block[-1] + 1)) for block in blocks)
    sizes = {len(block) for block in blocks}
    assert max(sizes) - min(sizes) <= 1
    assert [len(b) for b in blocks] == sorted((len(b) for b in blocks), reverse=True)  # the larger blocks first


def test_known_blocks() -> None:
    """16 shards on 4 hosts are 0-3, 4-7, 8-11, 12-15; 10 on 4 are 0-2, 3-5, 6-7, 8-9; one host runs them all."""
    assert [host_remainders(16, i, 4) for i in range(4)] == [tuple(range(4 * i, 4 * i + 4)) for i in range(4)]
    assert [host_remainders(10, i, 4) for i in range(4)] == [(0, 1, 2), (3, 4, 5), (6, 7), (8, 9)]
    assert host_remainders(5, 0, 1) == (0, 1, 2, 3, 4)


@pytest.mark.parametrize(("divisor", "index", "count", "message"), [
    (16, 4, 4, "--host-index 4 is not in 0..3"),
    (16, -1, 4, "--host-index -1 is not in 0..3"),
    (4, 0, 5, "--host-count 5 > sync.divisor 4"),
    (4, 0, 0, "--host-count 0 < 1"),
    (0, 0, 1, "divisor 0 < 1"),
])
def test_slots_that_do_not_fit_are_refused(divisor: int, index: int, count: int, message: str) -> None:
    """An index outside 0..count-1, more hosts than shards (an idle host), or no host at all is a ValueError."""
    with pytest.raises(ValueError, match="^" + message.replace(".", r"\.")):
        host_remainders(divisor, index, count)


@pytest.mark.parametrize(("text", "index"), [("0", 0), ("3", 3), ("007", 7), ("shardsync-2", 2),
                                             ("my-sync-12", 12), ("web-1-3", 3)])
def test_an_index_is_a_number_or_a_pod_name(text: str, index: int) -> None:
    """--host-index takes an integer or a StatefulSet pod name, whose ordinal is the number after the last dash."""
    assert parse_host_index(text) == index


@pytest.mark.parametrize("text", ["", "-1", "x", "shardsync-", "shardsync--2", "Shard-2", "2\n", " 2", "٣",
                                  "1e3", "1234567890"])
def test_anything_else_is_not_an_index(text: str) -> None:
    """Negative numbers, names without an ordinal, whitespace, non-ASCII digits and absurd numbers are refused."""
    with pytest.raises(ValueError, match="neither an index"):
        parse_host_index(text)


def _config(tmp_path: Path, sync: str) -> Path:
    path = tmp_path / "shared.toml"
    path.write_text(f'[tradovate]\napp_id = "a"\ncid = 1\n[sync]\n{sync}\n')
    return path


def test_the_slot_overrides_remainders_all(tmp_path: Path) -> None:
    """With a host slot, a file saying remainders = "all" (or nothing) runs only that host's block; the rest of
    the settings are the file's."""
    for sync in ('divisor = 16\nremainders = "all"', "divisor = 16", 'divisor = 16\nremainders = " ALL "'):
        path = _config(tmp_path, sync)
        plain = load_config(path)
        hosted = load_config(path, host=HostSlot(2, 4))
        assert plain.sync.remainders == tuple(range(16))
        assert hosted.sync.remainders == (8, 9, 10, 11)
        assert hosted.sync.model_copy(update={"remainders": plain.sync.remainders}) == plain.sync
        assert hosted.model_copy(update={"sync": plain.sync}) == plain


@pytest.mark.parametrize(("chosen", "shown"), [('"0-15"', "'0-15'"), ("[0, 1, 2, 3]", "'[0, 1, 2, 3]'"),
                                               ('"0-3"', "'0-3'")])
def test_a_file_that_picks_its_remainders_is_refused_with_a_slot(tmp_path: Path, chosen: str, shown: str) -> None:
    """A file whose remainders are not "all" is a ConfigError naming sync.remainders and the flags, even when its
    choice happens to equal the slot's block: two sources of truth for one host's shards are refused."""
    path = _config(tmp_path, f"divisor = 16\nremainders = {chosen}")
    load_config(path)  # valid on its own
    with pytest.raises(ConfigError) as caught:
        load_config(path, host=HostSlot(0, 4))
    assert caught.value.errors == [
        'sync.remainders: must be "all" (or absent) when --host-index 0 --host-count 4 chooses this host\'s '
        f"remainders (it is {shown})"
    ]


def test_a_slot_that_does_not_fit_the_file_is_a_config_error(tmp_path: Path) -> None:
    """More hosts than the file's divisor, or an index past the count, is a ConfigError naming the flag."""
    path = _config(tmp_path, "divisor = 4")
    with pytest.raises(ConfigError, match=r"--host-count 8 > sync.divisor 4"):
        load_config(path, host=HostSlot(0, 8))
    with pytest.raises(ConfigError, match=r"--host-index 4 is not in 0\.\.3"):
        load_config(path, host=HostSlot(4, 4))


def test_an_invalid_file_reports_its_own_errors_first(tmp_path: Path) -> None:
    """The slot is applied after validation: a broken file's errors are reported as without a slot."""
    path = _config(tmp_path, "divisor = 0")
    with pytest.raises(ConfigError) as with_slot:
        load_config(path, host=HostSlot(0, 2))
    with pytest.raises(ConfigError) as without:
        load_config(path)
    assert with_slot.value.errors == without.value.errors
