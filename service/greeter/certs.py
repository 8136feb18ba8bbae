"""Self-signed certificates for local TLS: tests, the rehearsal gateway and
the gitops walkthrough's ``grpc.example.com`` secret.

    python -m greeter.certs OUT_DIR [--host grpc.example.com] [--client]
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(
    folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Pair:
    folder.mkdir(parents=True, exist_ok=True)
    pair = Pair(folder / f"{stem}.crt", folder / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(_key_pem(key))
    pair.key.chmod(0o600)
    return pair


def _builder(name: str, issuer: x509.Name, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def make_ca(folder: Path, name: str = "greeter test CA", days: int = 30) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(name, subject, days)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return _write(folder, "ca", cert, key)


def make_leaf(
    folder: Path,
    stem: str,
    hosts: list[str],
    ca: Pair | None = None,
    client: bool = False,
    days: int = 30,
    also_client: bool = False,
) -> Pair:
    """A server (or client) certificate for ``hosts``, signed by ``ca`` or self-signed.

    ``also_client`` makes a server certificate that may authenticate as a client too, as the
    chart's probes need when they present the pod's own certificate to an mTLS server.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    if ca is not None:
        ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        signer = serialization.load_pem_private_key(ca.key.read_bytes(), None)
        issuer = ca_cert.subject
    else:
        signer, issuer = key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
    if also_client and not client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    cert = (
        _builder(hosts[0], issuer, days)
        .public_key(key.public_key())
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(signer, hashes.SHA256())  # type: ignore[arg-type]
    )
    return _write(folder, stem, cert, key)


def main() -> int:
    parser = argparse.ArgumentParser(description="make a self-signed TLS certificate")
    parser.add_argument("out", type=Path, help="folder for tls.crt and tls.key")
    parser.add_argument("--host", action="append", default=[], help="DNS name or IP (repeatable)")
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args()
    pair = make_leaf(args.out, "tls", args.host or ["grpc.example.com"], days=args.days)
    print(f"wrote {pair.cert} and {pair.key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
