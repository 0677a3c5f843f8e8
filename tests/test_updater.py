"""The node updater's stages on a real `local` node: what runs again after which change.

Setup and start commands append to files on the node, so each assertion reads what the node did.
"""

from __future__ import annotations

import pytest

from launcher import tags as T
from launcher.config import config_from_dict
from launcher.providers.local import LocalNodeProvider
from launcher.updater import NodeUpdater, UpdateFailed


@pytest.fixture
def node(tmp_path):
    provider = LocalNodeProvider({"type": "local", "state_dir": str(tmp_path / "state")}, "upd")
    [node_id] = provider.create("head", {}, {T.TAG_NODE_KIND: T.KIND_HEAD, T.TAG_NODE_TYPE: "head"}, 1)
    yield provider, node_id
    provider.terminate([node_id])


def _config(tmp_path, setup="echo setup >> ~/setup.log", data_text="v1"):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    file = data / "file.txt"
    if not file.exists() or file.read_text() != data_text:  # an untouched file keeps its mtime
        file.write_text(data_text)
    return config_from_dict({
        "cluster_name": "upd", "provider": {"type": "local"}, "head_node_type": "head",
        "available_node_types": {"head": {"resources": {"CPU": 1}}},
        "file_mounts": {"~/data": str(data)},
        "setup_commands": [setup],
        "head_start_commands": ["echo start >> ~/start.log"],
    })


def _run(provider, node_id, config, **kwargs) -> list[str]:
    return NodeUpdater(provider, node_id, config, T.KIND_HEAD, "head", **kwargs).run()


def _lines(provider, node_id, name) -> int:
    return int(provider.command_runner(node_id).run(f"cat ~/{name} 2>/dev/null | wc -l").output_tail)


def test_unchanged_config_runs_nothing(node, tmp_path):
    provider, node_id = node
    config = _config(tmp_path)
    assert _run(provider, node_id, config) == ["files", "setup", "start"]
    assert _run(provider, node_id, config) == []
    assert (_lines(provider, node_id, "setup.log"), _lines(provider, node_id, "start.log")) == (1, 1)
    assert provider.node_tags(node_id)[T.TAG_INSTALL_STAGE] == T.STAGE_DONE


def test_edited_setup_command_reruns_setup_and_start_only(node, tmp_path):
    provider, node_id = node
    _run(provider, node_id, _config(tmp_path))
    assert _run(provider, node_id, _config(tmp_path, setup="echo setup2 >> ~/setup.log")) == ["setup", "start"]
    assert _lines(provider, node_id, "setup.log") == 2


def test_edited_mounted_file_resyncs_files_and_restarts(node, tmp_path):
    provider, node_id = node
    _run(provider, node_id, _config(tmp_path))
    assert _run(provider, node_id, _config(tmp_path, data_text="v2")) == ["files", "start"]
    assert provider.command_runner(node_id).run("cat ~/data/file.txt").output_tail == "v2"
    assert _lines(provider, node_id, "setup.log") == 1


def test_restart_only_runs_the_start_commands(node, tmp_path):
    provider, node_id = node
    config = _config(tmp_path)
    _run(provider, node_id, config)
    assert _run(provider, node_id, config, run_setup=False) == ["start"]
    assert _lines(provider, node_id, "start.log") == 2


def test_failing_setup_says_why_in_one_line_and_stops_there(node, tmp_path):
    provider, node_id = node
    with pytest.raises(UpdateFailed) as info:
        _run(provider, node_id, _config(tmp_path, setup="echo boom-output; exit 7"))
    message = str(info.value)
    assert node_id in message and "exited with code 7" in message and "boom-output" in message
    assert "\n" not in message
    assert provider.node_tags(node_id)[T.TAG_INSTALL_STAGE] == T.STAGE_SETTING_UP
    assert _lines(provider, node_id, "start.log") == 0  # nothing was started after the failure
