"""The `ray up` configurations pass Ray's own checks, as `ray up` runs them."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-onprem.yaml"])
def test_cluster_config_passes_rays_validation(name):
    raw = yaml.safe_load((ROOT / name).read_text())
    validate_config(prepare_config(copy.deepcopy(raw)))
    # The one command after `ray up` deploys Serve on every interface.
    text = (ROOT / name).read_text()
    assert re.search(r"LOOTIFY_HTTP_HOST=0\.0\.0\.0\s+#\s+\.venv/bin/python scripts/cluster\.py up",
                     text)
    # Every file of the repository the configuration names exists (on a node, the
    # checkout is $HOME/lootify).
    for mentioned in set(re.findall(r"\b[\w./-]+\.(?:md|py|yaml|toml|sql)\b", text)):
        mentioned = mentioned.removeprefix("HOME/lootify/")
        if not mentioned.startswith(("~", "/")) and "bootstrap" not in mentioned:
            assert (ROOT / mentioned).exists(), mentioned
    assert raw["file_mounts"]["~/lootify"] == "."
    # Every node's HAProxy runs through the wrapper, as `make up`'s does (no tokens in
    # its log, X-Forwarded-For set by the proxy).
    for command in raw["head_start_ray_commands"][1:] + raw["worker_start_ray_commands"][1:]:
        assert "RAY_SERVE_HAPROXY_BINARY_PATH=$HOME/lootify/scripts/haproxy_ingress.py" in command
        assert "LOOTIFY_HAPROXY_BINARY=$(" in command


def test_aws_config_has_an_autoscaling_worker_type():
    config = prepare_config(yaml.safe_load((ROOT / "cluster.yaml").read_text()))
    worker = config["available_node_types"]["worker"]
    assert config["provider"]["type"] == "aws"
    assert worker["max_workers"] > worker["min_workers"]
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}
