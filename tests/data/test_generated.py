"""The one generate-on-first-use scheme of the toy sets: atomic, replaces interrupted or stale
sets, keeps complete ones, and lets exactly one of several racing processes win."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from diffvision.data.generated import MARKER_FILE, generate_once
from diffvision.data.toy_scenes import ensure_toy_scenes


def _writer(calls: list, text: str = "a"):
    def generate(out):
        calls.append(out)
        out.mkdir()
        (out / "file.txt").write_text(text)

    return generate


def test_a_complete_set_is_generated_once_and_kept(tmp_path):
    calls = []
    root = generate_once(tmp_path / "set", _writer(calls), what="test")
    assert (root / "file.txt").read_text() == "a" and (root / MARKER_FILE).is_file()
    generate_once(tmp_path / "set", _writer(calls, "b"), what="test")
    assert len(calls) == 1 and (root / "file.txt").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no temporary folder left


def test_an_interrupted_or_stale_set_is_replaced(tmp_path):
    root = tmp_path / "set"
    root.mkdir()
    (root / "half.txt").write_text("")  # a write that never finished: no marker
    generate_once(root, _writer([]), what="test", params={"n": 1})
    assert sorted(p.name for p in root.iterdir()) == [MARKER_FILE, "file.txt"]
    generate_once(root, _writer([], "b"), what="test", params={"n": 2})  # other params
    assert (root / "file.txt").read_text() == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_a_failing_generation_leaves_nothing_behind(tmp_path):
    def fail(out):
        out.mkdir()
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        generate_once(tmp_path / "set", fail, what="test")
    assert list(tmp_path.iterdir()) == []


def test_racing_processes_yield_one_complete_set(tmp_path):
    calls = []
    with ThreadPoolExecutor(4) as pool:
        roots = list(
            pool.map(lambda _: generate_once(tmp_path / "set", _writer(calls), what="t"), range(4))
        )
    assert roots == [tmp_path / "set"] * 4 and (tmp_path / "set" / "file.txt").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_toy_scenes_with_other_arguments_replace_the_split_atomically(tmp_path):
    first = ensure_toy_scenes("val", root=tmp_path, num_images=2)
    assert len(list((first / "images").glob("*.png"))) == 2
    again = ensure_toy_scenes("val", root=tmp_path, num_images=3)
    assert again == first and len(list((again / "images").glob("*.png"))) == 3
    assert sorted(p.name for p in (tmp_path / "toy_scenes").iterdir()) == ["val"]
