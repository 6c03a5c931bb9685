"""Certificates and keys for the local control plane and its scheduler extender.

One CA signs the API server's serving certificate and the admin's client certificate
(``O=system:masters``); a separate RSA key pair signs service-account tokens. The extender gets a
CA of its own (:func:`make_extender_pki`), as the chart provisions it: a serving certificate for
the extender and a client certificate for kube-scheduler, both signed by it. Everything is made
fresh for each cluster folder, with the ``cryptography`` package, so no ``openssl`` is needed.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    admin_cert: Path
    admin_key: Path
    sa_public: Path
    sa_private: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
             ) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY))


@dataclass(frozen=True)
class ExtenderPki:
    """The extender's mutual TLS: one CA, the extender's serving pair, the scheduler's client
    pair (the files ``--tls-cert/--tls-key/--tls-client-ca`` and the scheduler's ``tlsConfig``
    name)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def in_folder(cls, folder: Path) -> ExtenderPki:
        """Where :func:`make_extender_pki` writes the files in ``folder``."""
        return cls(ca_cert=folder / "ca.crt", server_cert=folder / "extender.crt",
                   server_key=folder / "extender.key", client_cert=folder / "scheduler.crt",
                   client_key=folder / "scheduler.key")


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca,
                         content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, encipher_only=False,
                         decipher_only=False)


def make_extender_pki(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
                      client_name: str = "exo-gpu-scheduler") -> ExtenderPki:
    """Write a CA, a serving certificate for ``hosts`` and a client certificate for
    kube-scheduler (``client_name``), as the chart's generated certificates are."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"exo-gpu-extender-ca-{folder.name}")
    ca_cert = (_builder(ca_name, ca_name, ca_key.public_key())
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(_key_usage(ca=True), critical=True)
               .sign(ca_key, hashes.SHA256()))
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (_builder(_name("exo-gpu-extender"), ca_name, server_key.public_key())
                   .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                   .add_extension(_key_usage(ca=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                  critical=False)
                   .sign(ca_key, hashes.SHA256()))
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = (_builder(_name(client_name), ca_name, client_key.public_key())
                   .add_extension(_key_usage(ca=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                                  critical=False)
                   .sign(ca_key, hashes.SHA256()))
    pki = ExtenderPki.in_folder(folder)
    _write_cert(pki.ca_cert, ca_cert)
    _write_cert(pki.server_cert, server_cert)
    _write_key(pki.server_key, server_key)
    _write_cert(pki.client_cert, client_cert)
    _write_key(pki.client_key, client_key)
    return pki


def make_pki(folder: Path, extra_ips: Sequence[str] = ()) -> Pki:
    """Write a CA, a serving certificate for 127.0.0.1 (and ``extra_ips``), an admin client
    certificate and SA keys."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("exo-gpu-local-ca")
    ca_cert = (_builder(ca_name, ca_name, ca_key.public_key())
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                            crl_sign=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))

    server_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"), x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default"), x509.DNSName("kubernetes.default.svc"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
    ]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in dict.fromkeys(extra_ips)
             if ip not in ("127.0.0.1", "10.0.0.1")]
    server_cert = (_builder(_name("kube-apiserver"), ca_name, server_key.public_key())
                   .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                  critical=False)
                   .sign(ca_key, hashes.SHA256()))

    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin_cert = (_builder(_name("exo-gpu-admin", "system:masters"), ca_name,
                           admin_key.public_key())
                  .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                                 critical=False)
                  .sign(ca_key, hashes.SHA256()))

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    pki = Pki(ca_cert=folder / "ca.crt", ca_key=folder / "ca.key",
              server_cert=folder / "apiserver.crt", server_key=folder / "apiserver.key",
              admin_cert=folder / "admin.crt", admin_key=folder / "admin.key",
              sa_public=folder / "sa.pub", sa_private=folder / "sa.key")
    _write_cert(pki.ca_cert, ca_cert)
    _write_key(pki.ca_key, ca_key)
    _write_cert(pki.server_cert, server_cert)
    _write_key(pki.server_key, server_key)
    _write_cert(pki.admin_cert, admin_cert)
    _write_key(pki.admin_key, admin_key)
    _write_key(pki.sa_private, sa_key)
    pki.sa_public.write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return pki
