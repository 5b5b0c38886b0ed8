"""``validate --cluster``: the preflight from a laptop fails as a user error, never a traceback.

The check itself, against the real authorizer: tests/e2e/test_policy_live_e2e.py.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tests.builders import QUAY_POLICY, kubeconfig
from tests.kube_fixtures import closed_port
from webhook.cli import main
from webhook.kube.clustercheck import groups_of


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param("missing", "cannot configure the Kubernetes client", id="no-kubeconfig"),
        pytest.param("unreachable", "cannot ask the cluster", id="api-unreachable"),
    ],
)
def test_validate_cluster_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str, message: str
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(QUAY_POLICY)
    path = (
        tmp_path / "absent" if config == "missing" else kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{closed_port()}")
    )
    out = io.StringIO()
    code = main(["validate", str(policy), "--cluster", "--kubeconfig", str(path)], out=out)
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert "valid, 1 rule(s)" in out.getvalue()  # the offline part still ran


@pytest.mark.parametrize(
    ("user", "groups"),
    [
        pytest.param(
            "system:serviceaccount:psi:webhook",
            ["system:serviceaccounts", "system:serviceaccounts:psi", "system:authenticated"],
            id="service-account",
        ),
        pytest.param("alice", ["system:authenticated"], id="user"),
        pytest.param("system:serviceaccount:broken", ["system:authenticated"], id="not-a-service-account"),
    ],
)
def test_groups_of(user: str, groups: list[str]) -> None:
    assert groups_of(user) == groups
