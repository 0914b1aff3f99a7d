"""Tests for shardsync.partition: several hosts' remainders must cover 0..divisor-1 exactly once."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from shardsync.partition import HostShards, check_partition, compress

TYPES = ("user", "account", "position")


def host(source: str, remainders: list[int] | range, divisor: int = 16, expression: str = "modAccountId",
         entity_types: tuple[str, ...] = TYPES) -> HostShards:
    return HostShards(source, divisor, expression, entity_types, tuple(remainders))


def test_compress_ranges() -> None:
    """Numbers are shown sorted, unique, runs as ranges."""
    assert compress([12, 5, 7, 6, 5]) == "5-7, 12"
    assert compress([3]) == "3"
    assert compress([0, 2, 4, 5]) == "0, 2, 4-5"
    assert compress([]) == ""


def test_two_halves_partition() -> None:
    """0-7 on one host and 8-15 on the other is a partition: no problem."""
    assert check_partition([host("a.toml", range(8)), host("b.toml", range(8, 16))]) == []


def test_gap_named_by_compressed_remainders() -> None:
    """Remainders in no file are reported once, as compressed ranges."""
    problems = check_partition([host("a.toml", [0, 1, 2, 3, 4]), host("b.toml", [8, 9, 10, 11, 13, 14, 15])])
    assert problems == ["gap: 5-7, 12 (in no file; divisor 16)"]


def test_overlap_named_by_remainders_and_files() -> None:
    """Remainders in two files are reported with both file names, one line per set of files."""
    problems = check_partition([
        host("a.toml", range(10)), host("b.toml", range(8, 16)), host("c.toml", [0, 15]),
    ])
    assert problems == [
        "overlap: 0 (in a.toml, c.toml)",
        "overlap: 8-9 (in a.toml, b.toml)",
        "overlap: 15 (in b.toml, c.toml)",
    ]


def test_gap_and_overlap_together() -> None:
    """A file set can have both; every one is named."""
    problems = check_partition([host("a.toml", range(6)), host("b.toml", range(4, 10))])
    assert problems == ["overlap: 4-5 (in a.toml, b.toml)", "gap: 10-15 (in no file; divisor 16)"]


def test_divisor_mismatch_named_per_file_and_partition_skipped() -> None:
    """Different divisors are reported with each file's value; remainders of different divisors are not compared."""
    problems = check_partition([host("a.toml", range(8), divisor=16), host("b.toml", range(8), divisor=8)])
    assert problems == ["sync.divisor differs: a.toml: 16; b.toml: 8"]


def test_expression_and_entity_types_must_agree() -> None:
    """Expression and entity types must match (entity types as a set, order free)."""
    problems = check_partition([
        host("a.toml", range(8)),
        host("b.toml", range(8, 16), expression="modUserId", entity_types=("position", "user")),
    ])
    assert problems == [
        "sync.expression differs: a.toml: modAccountId; b.toml: modUserId",
        "sync.entity_types differs: a.toml: [account, position, user]; b.toml: [position, user]",
    ]
    reordered = host("b.toml", range(8, 16), entity_types=tuple(reversed(TYPES)))
    assert check_partition([host("a.toml", range(8)), reordered]) == []


def test_single_file_with_all_remainders_passes() -> None:
    """One file with every remainder is a partition by itself."""
    assert check_partition([host("a.toml", range(16))]) == []


def _listed(problems: list[str], kind: str) -> set[int]:
    """Every remainder a problem line of *kind* (gap or overlap) names."""
    found: set[int] = set()
    for problem in problems:
        if not problem.startswith(kind + ": "):
            continue
        ranges = problem.split(": ", 1)[1].split(" (", 1)[0]
        for item in ranges.split(", "):
            lo, _, hi = item.partition("-")
            found.update(range(int(lo), int(hi or lo) + 1))
    return found


@st.composite
def partitions(draw: st.DrawFn) -> tuple[int, list[list[int]]]:
    """A divisor and a random split of 0..divisor-1 over 1-6 hosts (a host may get nothing)."""
    divisor = draw(st.integers(1, 64))
    hosts = draw(st.integers(1, 6))
    owner = draw(st.lists(st.integers(0, hosts - 1), min_size=divisor, max_size=divisor))
    return divisor, [[r for r in range(divisor) if owner[r] == h] for h in range(hosts)]


def _hosts(divisor: int, split: list[list[int]]) -> list[HostShards]:
    return [host(f"h{i}.toml", rems, divisor=divisor) for i, rems in enumerate(split)]


@given(partitions())
def test_any_partition_passes(case: tuple[int, list[list[int]]]) -> None:
    """Every random split of 0..divisor-1 over several hosts passes."""
    divisor, split = case
    assert check_partition(_hosts(divisor, split)) == []


@given(partitions(), st.data())
def test_removed_remainder_reported_as_gap(case: tuple[int, list[list[int]]], data: st.DataObject) -> None:
    """Dropping any one remainder from its host reports exactly that remainder as a gap, and nothing else."""
    divisor, split = case
    missing = data.draw(st.integers(0, divisor - 1))
    for rems in split:
        if missing in rems:
            rems.remove(missing)
    problems = check_partition(_hosts(divisor, split))
    assert _listed(problems, "gap") == {missing}
    assert len(problems) == 1


@given(partitions(), st.data())
def test_duplicated_remainder_reported_as_overlap(case: tuple[int, list[list[int]]], data: st.DataObject) -> None:
    """Giving any remainder to a second host reports exactly that remainder as an overlap naming both files."""
    divisor, split = case
    doubled = data.draw(st.integers(0, divisor - 1))
    owner = next(i for i, rems in enumerate(split) if doubled in rems)
    split.append([doubled])  # a new host, so the duplicate is always in another file
    problems = check_partition(_hosts(divisor, split))
    assert _listed(problems, "overlap") == {doubled}
    (line,) = problems
    assert re.search(rf"\(in h{owner}\.toml, h{len(split) - 1}\.toml\)$", line), line


def test_resharding_accepts_hosts_on_either_side_of_a_split_that_cover_each_account_once() -> None:
    """Host a already at 8 ({0, 1, 4, 5} = its old {0, 1} of 4), host b still at 4: every account once."""
    hosts = [host("a.toml", [0, 1, 4, 5], divisor=8), host("b.toml", [2, 3], divisor=4)]
    assert check_partition(hosts, resharding=True) == []
    assert check_partition(hosts) == ["sync.divisor differs: a.toml: 8; b.toml: 4"]


def test_resharding_names_what_contiguous_host_blocks_would_drop_and_double() -> None:
    """--host-index style blocks ({0-3} of 8 beside {2, 3} of 4) leave 4, 5 mod 8 uncovered and 2, 3 twice."""
    problems = check_partition([host("a.toml", [0, 1, 2, 3], divisor=8), host("b.toml", [2, 3], divisor=4)],
                               resharding=True)
    assert problems == [
        "overlap: account id % 8 = 2 (in a.toml (2 of 8), b.toml (2 of 4))",
        "overlap: account id % 8 = 3 (in a.toml (3 of 8), b.toml (3 of 4))",
        "gap: account id % 8 in 4-5 (in no file)",
    ]


def test_resharding_refuses_divisors_no_split_or_merge_connects() -> None:
    """3 and 4 hosts side by side are no resharding of one another."""
    problems = check_partition([host("a.toml", [0, 1, 2], divisor=3), host("b.toml", [0, 1, 2, 3], divisor=4)],
                               resharding=True)
    assert problems == ["divisors 3 do not divide 4: no split or merge goes between them"]
