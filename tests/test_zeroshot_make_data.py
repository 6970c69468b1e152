"""make-data of both zero-shot benchmarks (recipes/zeroshot_layers.py, recipes/zeroshot_tracks.py):
a bad flag is refused by name before anything is written, and a used folder is never written into."""

from __future__ import annotations

import pytest
from test_zeroshot_layers import make_data as make_leaves
from test_zeroshot_tracks import make_data as make_tracks

BAD_FLAGS = [
    (make_leaves, ["--min-shapes", "3", "--max-shapes", "2"], "--min-shapes"),
    (make_leaves, ["--max-shapes", "9"], "--max-shapes"),
    (make_leaves, ["--min-radius", "0"], "--min-radius"),
    (make_leaves, ["--min-front-area", "0.5"], "--min-front-area"),
    (make_leaves, ["--size", "4"], "--size"),
    (make_tracks, ["--num-frames", "1"], "--num-frames"),
    (make_tracks, ["--num-sprites", "0"], "--num-sprites"),
    (make_tracks, ["--num-points", "300"], "--num-points"),
    (make_tracks, ["--size", "8"], "--size"),
    (make_tracks, ["--num-test", "0"], "--num-test"),
]
RECIPES = pytest.mark.parametrize("make_data", [make_leaves, make_tracks], ids=["layers", "tracks"])


@pytest.mark.parametrize(("make_data", "flags", "named"), BAD_FLAGS,
                         ids=[" ".join(flags) for _, flags, _ in BAD_FLAGS])
def test_make_data_rejects_bad_flags_before_writing(tmp_path, capsys, make_data, flags, named):
    with pytest.raises(SystemExit) as exit_info:
        make_data(tmp_path / "out", *flags)
    assert exit_info.value.code == 2 and named in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@RECIPES
def test_make_data_never_writes_into_a_used_folder(tmp_path, capsys, make_data):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("another run")
    with pytest.raises(SystemExit) as exit_info:
        make_data(tmp_path / "used")
    assert exit_info.value.code == 2 and "never writes over" in capsys.readouterr().err
    assert [path.name for path in (tmp_path / "used").iterdir()] == ["notes.txt"]
