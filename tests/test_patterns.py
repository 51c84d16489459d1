"""Specification of pattern matching on names and fields from outside: linear time, same meaning.

The glob matcher simulates the pattern's automaton instead of backtracking; its meaning is held
against an independent oracle, the glob translated to a Python regular expression and run by ``re``
on short names (where backtracking is harmless). Configured regular expressions run on RE2; a
construct RE2 cannot match in linear time is a config problem naming it.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.core.errors import ConfigError
from handlers.core.patterns import Glob, PatternError, compile_regex
from handlers.model.config import build_config


def oracle(pattern: str) -> re.Pattern[str]:
    """The glob as a backtracking regex: ``**/`` zero or more segments, ``**`` anything, ``*`` within
    a segment, ``?`` one character but ``/``, ``[...]``/``[!...]`` sets."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


PIECES = st.sampled_from(["a", "b", "/", ".", "*", "**", "**/", "?", "x.txt", "in/"])
NAMES = st.text(alphabet="ab/.xt", max_size=12)


@settings(max_examples=400, deadline=None)
@given(pattern=st.lists(PIECES, max_size=6).map("".join), name=NAMES)
def test_a_glob_means_what_the_backtracking_translation_means(pattern, name):
    assert Glob(pattern).match(name) is bool(oracle(pattern).match(name))


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("incoming/**/*.txt", "incoming/a/b/c.txt", True),
        ("incoming/**/*.txt", "incoming/c.txt", True),
        ("incoming/*.txt", "incoming/a/c.txt", False),
        ("data/[0-9][0-9]/*.csv", "data/07/x.csv", True),
        ("data/[!0-9]*", "data/x", True),
        ("data/[!0-9]*", "data/7", False),
        ("a[", "a[", True),  # an unclosed set is a literal
        ("**", "any/thing\nwith a newline", True),
    ],
)
def test_glob_examples(pattern, name, matches):
    assert Glob(pattern).match(name) is matches


def test_a_hostile_name_against_a_many_star_glob_is_answered_not_backtracked():
    # GIVEN a glob that makes a backtracking matcher try every split of the name
    glob = Glob("*a*a*a*a*a*a*a*a*a*a*b")
    # WHEN the name is 1,024 characters that almost match
    # THEN the answer comes from at most len(name) steps over the pattern's states
    assert glob.match("a" * 1024) is False
    assert glob.match("a" * 1023 + "b") is True


def test_a_bad_set_range_is_a_pattern_error():
    with pytest.raises(PatternError, match="z-a"):
        Glob("x/[z-a]")


def test_a_regex_runs_on_re2_in_linear_time_and_dot_matches_a_newline():
    catastrophic = compile_regex("(a|aa)*b")  # exponential for a backtracking engine
    assert catastrophic.search("a" * 20_000) is None
    assert compile_regex("^in/.*\\.csv$").search("in/x\n.csv") is not None


def test_a_regex_re2_cannot_run_in_linear_time_is_a_config_problem_naming_the_field(tmp_path):
    doc = {
        "settings": {"project": "p", "region": "r", "ledger": {"bucket": "b"}},
        "pipelines": {"p": {"backend": "dataflow", "template": "gs://t/x"}},
        "triggers": {"t": {"storage": {"bucket": "in", "regex": r"(a)\1"}, "pipeline": "p"}},
    }
    with pytest.raises(ConfigError) as err:
        build_config(doc)
    assert any("trigger 't'.storage.regex" in p and "RE2" in p for p in err.value.problems)


def test_an_input_pattern_must_match_the_whole_value():
    doc = {
        "settings": {"project": "p", "region": "r", "ledger": {"bucket": "b"}},
        "pipelines": {
            "p": {
                "backend": "dataflow",
                "template": "gs://t/x",
                "inputs": {"day": {"pattern": "[0-9]{4}-[0-9]{2}-[0-9]{2}"}},
                "parameters": {"day": "{input.day}"},
            }
        },
        "triggers": {},
    }
    pattern = build_config(doc).pipelines["p"].inputs["day"].pattern
    assert pattern is not None
    assert pattern.fullmatch("2026-12-06") and not pattern.fullmatch("2026-12-06\nrm -rf")
