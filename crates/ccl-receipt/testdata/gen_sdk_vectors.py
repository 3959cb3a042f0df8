"""Generates sdk-vectors.json: synthetic receipts and application claims, each checked with the
Azure SDK (azure-confidentialledger's `verify_receipt` / `compute_claims_digest`) at generation
time, covering what the real receipts do not: service endorsement chains, non-zero claims digests,
right-hand proof steps, P-384 node keys.

Run with the SDK installed: python gen_sdk_vectors.py > sdk-vectors.json
"""

import base64
import datetime
import hashlib
import json
import os

from azure.confidentialledger.receipt import compute_claims_digest, verify_receipt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID

NOW = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)


def cert(subject_key, cn, issuer_key, issuer_cn, ca, hash_alg=hashes.SHA256()):
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return b.sign(issuer_key, hash_alg).public_bytes(serialization.Encoding.PEM).decode()


def spki_hash(key):
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def receipt(node_key, node_cert, claims_digest, txid, proof_sides, endorsements):
    wsd = os.urandom(32)
    ce = f"ce:{txid}:{os.urandom(32).hex()}"
    cur = hashlib.sha256(
        wsd + hashlib.sha256(ce.encode()).digest() + bytes.fromhex(claims_digest)
    ).digest()
    proof = []
    for side in proof_sides:
        h = os.urandom(32)
        proof.append({side: h.hex()})
        cur = hashlib.sha256(h + cur if side == "left" else cur + h).digest()
    sig = node_key.sign(cur, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    r = {
        "cert": node_cert,
        "leafComponents": {
            "claimsDigest": claims_digest,
            "commitEvidence": ce,
            "writeSetDigest": wsd.hex(),
        },
        "nodeId": spki_hash(node_key),
        "proof": proof,
        "signature": base64.b64encode(sig).decode(),
    }
    if endorsements is not None:
        r["serviceEndorsements"] = endorsements
    return {"receipt": r, "state": "Ready", "transactionId": txid}


def sdk_ok(r, service, claims=None):
    try:
        verify_receipt(r["receipt"], service, application_claims=claims)
        return True
    except ValueError:
        return False


def main():
    claims_vectors = [
        [
            {
                "kind": "LedgerEntry",
                "ledgerEntry": {
                    "collectionId": "subledger:0",
                    "contents": "Hello world",
                    "protocol": "LedgerEntryV1",
                    "secretKey": "Jde/VvaIfyrjQ/B19P+UJCBwmcrgN7sERStoyHnYO0M=",
                },
            }
        ],
        [
            {
                "kind": "LedgerEntry",
                "ledgerEntry": {
                    "collectionId": "collection-é",
                    "contents": "{\"a\": [1, 2]} ünïcødé ✓",
                    "protocol": "LedgerEntryV1",
                    "secretKey": "",
                },
            },
            {
                "kind": "ClaimDigest",
                "digest": {"protocol": "AnyProtocol", "value": "00ff"},
            },
            {
                "kind": "LedgerEntry",
                "ledgerEntry": {
                    "collectionId": "",
                    "contents": "",
                    "protocol": "LedgerEntryV1",
                    "secretKey": base64.b64encode(bytes(range(100))).decode(),
                },
            },
        ],
        [
            {
                "kind": "ClaimDigest",
                "digest": {"protocol": "", "value": ""},
            }
        ],
    ]
    claims_out = [
        {"claims": c, "expected_claims_digest": compute_claims_digest(c)}
        for c in claims_vectors
    ]

    p256 = ec.SECP256R1()
    s0 = ec.generate_private_key(p256)
    s1 = ec.generate_private_key(p256)
    s2 = ec.generate_private_key(ec.SECP384R1())
    s0_cert = cert(s0, "CCF Service", s0, "CCF Service", True)
    s1_cert = cert(s1, "CCF Service", s1, "CCF Service", True)
    s2_cert = cert(s2, "CCF Service", s2, "CCF Service", True, hashes.SHA384())
    # Endorsements: the newer identity's key certified by the previous one.
    e1_by_s0 = cert(s1, "CCF Service", s0, "CCF Service", True)
    e2_by_s1 = cert(s2, "CCF Service", s1, "CCF Service", True, hashes.SHA256())

    n256 = ec.generate_private_key(p256)
    n384 = ec.generate_private_key(ec.SECP384R1())
    n256_by_s0 = cert(n256, "CCF Node", s0, "CCF Service", False)
    n256_by_s1 = cert(n256, "CCF Node", s1, "CCF Service", False)
    n384_by_s2 = cert(n384, "CCF Node", s2, "CCF Service", False, hashes.SHA384())

    services = {"s0": s0_cert, "s1": s1_cert, "s2": s2_cert}
    cases = [
        ("direct, claims, mixed proof", n256, n256_by_s0, claims_out[0], "3.41",
         ["left", "right", "right", "left"], None),
        ("one endorsement", n256, n256_by_s1, claims_out[1], "7.1",
         ["right"], [e1_by_s0]),
        ("two endorsements, P-384 node", n384, n384_by_s2, None, "12.345678",
         ["left", "left", "right"], [e2_by_s1, e1_by_s0]),
        ("empty proof, empty endorsements", n256, n256_by_s0, None, "1.1", [], []),
    ]
    out = []
    for name, key, ncert, claims, txid, sides, endorsements in cases:
        cd = claims["expected_claims_digest"] if claims else "00" * 32
        r = receipt(key, ncert, cd, txid, sides, endorsements)
        valid = [s for s, pem in services.items()
                 if sdk_ok(r, pem, claims["claims"] if claims else None)]
        invalid = [s for s in services if s not in valid]
        assert len(valid) == 1, (name, valid)
        case = {"name": name, "receipt": r, "sdk_valid_with": valid[0],
                "sdk_invalid_with": invalid}
        if claims:
            case["claims"] = claims["claims"]
            # The SDK refuses the receipt with any other claims.
            other = claims_out[2]["claims"]
            assert not sdk_ok(r, services[valid[0]], other)
        out.append(case)
    json.dump(
        {
            "source": "generated by gen_sdk_vectors.py; every receipt and claims digest checked "
                      "with azure-confidentialledger's verify_receipt / compute_claims_digest",
            "service_certificates": services,
            "claims": claims_out,
            "receipts": out,
        },
        fp=__import__("sys").stdout,
        indent=1,
        ensure_ascii=False,
    )


if __name__ == "__main__":
    main()
