"""The retrain flow: the champion gate on a real MLflow store, the served deployment on a real
Prefect server, and a pipeline flow run retried from the stage that crashed."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from flows.local_api import free_port
from flows.retrain import ALIAS, champion_gate, gate_markdown
from tests.conftest import VENV_BIN, pipeline_env, run_in


# ---- the gate, on two real registered versions (no training needed) -------------------------

@pytest.fixture
def registry(tmp_path):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("gate", artifact_location=(tmp_path / "artifacts").as_uri())
    client.create_registered_model("decoder")

    def register(loss: float) -> str:
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "test_loss", loss)
        client.set_terminated(run.info.run_id)
        (tmp_path / run.info.run_id).mkdir()
        return client.create_model_version("decoder", (tmp_path / run.info.run_id).as_uri(),
                                           run_id=run.info.run_id).version
    return client, register


def champion(client) -> str:
    return client.get_model_version_by_alias("decoder", ALIAS).version


def test_the_first_version_becomes_champion_then_only_a_better_one_moves_the_alias(registry):
    client, register = registry
    first = register(100.0)
    result = champion_gate(client, "decoder", first, margin=1.0)
    assert result["promoted"] and result["champion"] is None and champion(client) == first

    # Worse, equal, and better by less than the margin: the alias stays.
    for loss in (101.0, 100.0, 99.5):
        version = register(loss)
        result = champion_gate(client, "decoder", version, margin=1.0)
        assert not result["promoted"], result["decision"]
        assert champion(client) == first
        assert result["champion"]["test_loss"] == 100.0 and result["challenger"]["test_loss"] == loss

    # The champion itself again (nothing retrained): kept, not "promoted".
    assert not champion_gate(client, "decoder", first, margin=1.0)["promoted"]

    better = register(98.0)            # beats it by 2 >= 1
    result = champion_gate(client, "decoder", better, margin=1.0)
    assert result["promoted"] and champion(client) == better
    markdown = gate_markdown(result)
    assert "promoted" in markdown and "| 98 |" in markdown and "| 100 |" in markdown
