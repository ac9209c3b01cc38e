"""The Dask scheduler's mutual TLS: a CA of the stack's own, a scheduler certificate, a worker certificate.

Made at the first start into <state>/tls (keys mode 600) with the `cryptography` package.
The CA signs both certificates and its key is then thrown away: nothing can sign another
certificate later, and nothing secret beyond the two keys stays on disk. Dask checks the
peer's certificate against the CA on every connection, in both directions (a client or
worker without a certificate signed by this CA is refused); it does not check host names,
so the certificates name the stack's address for readers only. Clients and workers share
the worker certificate, which is what a worker kit carries.
"""
import datetime
import ipaddress
from pathlib import Path

from stack.settings import TLS_FILES, Stack, write_private

VALID_DAYS = 3650


def ensure_certificates(stack: Stack) -> bool:
    """Make the CA and both certificates unless all are there; True if made."""
    folder = stack.tls_dir
    if all((folder / name).exists() for name in TLS_FILES.values()):
        return False
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vae-pipeline stack"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def pem(key) -> str:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("vae-stack CA")).issuer_name(name("vae-stack CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def issue(common: str) -> tuple[str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            x509.CertificateBuilder().subject_name(name(common)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            # Both usages: each side of a Dask connection may be the TLS client or the server.
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(stack.host))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
        return certificate.public_bytes(serialization.Encoding.PEM).decode(), pem(key)

    for role in ("scheduler", "worker"):
        certificate, key = issue(f"vae-stack {role}")
        write_private(folder / TLS_FILES[f"{role}_key"], key)
        (folder / TLS_FILES[f"{role}_cert"]).write_text(certificate)
    (folder / TLS_FILES["ca"]).write_text(ca.public_bytes(serialization.Encoding.PEM).decode())
    return True


def copy_for_workers(stack: Stack, folder: Path) -> None:
    """The CA certificate and the worker certificate and key, into `folder` (a worker kit's tls/)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    for name in ("ca", "worker_cert", "worker_key"):
        source = stack.tls_dir / TLS_FILES[name]
        write_private(folder / TLS_FILES[name], source.read_text())
