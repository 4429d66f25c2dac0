"""Atomic JSON results."""

import json
import stat

from tjdnet.files import write_json


def test_write_json_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "results.json"
    write_json(path, {"tau": 2.5, "path": tmp_path})
    write_json(path, {"tau": 3.0, "text": "°C"})
    assert json.loads(path.read_text()) == {"tau": 3.0, "text": "°C"}
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
