"""``turnpike gateway`` flags and the configuration file (nothing is served here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from turnpike.cli import main
from turnpike.gateway.command import parse_listen
from turnpike.gateway.config import ConfigError, load_config


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen(":9000") == ("0.0.0.0", 9000)
    assert parse_listen("[::1]:80") == ("::1", 80)
    with pytest.raises(SystemExit):
        parse_listen("localhost")


def test_a_yaml_config_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "tiers:\n"
        "  reserved: {priority: 100, weight: 3, reserved: true}\n"
        "  spot: {priority: 0, weight: 1}\n"
        "defaultTier: spot\n"
        "tenants:\n"
        "  acme: {tier: reserved, apiKeySha256: ['" + "ab" * 32 + "']}\n"
        "deployments:\n"
        "  llama: {sloThresholdMilliseconds: 500, maxReplicas: 6,\n"
        "          openai: {dialect: vllm, chatTemplate: plain}}\n"
    )
    config = load_config(path)
    assert config.limits("llama").max_replicas == 6
    # A discovered deployment is NAMESPACE/NAME; an entry by NAME alone applies to it.
    assert config.limits("ml/llama").max_replicas == 6
    assert config.limits("ml/other").max_replicas is None
    assert config.tiers["reserved"].reserved
    path.write_text("tiers: [")
    with pytest.raises(ConfigError, match="not YAML"):
        load_config(path)
    with pytest.raises(ConfigError):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "argv",
    [
        ["gateway", "--static-endpoints", "m=", "--namespace", "ml"],  # two sources
        ["gateway", "--namespace", "Not_A_Namespace"],
        ["gateway", "--static-endpoints", "m=nohost"],
        ["gateway", "--static-endpoints", "m=", "--listen", "nope"],
        ["gateway", "--static-endpoints", "m=", "--config", "/nonexistent.yaml"],
    ],
)
def test_bad_flags_stop_before_serving(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code not in (0, None)


def test_discovery_without_any_cluster_credentials_says_how_to_fix_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match="--static-endpoints"):
        main(["gateway", "--listen", "127.0.0.1:1"])
