# Stop strings must be found however the text is cut into deltas, and never leak into output.
from __future__ import annotations

import itertools
import random

import pytest
from ember.stop_strings import StopStringMatcher


def run(stops: list[str], deltas: list[str]) -> tuple[str, bool]:
    matcher = StopStringMatcher(stops)
    out: list[str] = []
    hit = False
    for delta in deltas:
        safe, hit = matcher.push(delta)
        out.append(safe)
        if hit:
            break
    if not hit:
        out.append(matcher.flush())
    return "".join(out), hit


def all_splits(text: str, max_cuts: int = 2) -> list[list[str]]:
    """Every way to cut `text` into pieces at up to `max_cuts` points (empty pieces included)."""
    result: list[list[str]] = []
    for n in range(max_cuts + 1):
        for cuts in itertools.combinations_with_replacement(range(len(text) + 1), n):
            bounds = [0, *cuts, len(text)]
            result.append([text[a:b] for a, b in itertools.pairwise(bounds)])
    return result


def reference(stops: list[str], text: str) -> tuple[str, bool]:
    """Character-by-character: stop as soon as any stop string is complete."""
    for end in range(1, len(text) + 1):
        done = [s for s in stops if text[:end].endswith(s)]
        if done:
            longest = max(done, key=len)
            return text[: end - len(longest)], True
    return text, False


CASES: list[tuple[list[str], str]] = [
    (["STOP"], "hello STOP world"),
    (["STOP"], "hello STO world"),  # a near miss must come out in full
    (["\n\n"], "line one\nline two\n\nnext"),
    (["abc", "b"], "xxabc"),  # "b" completes first
    (["abc", "bc"], "xxabcz"),  # both complete together: the longer one is cut
    (["aab"], "aaab"),  # overlapping self-prefix
    (["ababc"], "abababcd"),
    (["<|end|>", "<|"], "ok <| and"),
    (["🎉", "世界"], "你好世界 🎉"),
    (["é"], "cafe café"),
    (["xyz"], "no stop here at all"),
    (["aa", "a"], "baab"),
]


@pytest.mark.parametrize(("stops", "text"), CASES)
def test_every_split_point_gives_the_reference_result(stops: list[str], text: str) -> None:
    expected = reference(stops, text)
    for pieces in all_splits(text):
        assert run(stops, pieces) == expected, (stops, pieces)


def test_random_streams_match_reference() -> None:
    rng = random.Random(1234)
    alphabet = "ab\nc"
    for _ in range(400):
        stops = ["".join(rng.choices(alphabet, k=rng.randint(1, 4))) for _ in range(3)]
        text = "".join(rng.choices(alphabet, k=rng.randint(0, 20)))
        pieces: list[str] = []
        i = 0
        while i < len(text):
            n = rng.randint(0, 4)
            pieces.append(text[i : i + n])
            i += n
        assert run(stops, pieces) == reference(stops, text), (stops, pieces)


def test_stop_text_is_never_emitted_and_matched_is_reported() -> None:
    matcher = StopStringMatcher(["</answer>", "DONE"])
    emitted = []
    for delta in ["The answer is 4", "2</ans", "wer> and more"]:
        safe, hit = matcher.push(delta)
        emitted.append(safe)
    assert "".join(emitted) == "The answer is 42"
    assert hit and matcher.stopped and matcher.matched == "</answer>"
    assert matcher.push("more") == ("", True)
    assert matcher.flush() == ""


def test_holds_back_only_a_possible_prefix() -> None:
    matcher = StopStringMatcher(["STOP"])
    assert matcher.push("abc ST") == ("abc ", False)
    assert matcher.push("x") == ("STx", False)
    assert matcher.push("S") == ("", False)
    assert matcher.flush() == "S"
    assert not matcher.stopped


def test_no_stops_passes_through() -> None:
    matcher = StopStringMatcher([])
    assert matcher.push("anything") == ("anything", False)
    assert matcher.flush() == ""


def test_empty_stop_string_is_rejected() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        StopStringMatcher(["ok", ""])
