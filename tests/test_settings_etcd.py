"""``[registry.etcd]``: where replicas share registrations."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from xdsd.errors import ConfigError
from xdsd.model.registrations import EtcdSettings
from xdsd.settings import Settings


def _read(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "xdsd.toml"
    path.write_text(text)
    return Settings.from_file(str(path))


def test_without_etcd_registrations_stay_in_the_daemon(tmp_path: Path) -> None:
    assert Settings().registry.etcd is None
    assert _read(tmp_path, "[registry]\ngrace = 5\n").registry.etcd is None


def test_etcd_settings_apply(tmp_path: Path) -> None:
    settings = _read(
        tmp_path,
        '[registry]\nreplica = "r1"\n\n[registry.etcd]\n'
        'endpoints = ["http://127.0.0.1:2379", "http://10.0.0.2:2379/"]\n'
        'prefix = "/mesh/prod/"\nlease-ttl = "15s"\ntimeout = 0.5\n',
    )
    assert settings.registry.replica == "r1"
    assert settings.registry.etcd == EtcdSettings(
        endpoints=("http://127.0.0.1:2379", "http://10.0.0.2:2379"),
        prefix="/mesh/prod",
        lease_ttl=timedelta(seconds=15),
        timeout=timedelta(seconds=0.5),
    )
    defaults = _read(tmp_path, '[registry.etcd]\nendpoints = ["http://[::1]:2379"]\n')
    assert defaults.registry.etcd == EtcdSettings(endpoints=("http://[::1]:2379",))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[registry.etcd]\nprefix = "/x"\n', ":1: registry.etcd: needs endpoints"),
        (
            '[registry.etcd]\nendpoints = "http://127.0.0.1:2379"\n',
            ":2: registry.etcd.endpoints: must be a list of etcd client URLs",
        ),
        (
            '[registry.etcd]\nendpoints = ["127.0.0.1:2379"]\n',
            ":2: registry.etcd.endpoints: must be a list of etcd client URLs",
        ),
        ("[registry.etcd]\nendpoints = []\n", ":2: registry.etcd.endpoints: must be a list"),
        (
            '[registry.etcd]\nendpoints = ["http://e:2379"]\nprefix = "xdsd"\n',
            ":3: registry.etcd.prefix: must be a key prefix starting with '/'",
        ),
        (
            '[registry.etcd]\nendpoints = ["http://e:2379"]\nlease_ttl = 1\n',
            ":3: registry.etcd.lease_ttl: must be from 2s to 3600s (got 1s)",
        ),
        (
            '[registry.etcd]\nendpoints = ["http://e:2379"]\nlease_ttl = "soon"\n',
            ":3: registry.etcd.lease_ttl: must be a duration",
        ),
        (
            '[registry.etcd]\nendpoints = ["http://e:2379"]\ntimeout = 0\n',
            ":3: registry.etcd.timeout: must be from 0.05s to 60s (got 0s)",
        ),
        (
            '[registry.etcd]\nendpoints = ["http://e:2379"]\nlease_ttl = 3\ntimeout = "2s"\n',
            ":4: registry.etcd.timeout: timeout (2s) must be at most a third of lease_ttl (3s)",
        ),
        (
            '[registry.etcd]\nendpoints = ["http://e:2379"]\nprefixx = "/a"\n',
            ":3: registry.etcd.prefixx: unknown setting; did you mean 'prefix'?",
        ),
        ("[registry]\netcd = 3\n", ":2: registry.etcd: must be a table"),
    ],
)
def test_bad_etcd_settings_name_line_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        _read(tmp_path, text)
    assert f"xdsd.toml{fragment}" in str(info.value)
