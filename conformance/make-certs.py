#!/usr/bin/env python3
"""Writes the conformance kit's certificates from certs/recipe.json.

    python3 conformance/make-certs.py OUT_DIR

For each authority, OUT_DIR/NAME.pem (its certificate) and NAME.key; for each
leaf, OUT_DIR/NAME.pem (the chain the client sends: the leaf, then the
intermediates listed in "send") and NAME.key. Keys are fresh ECDSA P-256
keys on every run, so serial numbers and fingerprints differ between runs;
nothing in the kit depends on them. Needs the Python "cryptography"
package (Debian: python3-cryptography).
"""

import datetime
import json
import pathlib
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

EKU = {"clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH, "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH}
NOT_BEFORE = "2015-01-01T00:00:00Z"
NOT_AFTER = "2099-12-31T00:00:00Z"


def instant(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def certificate(spec, key, issuer, is_ca):
    """`issuer` is (certificate, key), or None for a self-signed one."""
    subject = name(spec["cn"])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(instant(spec.get("not_before", NOT_BEFORE)))
        .not_valid_after(instant(spec.get("not_after", NOT_AFTER)))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        if spec.get("permitted_dns"):
            builder = builder.add_extension(
                x509.NameConstraints([x509.DNSName(d) for d in spec["permitted_dns"]], None), critical=True
            )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        ).add_extension(x509.ExtendedKeyUsage([EKU[e] for e in spec.get("eku", ["clientAuth"])]), critical=False)
        if spec.get("dns"):
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(d) for d in spec["dns"]]), critical=False
            )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), critical=False
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    recipe = json.loads((pathlib.Path(__file__).parent / "certs" / "recipe.json").read_text())
    made = {}
    for spec in recipe["authorities"]:
        key = ec.generate_private_key(ec.SECP256R1())
        issuer = made[spec["issuer"]] if spec.get("issuer") else None
        cert = certificate(spec, key, issuer, True)
        made[spec["name"]] = (cert, key)
        (out / f"{spec['name']}.pem").write_bytes(pem(cert))
        (out / f"{spec['name']}.key").write_bytes(key_pem(key))
    for spec in recipe["leaves"]:
        key = ec.generate_private_key(ec.SECP256R1())
        issuer = None if spec.get("self_signed") else made[spec["issuer"]]
        cert = certificate(spec, key, issuer, False)
        chain = pem(cert) + b"".join(pem(made[i][0]) for i in spec.get("send", []))
        (out / f"{spec['name']}.pem").write_bytes(chain)
        (out / f"{spec['name']}.key").write_bytes(key_pem(key))


if __name__ == "__main__":
    main()
