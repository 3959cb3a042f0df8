//! Disaster recovery: a new service (new identity) from the ledger of a lost one.
//!
//! `ccl recover` replays the public part of the old ledger and starts a new service in status
//! Recovering; the members vote `transition_service_to_open` naming the previous service
//! identity (WaitingForRecoveryShares), then submit their decrypted recovery shares. At the
//! threshold the shares give back the key that wrapped the old latest ledger secret, the chain
//! gives back every older one, the private state is replayed, and the service opens under its
//! new identity, which endorses the previous one so that old receipts still verify.

use ccl_gov::{GovError, Tx};
use ccl_ledger::tables;

/// The previous service identity: key [`tables::SINGLETON_KEY`], value the PEM as a JSON string
/// (CCF's map).
pub const PREVIOUS_SERVICE_IDENTITY: &str = "public:ccf.gov.service.previous_service_identity";

/// A recovering service opens only for a proposal that names the previous service identity.
pub fn check_previous_identity(tx: &mut Tx, given: Option<&str>) -> Result<(), GovError> {
    let recorded = tx
        .get(PREVIOUS_SERVICE_IDENTITY, &tables::SINGLETON_KEY)
        .and_then(|v| serde_json::from_slice::<String>(&v).ok())
        .ok_or_else(|| GovError::internal("a recovering service without a previous identity"))?;
    let given = given.ok_or_else(|| {
        GovError::bad(
            "MissingPreviousServiceIdentity",
            "opening a recovering service requires previous_service_identity (the certificate \
             of the service whose ledger it recovers)",
        )
    })?;
    let der = |pem: &str| ccl_crypto::Certificate::from_pem(pem).map(|c| c.der().to_vec());
    match (der(&recorded), der(given)) {
        (Ok(a), Ok(b)) if a == b => Ok(()),
        _ => Err(GovError::bad(
            "InvalidPreviousServiceIdentity",
            "previous_service_identity is not the certificate of the service being recovered",
        )),
    }
}
