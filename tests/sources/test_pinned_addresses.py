"""Virtual addresses files pin: an xdsd Service's ``address`` and a ServiceEntry's
``addresses`` read into ``Service.addresses``, hostile values refused at their line, and
the cross-check refusing one address that two services' TCP ports would share."""

from __future__ import annotations

from pathlib import Path

import pytest

from xdsd.errors import ConfigError
from xdsd.model import Service
from xdsd.sources import load_directory


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _services(tmp_path: Path, files: dict[str, str]) -> dict[str, Service]:
    _write(tmp_path, files)
    return {str(s.key): s for s in load_directory(str(tmp_path)).mesh.services}


def _errors(tmp_path: Path, files: dict[str, str]) -> list[str]:
    _write(tmp_path, files)
    with pytest.raises(ConfigError) as info:
        load_directory(str(tmp_path))
    return [str(p).removeprefix(str(tmp_path) + "/") for p in info.value.problems]


def service(name: str, address: str | None, ports: str = "{number: 5432, protocol: TCP}") -> str:
    pin = f"address: {address!r}\n" if address is not None else ""
    return (
        f"kind: Service\nname: {name}\n{pin}ports: [{ports}]\nendpoints: [{{address: 10.0.0.1}}]\n"
    )


def entry(name: str, hosts: str, addresses: str, ports: str, namespace: str = "default") -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n"
        f"  hosts: [{hosts}]\n  addresses: [{addresses}]\n  ports: [{ports}]\n"
        "  resolution: DNS\n"
    )


def test_a_service_pins_one_address_ipv4_or_ipv6(tmp_path: Path) -> None:
    found = _services(
        tmp_path,
        {
            "a.yaml": service("db", "127.240.1.2"),
            "b.toml": 'kind = "Service"\nname = "v6"\naddress = "fd00:ec::7"\n'
            '[[ports]]\nnumber = 80\nprotocol = "HTTP"\n[[endpoints]]\naddress = "10.0.0.2"\n',
            "c.yaml": service("plain", None),
        },
    )
    assert found["Service default/db"].addresses == ("127.240.1.2",)
    assert found["Service default/v6"].addresses == ("fd00:ec::7",)
    assert found["Service default/plain"].addresses == ()


def test_an_entry_gives_its_addresses_to_every_host_without_a_warning(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "e.yaml": entry(
                "ext",
                "a.example, b.example",
                "10.9.0.0/24, 10.9.1.1",
                "{number: 443, name: tls, protocol: TLS}",
            )
        },
    )
    result = load_directory(str(tmp_path))
    by_host = {s.name: s.addresses for s in result.mesh.services}
    assert by_host == {
        "a.example": ("10.9.0.0/24", "10.9.1.1"),
        "b.example": ("10.9.0.0/24", "10.9.1.1"),
    }
    assert [w for w in result.warnings if w.field.startswith("addresses")] == []


@pytest.mark.parametrize(
    "value",
    [
        "10.0.0.0/24",  # a range is no address a Service can pin
        "10.0.0.1/32",
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "ff02::1",
        "255.255.255.255",
        "fe80::1%eth0",
        "reviews.example",
        "10.0.0.256",
        " 10.0.0.1",
        "10.0." * 2_000 + "1",
    ],
)
def test_a_bad_service_address_is_refused_at_its_line(tmp_path: Path, value: str) -> None:
    errors = _errors(tmp_path, {"a.yaml": service("db", value)})
    assert len(errors) == 1 and errors[0].startswith(
        "a.yaml:3: address: must be one IP address, IPv4 or IPv6"
    ), errors


@pytest.mark.parametrize("value", ["3", "true", "[10.0.0.1]", "{a: 1}"])
def test_a_service_address_of_another_type_is_refused(tmp_path: Path, value: str) -> None:
    text = f"kind: Service\nname: db\naddress: {value}\nports: [{{number: 80, protocol: HTTP}}]\n"
    errors = _errors(tmp_path, {"a.yaml": text})
    assert errors[0].startswith("a.yaml:3: address: must be a string"), errors


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0.0.0.0/0", "must be an IP address or a CIDR range"),
        ("::/0", "must be an IP address or a CIDR range"),
        ("224.0.0.1", "must be an IP address or a CIDR range"),
        ("10.0.0.1/33", "must be an IP address or a CIDR range"),
        ("db.example", "must be an IP address or a CIDR range"),
        ("", "must be a non-empty string"),
    ],
)
def test_a_bad_entry_address_is_refused_at_its_line(
    tmp_path: Path, value: str, message: str
) -> None:
    text = entry(
        "ext", "a.example", f"10.1.0.1, {value!r}", "{number: 80, name: http, protocol: HTTP}"
    )
    errors = _errors(tmp_path, {"e.yaml": text})
    assert any(e.startswith(f"e.yaml:6: addresses[1]: {message}") for e in errors), errors


def test_an_entry_address_listed_twice_is_refused(tmp_path: Path) -> None:
    text = entry(
        "ext", "a.example", "10.1.0.1, 10.1.0.1/32", "{number: 80, name: http, protocol: HTTP}"
    )
    errors = _errors(tmp_path, {"e.yaml": text})
    assert errors == ["e.yaml:6: addresses[1]: '10.1.0.1/32' is listed twice (addresses[0])"]


# -- the cross-check ----------------------------------------------------------------------


def test_two_tcp_services_on_one_address_and_port_are_refused(tmp_path: Path) -> None:
    errors = _errors(
        tmp_path,
        {
            "a.yaml": service("alpha", "127.240.0.5"),
            "sub/b.yaml": "# the other\n" + service("beta", "127.240.0.5"),
        },
    )
    assert errors == [
        "sub/b.yaml:4: address: address 127.240.0.5 is also pinned by Service default/alpha "
        f"({tmp_path}/a.yaml:3) and both have port 5432, TCP on at least one side: a "
        "connection to 127.240.0.5:5432 cannot say which service it is for (HTTP ports may "
        "share an address, told apart by Host; TLS ports by SNI); give one of them another "
        "address, or none"
    ]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("{number: 80, protocol: HTTP}", "{number: 80, protocol: HTTP2}"),  # by Host
        ("{number: 443, protocol: TLS}", "{number: 443, protocol: TLS}"),  # by SNI
        ("{number: 80, protocol: HTTP}", "{number: 443, protocol: TLS}"),
        ("{number: 5432, protocol: TCP}", "{number: 5433, protocol: TCP}"),  # other ports
        ("{number: 80, protocol: GRPC}", "{number: 80, protocol: TLS}"),
    ],
)
def test_services_a_connection_tells_apart_may_share_an_address(
    tmp_path: Path, first: str, second: str
) -> None:
    found = _services(
        tmp_path,
        {
            "a.yaml": service("alpha", "10.7.0.1", first),
            "b.yaml": service("beta", "10.7.0.1", second),
        },
    )
    assert found["Service default/alpha"].addresses == found["Service default/beta"].addresses


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("{number: 443, protocol: TLS}", "{number: 443, protocol: TCP}"),
        ("{number: 80, protocol: HTTP}", "{number: 80, protocol: TCP}"),
        ("{number: 80, protocol: HTTP}, {number: 9, protocol: TCP}", "{number: 9, protocol: TCP}"),
    ],
)
def test_a_tcp_port_on_either_side_clashes(tmp_path: Path, first: str, second: str) -> None:
    errors = _errors(
        tmp_path,
        {
            "a.yaml": service("alpha", "10.7.0.1", first),
            "b.yaml": service("beta", "10.7.0.1", second),
        },
    )
    assert len(errors) == 1 and errors[0].startswith(
        "b.yaml:3: address: address 10.7.0.1 is also pinned by Service default/alpha"
    )


def test_addresses_compare_as_addresses(tmp_path: Path) -> None:
    """``FD00::1`` and ``fd00::1/128`` are one address; a range is no address."""
    errors = _errors(
        tmp_path,
        {
            "a.yaml": service("alpha", "FD00::1"),
            "e.yaml": entry(
                "ext",
                "x.example",
                "10.8.0.0/16, fd00::1/128",
                "{number: 5432, name: pg, protocol: TCP}",
            ),
        },
    )
    assert len(errors) == 1, errors
    assert errors[0].startswith(
        "e.yaml:6: addresses[1]: address fd00::1 is also pinned by Service default/alpha "
        f"({tmp_path}/a.yaml:3) and both have port 5432"
    ), errors
    # A range shared by TCP services is not a virtual address: no error.
    (tmp_path / "a.yaml").write_text(service("alpha", "10.8.0.1"))
    found = _services(
        tmp_path,
        {
            "e.yaml": entry(
                "ext", "x.example", "10.8.0.0/16", "{number: 5432, name: pg, protocol: TCP}"
            )
        },
    )
    assert found["ServiceEntry default/ext/x.example"].addresses == ("10.8.0.0/16",)


def test_two_hosts_of_one_entry_with_a_tcp_port_clash(tmp_path: Path) -> None:
    text = entry(
        "ext", "a.example, b.example", "10.9.1.1", "{number: 3306, name: my, protocol: TCP}"
    )
    errors = _errors(tmp_path, {"e.yaml": text})
    assert len(errors) == 1 and errors[0].startswith(
        "e.yaml:6: addresses[0]: address 10.9.1.1 is also pinned by ServiceEntry "
        f"default/ext/a.example ({tmp_path}/e.yaml:6)"
    ), errors
    # TLS hosts share the address by SNI.
    text = entry(
        "ext", "a.example, b.example", "10.9.1.1", "{number: 443, name: tls, protocol: TLS}"
    )
    assert len(_services(tmp_path, {"e.yaml": text})) == 2


def test_namespaces_do_not_separate_addresses(tmp_path: Path) -> None:
    """An address is one on every sidecar, whatever namespace pins it."""
    errors = _errors(
        tmp_path,
        {
            "a.yaml": service("db", "10.3.0.1"),
            "b.yaml": service("db", "10.3.0.1").replace(
                "name: db\n", "name: db\nnamespace: other\n"
            ),
        },
    )
    assert len(errors) == 1 and "is also pinned by Service default/db" in errors[0], errors


def test_fixing_one_side_clears_the_error_incrementally(tmp_path: Path) -> None:
    from xdsd.sources import DirectoryLoader

    _write(
        tmp_path, {"a.yaml": service("alpha", "10.4.0.1"), "b.yaml": service("beta", "10.4.0.1")}
    )
    loader = DirectoryLoader(str(tmp_path))
    with pytest.raises(ConfigError):
        loader.load()
    (tmp_path / "a.yaml").write_text(service("alpha", "10.4.0.2"))
    mesh = loader.load({str(tmp_path / "a.yaml")}).mesh
    assert [s.addresses for s in mesh.services] == [("10.4.0.2",), ("10.4.0.1",)]
    (tmp_path / "a.yaml").write_text(service("alpha", "10.4.0.1"))
    with pytest.raises(ConfigError) as info:
        loader.load({str(tmp_path / "a.yaml")})
    assert "is also pinned by Service default/alpha" in str(info.value)


def test_dropping_the_address_clears_the_other_sides_error(tmp_path: Path) -> None:
    """A service that stops pinning an address frees it for the one that clashed with it
    (its old pin is forgotten although it now pins nothing), and pinning it again
    brings the error back."""
    from xdsd.sources import DirectoryLoader

    _write(
        tmp_path, {"a.yaml": service("alpha", "10.4.0.1"), "b.yaml": service("beta", "10.4.0.1")}
    )
    loader = DirectoryLoader(str(tmp_path))
    with pytest.raises(ConfigError):
        loader.load()
    (tmp_path / "a.yaml").write_text(service("alpha", None))
    mesh = loader.load({str(tmp_path / "a.yaml")}).mesh
    assert [s.addresses for s in mesh.services] == [(), ("10.4.0.1",)]
    (tmp_path / "a.yaml").write_text(service("alpha", "10.4.0.1"))
    with pytest.raises(ConfigError) as info:
        loader.load({str(tmp_path / "a.yaml")})
    assert "is also pinned by Service default/alpha" in str(info.value)
