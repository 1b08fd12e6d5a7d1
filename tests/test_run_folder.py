"""Files written atomically: a reader sees the old content or the whole new one, never a
part, and a writer that fails leaves the old file and no temporary file behind."""

import pandas as pd
import pytest

from pyro_mmt.run_folder import read_json, write_atomic, write_json, write_text_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("old\n")

    def fails(tmp):
        tmp.write_text("half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, fails)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_a_finished_write_replaces_the_file_whole(tmp_path):
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    path = tmp_path / "frame.csv"
    path.write_text("old\n")
    write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))
    pd.testing.assert_frame_equal(pd.read_csv(path), frame)
    write_text_atomic(tmp_path / "notes.md", "| a |\n")
    assert (tmp_path / "notes.md").read_text() == "| a |\n"
    write_json(tmp_path / "c.json", {"status": "finished"})
    assert read_json(tmp_path / "c.json") == {"status": "finished"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "frame.csv", "notes.md"]
