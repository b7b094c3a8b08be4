"""What a source folder holds: walking it (symlinks, loops, strays) and reading its labels."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medflow.data.sources import SourceFile, read_labels, walk_source
from medflow.errors import IngestFailed

CLASSES = ["normal", "lesion"]


def _file(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _rels(files: list[SourceFile]) -> list[str]:
    return [f.rel for f in files]


def _problems(source: Path) -> dict[str, str]:
    return {u.rel: u.reason for u in walk_source(source)[1]}


# ------------------------------------------------------------------------------ walk_source


def test_walk_recurses_sorted_with_sizes_and_times(tmp_path: Path) -> None:
    source = tmp_path / "source"
    _file(source / "b" / "deep" / "deeper" / "z.dcm", "12345")
    _file(source / "a.dcm", "1")
    _file(source / "b" / "y", "123")  # no extension: still a file to read
    _file(source / "labels.csv", "path,label\n")
    files, problems = walk_source(source)
    assert _rels(files) == ["a.dcm", "b/deep/deeper/z.dcm", "b/y", "labels.csv"]
    assert [f.size for f in files] == [1, 5, 3, len("path,label\n")]
    st = (source / "b" / "y").stat()
    assert files[2].mtime_ns == st.st_mtime_ns
    assert problems == []


def test_symlinked_folder_outside_the_source_is_followed(tmp_path: Path) -> None:
    source, elsewhere = tmp_path / "source", tmp_path / "share"
    _file(elsewhere / "P1" / "im.dcm", "content")
    _file(source / "local.dcm")
    (source / "linked").symlink_to(elsewhere, target_is_directory=True)
    files, problems = walk_source(source)
    assert _rels(files) == ["linked/P1/im.dcm", "local.dcm"]
    assert files[0].size == len("content") and problems == []


def test_symlinked_file_is_read_through_the_link(tmp_path: Path) -> None:
    source = tmp_path / "source"
    target = _file(tmp_path / "elsewhere.dcm", "abcdef")
    source.mkdir()
    (source / "link.dcm").symlink_to(target)
    files, _ = walk_source(source)
    assert files == [SourceFile("link.dcm", 6, target.stat().st_mtime_ns)]


def test_symlink_loop_is_reported_and_not_followed(tmp_path: Path) -> None:
    source = tmp_path / "source"
    _file(source / "a" / "x.dcm")
    _file(source / "a" / "b" / "y.dcm")
    (source / "a" / "b" / "up").symlink_to("..", target_is_directory=True)
    (source / "a" / "self").symlink_to(".", target_is_directory=True)
    files, problems = walk_source(source)
    assert _rels(files) == ["a/b/y.dcm", "a/x.dcm"]  # each file once
    reasons = {u.rel: u.reason for u in problems}
    assert set(reasons) == {"a/b/up", "a/self"}
    assert all("symlink loop" in r for r in reasons.values())


def test_loop_back_to_the_source_itself_is_reported(tmp_path: Path) -> None:
    source = tmp_path / "source"
    _file(source / "x.dcm")
    (source / "root").symlink_to(source, target_is_directory=True)
    files, problems = walk_source(source)
    assert _rels(files) == ["x.dcm"] and [u.rel for u in problems] == ["root"]


def test_dangling_link_is_reported(tmp_path: Path) -> None:
    source = tmp_path / "source"
    _file(source / "ok.dcm")
    (source / "gone.dcm").symlink_to(tmp_path / "deleted.dcm")
    (source / "sub").mkdir()
    (source / "sub" / "gone-dir").symlink_to(tmp_path / "no-such-folder")
    files, _ = walk_source(source)
    assert _rels(files) == ["ok.dcm"]
    assert _problems(source) == {
        "gone.dcm": "dangling symbolic link",
        "sub/gone-dir": "dangling symbolic link",
    }


def test_fifo_is_not_a_regular_file(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    os.mkfifo(source / "pipe")
    files, problems = walk_source(source)
    assert files == [] and [u.rel for u in problems] == ["pipe"]
    assert "not a regular file" in problems[0].reason


def test_alias_link_sorting_first_does_not_hide_the_real_folder(tmp_path: Path) -> None:
    source = tmp_path / "source"
    _file(source / "a" / "x.dcm")
    (source / "0alias").symlink_to("a", target_is_directory=True)
    files, problems = walk_source(source)
    assert "a/x.dcm" in _rels(files)
    assert "a" not in {u.rel for u in problems}


@pytest.mark.parametrize("alias", ["0alias", "zalias", "a0"])
def test_link_to_a_folder_inside_the_source_is_an_alias_whatever_its_name(
    tmp_path: Path, alias: str
) -> None:
    source = tmp_path / "source"
    _file(source / "a" / "x.dcm")
    _file(source / "a" / "deep" / "y.dcm")
    (source / alias).symlink_to("a", target_is_directory=True)
    (source / "a" / "deep" / "side").symlink_to("../../b", target_is_directory=True)
    _file(source / "b" / "z.dcm")
    files, problems = walk_source(source)
    assert _rels(files) == ["a/deep/y.dcm", "a/x.dcm", "b/z.dcm"]
    reasons = {u.rel: u.reason for u in problems}
    assert set(reasons) == {alias, "a/deep/side"}
    for reason in reasons.values():
        assert reason.startswith("directory symlink alias:") and "loop" not in reason
        assert "listed under their real path" in reason


def test_loop_is_told_apart_from_an_alias(tmp_path: Path) -> None:
    source = tmp_path / "source"
    _file(source / "a" / "b" / "y.dcm")
    (source / "a" / "b" / "up").symlink_to("..", target_is_directory=True)  # a: contains it
    (source / "a" / "side").symlink_to("b", target_is_directory=True)  # b: beside it
    reasons = _problems(source)
    assert "symlink loop" in reasons["a/b/up"] and "alias" not in reasons["a/b/up"]
    assert "symlink alias" in reasons["a/side"] and "loop" not in reasons["a/side"]


def test_link_above_the_source_is_a_loop(tmp_path: Path) -> None:
    source = tmp_path / "source"
    _file(source / "x.dcm")
    _file(tmp_path / "beside" / "y.dcm")
    (source / "parent").symlink_to(tmp_path, target_is_directory=True)
    files, problems = walk_source(source)
    assert _rels(files) == ["x.dcm"]
    assert [(u.rel, "symlink loop" in u.reason) for u in problems] == [("parent", True)]


def test_outside_folder_linked_twice_is_listed_once(tmp_path: Path) -> None:
    source, share = tmp_path / "source", tmp_path / "share"
    _file(share / "P1" / "im.dcm")
    source.mkdir()
    (source / "b").symlink_to(share, target_is_directory=True)
    (source / "a").symlink_to(share, target_is_directory=True)
    files, problems = walk_source(source)
    assert _rels(files) == ["a/P1/im.dcm"]
    assert [u.rel for u in problems] == ["b"] and "symlink alias" in problems[0].reason


@pytest.mark.parametrize(("outer", "inner"), [("a", "b"), ("b", "a")])
def test_link_into_a_linked_outside_folder_is_an_alias_whatever_the_names(
    tmp_path: Path, outer: str, inner: str
) -> None:
    source, share = tmp_path / "source", tmp_path / "share"
    _file(share / "P1" / "im.dcm")
    _file(share / "P2" / "im.dcm")
    source.mkdir()
    (source / outer).symlink_to(share, target_is_directory=True)
    (source / inner).symlink_to(share / "P1", target_is_directory=True)
    files, problems = walk_source(source)
    assert _rels(files) == sorted([f"{outer}/P1/im.dcm", f"{outer}/P2/im.dcm"])
    assert [u.rel for u in problems] == [inner] and "symlink alias" in problems[0].reason


def test_outside_folder_reached_by_two_routes_is_listed_once(tmp_path: Path) -> None:
    # share/P1 is linked from the source and, one link deeper, through share itself
    source, share, hub = tmp_path / "source", tmp_path / "share", tmp_path / "hub"
    _file(share / "P1" / "im.dcm")
    _file(hub / "h.dcm")
    source.mkdir()
    (source / "direct").symlink_to(share / "P1", target_is_directory=True)
    (source / "hub").symlink_to(hub, target_is_directory=True)
    (hub / "all").symlink_to(share, target_is_directory=True)
    files, problems = walk_source(source)
    assert _rels(files) == ["direct/im.dcm", "hub/h.dcm"]  # the shorter route, one link
    assert [u.rel for u in problems] == ["hub/all/P1"] and "symlink alias" in problems[0].reason


def test_link_from_an_outside_folder_back_into_the_source_is_an_alias(tmp_path: Path) -> None:
    source, share = tmp_path / "source", tmp_path / "share"
    _file(source / "a" / "x.dcm")
    _file(share / "s.dcm")
    (source / "linked").symlink_to(share, target_is_directory=True)
    (share / "back").symlink_to(source / "a", target_is_directory=True)
    (share / "home").symlink_to(source, target_is_directory=True)
    files, problems = walk_source(source)
    assert _rels(files) == ["a/x.dcm", "linked/s.dcm"]
    reasons = {u.rel: u.reason for u in problems}
    assert set(reasons) == {"linked/back", "linked/home"}
    assert all("listed under their real path" in r for r in reasons.values())


# ------------------------------------------------------------------------------ read_labels


def test_labels_csv_by_name_or_index_normalised(tmp_path: Path) -> None:
    _file(
        tmp_path / "labels.csv",
        "path,label\n"
        "P1/a.dcm,normal\n"
        "./P1/b.dcm,1\n"
        "P2\\c.dcm, lesion \n"
        " P2/d.dcm ,0\n"
        "P1/a.dcm,normal\n",  # listed twice with the same label: fine
    )
    labels = read_labels(tmp_path, [], CLASSES)
    assert labels == {"P1/a.dcm": 0, "P1/b.dcm": 1, "P2/c.dcm": 1, "P2/d.dcm": 0}


def test_labels_csv_wins_over_class_folders(tmp_path: Path) -> None:
    _file(tmp_path / "labels.csv", "path,label\nnormal/a.dcm,lesion\n")
    assert read_labels(tmp_path, ["normal/a.dcm", "lesion/b.dcm"], CLASSES) == {"normal/a.dcm": 1}


def test_class_named_folders_give_labels(tmp_path: Path) -> None:
    rels = ["normal/a.dcm", "lesion/P7/b.dcm", "loose.dcm", "other/c.dcm", "x/normal/d.dcm"]
    assert read_labels(tmp_path, rels, CLASSES) == {"normal/a.dcm": 0, "lesion/P7/b.dcm": 1}


def test_no_labels_at_all_says_how_to_provide_them(tmp_path: Path) -> None:
    with pytest.raises(IngestFailed, match=r"add labels\.csv with the columns path,label") as info:
        read_labels(tmp_path, ["a.dcm", "x/b.dcm"], CLASSES)
    assert "['normal', 'lesion']" in str(info.value)


def test_unknown_labels_are_all_named(tmp_path: Path) -> None:
    _file(tmp_path / "labels.csv", "path,label\na,tumour\nb,2\nc,-1\nd,normal\ne,\n")
    with pytest.raises(IngestFailed, match="unknown label value") as info:
        read_labels(tmp_path, [], CLASSES)
    message = str(info.value)
    assert "4 unknown label value(s) ['', '-1', '2', 'tumour']" in message
    assert "index 0..1" in message


def test_conflicting_labels_are_counted(tmp_path: Path) -> None:
    _file(tmp_path / "labels.csv", "path,label\na,normal\n./a,lesion\nb,0\nb,normal\n")
    with pytest.raises(IngestFailed, match=r"1 path\(s\) listed twice with different labels"):
        read_labels(tmp_path, [], CLASSES)


def test_missing_columns_are_named(tmp_path: Path) -> None:
    _file(tmp_path / "labels.csv", "file,class\na.dcm,normal\n")
    with pytest.raises(IngestFailed, match=r"lacks the column\(s\) \['label', 'path'\]") as info:
        read_labels(tmp_path, [], CLASSES)
    assert "found ['file', 'class']" in str(info.value)


def test_empty_labels_csv_is_unreadable(tmp_path: Path) -> None:
    _file(tmp_path / "labels.csv", "")
    with pytest.raises(IngestFailed, match="is not a readable CSV file"):
        read_labels(tmp_path, ["normal/a.dcm"], CLASSES)
