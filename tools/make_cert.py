"""Make the self-signed ``grpc.example.com`` certificate and its ``grpc-secret`` TLS Secret.

For the ALB multi-cluster gateway walkthrough (gitops/README.md). The certificate is for
demonstration only: clients must skip verification (``grpcurl -insecure``,
``greeter load --insecure``) or trust ``tls.crt``.

    python3 tools/make_cert.py --out /tmp/grpc-cert
    kubectl apply -f /tmp/grpc-cert/grpc-secret.yaml

writes ``tls.crt``, ``tls.key`` (mode 0600) and ``grpc-secret.yaml`` (a
``kubernetes.io/tls`` Secret in namespace ``gateway-demo``). Nothing here is committed.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOST = "grpc.example.com"
SECRET = "grpc-secret"
NAMESPACE = "gateway-demo"


def make_certificate(host: str, days: int) -> tuple[bytes, bytes]:
    """A self-signed P-256 server certificate for ``host``: (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def secret_manifest(cert_pem: bytes, key_pem: bytes, name: str, namespace: str) -> str:
    """A ``kubernetes.io/tls`` Secret. JSON is valid YAML, so kubectl applies it as is."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64.b64encode(cert_pem).decode(),
            "tls.key": base64.b64encode(key_pem).decode(),
        },
    }
    return json.dumps(secret, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    parser.add_argument("--host", default=HOST, help=f"DNS name (default {HOST})")
    parser.add_argument("--name", default=SECRET, help=f"Secret name (default {SECRET})")
    parser.add_argument("--namespace", default=NAMESPACE, help=f"namespace (default {NAMESPACE})")
    parser.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    args = parser.parse_args(argv)

    cert_pem, key_pem = make_certificate(args.host, args.days)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tls.crt").write_bytes(cert_pem)
    key_path = args.out / "tls.key"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    secret_path = args.out / f"{args.name}.yaml"
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret_manifest(cert_pem, key_pem, args.name, args.namespace))
    print(f"wrote {args.out / 'tls.crt'}, {key_path} and {secret_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
