"""Writes entries with the SDK and checks them later (restart tests).
  entries.py write ENDPOINT SERVICE_CERT USER_PEM STATE_FILE MARKER N
  entries.py check ENDPOINT SERVICE_CERT USER_PEM STATE_FILE"""

import json
import sys

from azure.confidentialledger import ConfidentialLedgerCertificateCredential, ConfidentialLedgerClient
from azure.confidentialledger.receipt import verify_receipt


def client(endpoint, cert, user):
    return ConfidentialLedgerClient(
        endpoint, credential=ConfidentialLedgerCertificateCredential(user), ledger_certificate_path=cert
    )


def main():
    mode, endpoint, cert, user, state = sys.argv[1:6]
    c = client(endpoint, cert, user)
    if mode == "write":
        marker, n = sys.argv[6], int(sys.argv[7])
        written = []
        try:
            written = json.load(open(state))
        except FileNotFoundError:
            pass
        for i in range(n):
            contents = f"{marker}-{len(written)}"
            r = c.begin_create_ledger_entry({"contents": contents}).result()
            written.append([r["transactionId"], contents])
        json.dump(written, open(state, "w"))
        print(f"wrote {n}")
    else:
        written = json.load(open(state))
        service_pem = open(cert).read()
        for txid, contents in written:
            e = c.begin_get_ledger_entry(txid).result()
            assert e["entry"]["contents"] == contents, (txid, e)
            r = c.begin_get_receipt(txid).result()
            verify_receipt(r["receipt"], service_pem)
        print(f"checked {len(written)}")


if __name__ == "__main__":
    main()
