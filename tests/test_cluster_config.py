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
    # Every file of the repository the configuration names exists.
    for mentioned in set(re.findall(r"\b[\w./-]+\.(?:md|py|yaml|toml|sql)\b", text)):
        if not mentioned.startswith(("~", "/")) and "bootstrap" not in mentioned:
            assert (ROOT / mentioned).exists(), mentioned
    assert raw["file_mounts"]["~/lootify"] == "."


def test_aws_config_has_an_autoscaling_worker_type():
    config = prepare_config(yaml.safe_load((ROOT / "cluster.yaml").read_text()))
    worker = config["available_node_types"]["worker"]
    assert config["provider"]["type"] == "aws"
    assert worker["max_workers"] > worker["min_workers"]
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}
