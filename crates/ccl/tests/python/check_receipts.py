"""Checks ccl receipts with the external tools: the Azure SDK's verify_receipt and the ccf
package's receipt functions. Input: a JSON file with a list of cases
{"receipt": <Azure-shape receipt>, "ccf": <CCF-shape receipt>, "claims": [...] | null}
and the service certificate PEM. Prints "checked N" on success, exits non-zero otherwise."""

import copy
import hashlib
import json
import sys

from azure.confidentialledger.receipt import verify_receipt
from cryptography.x509 import load_pem_x509_certificate
import ccf.receipt


def ccf_check(r, service_cert):
    lc = r["leaf_components"]
    leaf = hashlib.sha256(
        bytes.fromhex(lc["write_set_digest"])
        + hashlib.sha256(lc["commit_evidence"].encode()).digest()
        + bytes.fromhex(lc["claims_digest"])
    ).hexdigest()
    root = ccf.receipt.root(leaf, r["proof"])
    node_cert = load_pem_x509_certificate(r["cert"].encode())
    ccf.receipt.verify(root, r["signature"], node_cert)
    ccf.receipt.check_endorsements(node_cert, service_cert, [])


def main():
    cases = json.load(open(sys.argv[1]))
    service_pem = open(sys.argv[2]).read()
    service_cert = load_pem_x509_certificate(service_pem.encode())
    for i, case in enumerate(cases):
        verify_receipt(case["receipt"]["receipt"], service_pem, application_claims=case["claims"])
        ccf_check(case["ccf"], service_cert)
        # The same checks must reject an altered receipt, or passing them proves nothing.
        bad = copy.deepcopy(case["receipt"]["receipt"])
        wsd = bad["leafComponents"]["writeSetDigest"]
        bad["leafComponents"]["writeSetDigest"] = ("1" if wsd[0] != "1" else "2") + wsd[1:]
        try:
            verify_receipt(bad, service_pem, application_claims=case["claims"])
        except Exception:
            pass
        else:
            sys.exit(f"case {i}: the SDK accepted an altered receipt")
    print(f"checked {len(cases)}")


if __name__ == "__main__":
    main()
