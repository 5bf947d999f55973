"""``[mesh.dns]``: the block of virtual addresses, the upstream resolvers and the TTL of
mesh answers in the settings, every mistake an error at its line."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import deadline, fuzz_settings
from xdsd.errors import ConfigError
from xdsd.model.mesh_config import DEFAULT_VIRTUAL_ADDRESSES, MeshDNS
from xdsd.settings import Settings
from xdsd.translate.virtual_addresses import AddressBlock


def _load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "xdsd.toml"
    path.write_text(text)
    return Settings.from_file(str(path))


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    return [str(p).split("xdsd.toml", 1)[1] for p in info.value.problems]


def test_defaults_without_the_table(tmp_path: Path) -> None:
    dns = _load(tmp_path, "").mesh.dns
    assert dns == MeshDNS()
    assert dns.enabled and dns.virtual_addresses == DEFAULT_VIRTUAL_ADDRESSES
    assert (dns.virtual_addresses_v6, dns.upstream, dns.ttl) == ("", (), timedelta(seconds=30))


def test_every_key(tmp_path: Path) -> None:
    dns = _load(
        tmp_path,
        "[mesh.dns]\n"
        "enabled = false\n"
        'virtual_addresses = "10.99.0.0/20"\n'
        'virtual-addresses-v6 = "fd00:ec::/116"\n'
        'upstream = ["1.1.1.1", "9.9.9.9:5353", "[2001:db8::53]:53", "2001:db8::54"]\n'
        'ttl = "2m"\n',
    ).mesh.dns
    assert dns == MeshDNS(
        enabled=False,
        virtual_addresses="10.99.0.0/20",
        virtual_addresses_v6="fd00:ec::/116",
        upstream=("1.1.1.1", "9.9.9.9:5353", "[2001:db8::53]:53", "2001:db8::54"),
        ttl=timedelta(minutes=2),
    )
    # A problem of the allocation names the line of virtual_addresses.
    assert dns.origin.path == str(tmp_path / "xdsd.toml") and dns.origin.line == 3


def test_ttl_in_seconds_and_the_table_line_without_a_block(tmp_path: Path) -> None:
    dns = _load(tmp_path, "[mesh]\n[mesh.dns]\nttl = 0\n").mesh.dns
    assert dns.ttl == timedelta(0) and dns.virtual_addresses == DEFAULT_VIRTUAL_ADDRESSES
    assert dns.origin.line == 2


HOSTILE_BLOCKS = [
    '"127.240.0.1/16"',  # host bits set
    '"127.240.0.0"',  # no prefix
    '"127.0.0.0/7"',  # larger than a /8
    '"127.0.0.0/31"',  # smaller than two addresses
    '"127.0.0.0/32"',
    '"fd00::/112"',  # IPv6 in the IPv4 key
    '"127.240.0.0/16 "',
    '"127.240.0.0/016x"',
    '"1271.240.0.0/16"',
    '"' + "1" * 5000 + '"',
    '"127.240.0.0/99999999999999999999999999"',
    "16",
    "true",
    '["127.240.0.0/16"]',
    '""',
]


@pytest.mark.parametrize("value", HOSTILE_BLOCKS)
def test_bad_blocks_are_refused_at_their_line(tmp_path: Path, value: str) -> None:
    problems = _problems(tmp_path, f"[mesh.dns]\nenabled = true\nvirtual_addresses = {value}\n")
    assert any(
        p.startswith(":3: mesh.dns.virtual_addresses: must be an IPv4 network") for p in problems
    ), problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'virtual_addresses_v6 = "fd00::1/112"\n',
            ":2: mesh.dns.virtual_addresses_v6: must be an IPv6",
        ),
        (
            'virtual_addresses_v6 = "10.0.0.0/8"\n',
            ":2: mesh.dns.virtual_addresses_v6: must be an IPv6",
        ),
        (
            'virtual_addresses_v6 = "fd00::/127"\n',
            ":2: mesh.dns.virtual_addresses_v6: must be an IPv6",
        ),
        (
            'virtual_addresses_v6 = "fd00::/120"\n',
            ":2: mesh.dns.virtual_addresses_v6: has fewer addresses than virtual_addresses "
            "(127.240.0.0/16): give it at least /112",
        ),
        ('upstream = "1.1.1.1"\n', ":2: mesh.dns.upstream: must be a list of at most 8"),
        ('upstream = ["dns.google"]\n', ":2: mesh.dns.upstream: must be a list"),
        ('upstream = ["1.1.1.1:0"]\n', ":2: mesh.dns.upstream: must be a list"),
        ('upstream = ["1.1.1.1:65536"]\n', ":2: mesh.dns.upstream: must be a list"),
        ('upstream = ["1.1.1.1:' + "5" * 400 + '"]\n', ":2: mesh.dns.upstream: must be a list"),
        ('upstream = ["2001:db8::1:53:x"]\n', ":2: mesh.dns.upstream: must be a list"),
        ('upstream = ["[1.1.1.1]:53"]\n', ":2: mesh.dns.upstream: must be a list"),
        ('upstream = [""]\n', ":2: mesh.dns.upstream: must be a list"),
        ("upstream = [53]\n", ":2: mesh.dns.upstream: must be a list"),
        (
            "upstream = [" + ", ".join(f'"10.0.0.{i}"' for i in range(9)) + "]\n",
            ":2: mesh.dns.upstream: must be a list of at most 8",
        ),
        ('ttl = "1.5s"\n', ":2: mesh.dns.ttl: must be whole seconds from 0s to 24h (got 1.5s)"),
        ('ttl = "25h"\n', ":2: mesh.dns.ttl: must be whole seconds from 0s to 24h"),
        ("ttl = -1\n", ":2: mesh.dns.ttl: must be a non-negative duration"),
        ('ttl = "-5s"\n', ":2: mesh.dns.ttl: must not be negative"),
        ('ttl = "soon"\n', ":2: mesh.dns.ttl: must be a duration"),
        ("ttl = inf\n", ":2: mesh.dns.ttl: must be a non-negative duration"),
        ("ttl = nan\n", ":2: mesh.dns.ttl: must be a non-negative duration"),
        ('enabled = "yes"\n', ":2: mesh.dns.enabled: must be true or false"),
        (
            "virtual_adresses = 1\n",
            ":2: mesh.dns.virtual_adresses: unknown setting; did you mean 'virtual_addresses'?",
        ),
        (
            'virtual_addresses = "10.0.0.0/8"\nvirtual-addresses = "10.0.0.0/8"\n',
            ":3: mesh.dns.virtual-addresses: repeats",
        ),
    ],
)
def test_mistakes_at_their_line(tmp_path: Path, text: str, expected: str) -> None:
    problems = _problems(tmp_path, "[mesh.dns]\n" + text)
    assert any(p.startswith(expected) for p in problems), problems


def test_not_a_table(tmp_path: Path) -> None:
    assert any(
        p.startswith(":2: mesh.dns: must be a table")
        for p in _problems(tmp_path, "[mesh]\ndns = 1\n")
    )


def test_every_mistake_is_reported_in_one_pass(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        '[mesh.dns]\nvirtual_addresses = "x"\nupstream = ["y"]\nttl = "z"\nenabled = 1\n',
    )
    assert sorted(p.split(":")[1] for p in problems) == ["2", "3", "4", "5"], problems


_DNS_KEYS = st.sampled_from(
    [
        "enabled",
        "virtual_addresses",
        "virtual-addresses",
        "virtual_addresses_v6",
        "upstream",
        "ttl",
        "bogus",
    ]
)
_DNS_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(
        [
            "127.240.0.0/16",
            "10.0.0.0/30",
            "10.0.0.0/31",
            "0.0.0.0/0",
            "fd00::/112",
            "fd00::/8",
            "::/0",
            "1.1.1.1",
            "1.1.1.1:53",
            "[::1]:53",
            "[::1]",
            "1.1.1.1:99999999999999999999",
            "30s",
            "25h",
            "-1s",
        ]
    ),
)
_DNS_VALUES = st.recursive(
    _DNS_SCALARS,
    lambda inner: st.lists(inner, max_size=9) | st.dictionaries(_DNS_KEYS, inner, max_size=3),
    max_leaves=12,
)


@fuzz_settings()
@given(st.dictionaries(_DNS_KEYS, _DNS_VALUES, max_size=6))
def test_fuzz_dns_tables_are_read_or_refused_by_name(table: dict[str, object]) -> None:
    """Any [mesh.dns] table gives a MeshDNS the allocation can use, or a ConfigError
    whose every problem names a key under mesh.dns (never another exception)."""
    with deadline("test_fuzz_dns_tables_are_read_or_refused_by_name"):
        try:
            dns = Settings().merged({"mesh": {"dns": table}}, source="s").mesh.dns
        except ConfigError as e:
            assert all(p.field.startswith("mesh.dns") for p in e.problems), e
            return
        block = AddressBlock.parse(dns.virtual_addresses)
        assert 2 <= block.size <= 2**24 - 2
        if dns.virtual_addresses_v6:
            assert AddressBlock.parse(dns.virtual_addresses_v6).size >= block.size
        assert len(dns.upstream) <= 8
        assert 0 <= dns.ttl.total_seconds() <= 86400
