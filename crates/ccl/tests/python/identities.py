"""Test identities: a self-signed certificate and its key in one PEM, as the Azure SDK takes them."""

import datetime
import hashlib
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def identity(tmp, name, curve=ec.SECP384R1):
    """Writes TMP/NAME.pem; returns its path and the Azure user id (the certificate's SHA-256
    fingerprint, AB:CD:...)."""
    key = ec.generate_private_key(curve())
    digest = hashes.SHA384() if curve is ec.SECP384R1 else hashes.SHA256()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, digest)
    )
    path = os.path.join(tmp, f"{name}.pem")
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    der = cert.public_bytes(serialization.Encoding.DER)
    return path, ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
