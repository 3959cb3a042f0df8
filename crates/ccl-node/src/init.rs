//! A node's data directory: identities generated on first start, secrets sealed at rest.
//!
//! ```text
//! <data-dir>/service_cert.pem   the service identity clients trust (public)
//! <data-dir>/node_cert.pem      this node's certificate, endorsed by the service (public)
//! <data-dir>/user0.pem          the first Administrator user: certificate + private key, as the
//!                               Azure SDK takes it (a credential for the operator to hand over)
//! <data-dir>/member0.pem        the first consortium member: certificate + private key
//! <data-dir>/sealed.bin         ledger secrets, node and service keys, AES-256-GCM sealed
//! <data-dir>/sealing.key        the sealing key (virtual platform only: a TEE derives it in
//!                               hardware and it never touches the disk)
//! <data-dir>/ledger, snapshots, merkle   the engine's files
//! ```

use ccl_crypto::aead::AesGcmKey;
use ccl_crypto::cert::{self, CertKind, CertSpec, Certificate};
use ccl_crypto::{Curve, SigningKey};
use ccl_engine::Identity;
use ccl_ledger::secrets::{LedgerSecret, LedgerSecrets};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const SERVICE_CERT: &str = "service_cert.pem";
pub const NODE_CERT: &str = "node_cert.pem";
pub const USER0: &str = "user0.pem";
const SEALED: &str = "sealed.bin";
const SEALING_KEY: &str = "sealing.key";
/// Largest sealed file read.
const MAX_SEALED: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Crypto(#[from] ccl_crypto::CryptoError),
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    /// (first seqno, hex secret)
    ledger_secrets: Vec<(u64, String)>,
    node_key: String,
    service_key: String,
    /// A recovered service waiting for its members' recovery shares (its ledger's private
    /// domain before its first secret cannot be read yet).
    #[serde(default)]
    recovering: bool,
}

/// Writes `bytes` to a new file readable by its owner only, fsynced.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), InitError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn write_public(path: &Path, text: &str) -> Result<(), InitError> {
    std::fs::write(path, text).map_err(io(path))
}

/// What a first start created, for the operator.
pub struct Created {
    /// user0's Azure user id (certificate fingerprint, `AB:CD:…`).
    pub user0_id: String,
    pub user0_cert: Certificate,
    /// Generated members: id, certificate, key (also in `member<i>.pem`).
    pub members: Vec<(String, Certificate, SigningKey)>,
    /// The generated members' RSA encryption public keys (PEM), in the same order: they are
    /// recovery members (private keys in `member<i>_enc_privk.pem`).
    pub member_encryption_keys: Vec<String>,
}

/// The file of the `i`th generated member's certificate and key.
pub fn member_file(i: usize) -> String {
    format!("member{i}.pem")
}

/// The `i`th generated member's RSA encryption private key (its recovery share is encrypted to
/// it), and public key; CCF's file names.
pub fn member_enc_privk_file(i: usize) -> String {
    format!("member{i}_enc_privk.pem")
}
pub fn member_enc_pubk_file(i: usize) -> String {
    format!("member{i}_enc_pubk.pem")
}

/// Whether `dir` already holds a node.
pub fn exists(dir: &Path) -> bool {
    dir.join(SEALED).exists()
}

/// First start: generates the service and node identities, the first ledger secret, the first
/// user (Administrator) and member, and writes them to `dir`.
pub fn create(
    dir: &Path,
    names: &[String],
    members: usize,
) -> Result<(Identity, LedgerSecret, Created), InitError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let identity = Identity::generate(names)?;
    let secret = LedgerSecret::generate()?;
    let client = |cn: &str| -> Result<(SigningKey, Certificate), InitError> {
        let key = SigningKey::generate(Curve::P256)?;
        let c = cert::self_signed(
            &key,
            &CertSpec {
                common_name: cn.into(),
                subject_alt_names: vec![],
                not_before: cert::now_unix() - 60,
                validity_days: ccl_engine::identity::DEFAULT_CERT_VALIDITY_DAYS,
                kind: CertKind::Client,
            },
        )?;
        Ok((key, c))
    };
    let (user_key, user_cert) = client("user0")?;
    let mut generated = Vec::new();
    let mut encryption_keys = Vec::new();
    for i in 0..members {
        let (key, cert) = client(&format!("member{i}"))?;
        write_private(
            &dir.join(member_file(i)),
            format!("{}{}", cert.pem(), &*key.to_pkcs8_pem()).as_bytes(),
        )?;
        generated.push((hex::encode(ccl_crypto::sha256(cert.der())), cert, key));
        let enc = ccl_crypto::oaep::EncryptionPrivateKey::generate()?;
        write_private(
            &dir.join(member_enc_privk_file(i)),
            enc.to_pem()?.as_bytes(),
        )?;
        let public = enc.public_key().to_pem()?;
        write_public(&dir.join(member_enc_pubk_file(i)), &public)?;
        encryption_keys.push(public);
    }
    seal(
        dir,
        &identity,
        &LedgerSecrets::new(LedgerSecret::from_bytes(*secret.raw())),
    )?;
    write_public(&dir.join(SERVICE_CERT), &identity.service_cert.pem())?;
    write_public(&dir.join(NODE_CERT), &identity.node_cert.pem())?;
    write_private(
        &dir.join(USER0),
        format!("{}{}", user_cert.pem(), &*user_key.to_pkcs8_pem()).as_bytes(),
    )?;
    let created = Created {
        user0_id: crate::tls::fingerprint(user_cert.der()),
        user0_cert: user_cert,
        members: generated,
        member_encryption_keys: encryption_keys,
    };
    Ok((identity, secret, created))
}

/// Seals the ledger secrets and the node's and service's keys into `dir`.
pub fn seal(dir: &Path, identity: &Identity, secrets: &LedgerSecrets) -> Result<(), InitError> {
    seal_with(dir, identity, secrets, false)
}

/// [`seal`], saying whether the service is a recovered one still waiting for recovery shares.
pub fn seal_with(
    dir: &Path,
    identity: &Identity,
    secrets: &LedgerSecrets,
    recovering: bool,
) -> Result<(), InitError> {
    let key_path = dir.join(SEALING_KEY);
    let key: [u8; 32] = match std::fs::read(&key_path) {
        Ok(b) => b.try_into().map_err(|_| {
            InitError::Invalid(format!("{} is not a 32-byte key", key_path.display()))
        })?,
        Err(_) => {
            let k = ccl_crypto::random_array::<32>()?;
            write_private(&key_path, &k)?;
            k
        }
    };
    let sealed = Sealed {
        ledger_secrets: secrets
            .iter()
            .map(|(from, s)| (from, hex::encode(s.raw())))
            .collect(),
        node_key: identity.node_key.to_pkcs8_pem().to_string(),
        service_key: identity.service_key.to_pkcs8_pem().to_string(),
        recovering,
    };
    let mut plain = serde_json::to_vec(&sealed).map_err(|e| InitError::Invalid(e.to_string()))?;
    let iv = ccl_crypto::random_array::<12>()?;
    let tag = AesGcmKey::new(&key).seal(iv, b"ccl sealed v1", &mut plain);
    let mut out = Vec::with_capacity(28 + plain.len());
    out.extend_from_slice(&iv);
    out.extend_from_slice(&tag);
    out.extend_from_slice(&plain);
    write_private(&dir.join(SEALED), &out)
}

/// Restart: unseals the keys and secrets and reads the certificates.
pub fn load(dir: &Path) -> Result<(Identity, LedgerSecrets), InitError> {
    load_with(dir).map(|(i, s, _)| (i, s))
}

/// [`load`], and whether the service is a recovered one still waiting for recovery shares.
pub fn load_with(dir: &Path) -> Result<(Identity, LedgerSecrets, bool), InitError> {
    let key_path = dir.join(SEALING_KEY);
    let key: [u8; 32] = std::fs::read(&key_path)
        .map_err(io(&key_path))?
        .try_into()
        .map_err(|_| InitError::Invalid(format!("{} is not a 32-byte key", key_path.display())))?;
    let path = dir.join(SEALED);
    let len = std::fs::metadata(&path).map_err(io(&path))?.len();
    if !(28..=MAX_SEALED).contains(&len) {
        return Err(InitError::Invalid(format!(
            "{} has an impossible size",
            path.display()
        )));
    }
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let iv: [u8; 12] = bytes[..12].try_into().expect("length checked");
    let tag: [u8; 16] = bytes[12..28].try_into().expect("length checked");
    let mut plain = bytes[28..].to_vec();
    AesGcmKey::new(&key)
        .open(iv, b"ccl sealed v1", &mut plain, &tag)
        .map_err(|_| {
            InitError::Invalid(format!(
                "{} does not unseal with {}",
                path.display(),
                key_path.display()
            ))
        })?;
    let sealed: Sealed = serde_json::from_slice(&plain)
        .map_err(|e| InitError::Invalid(format!("sealed secrets: {e}")))?;
    let mut secrets = LedgerSecrets::default();
    for (from, hexed) in &sealed.ledger_secrets {
        let raw: [u8; 32] = hex::decode(hexed)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| InitError::Invalid("sealed ledger secret is malformed".into()))?;
        if secrets.latest_from().is_some_and(|f| f >= *from) {
            return Err(InitError::Invalid(
                "sealed ledger secrets are out of order".into(),
            ));
        }
        secrets.push(*from, LedgerSecret::from_bytes(raw));
    }
    if secrets.is_empty() {
        return Err(InitError::Invalid("no ledger secret is sealed".into()));
    }
    let read = |name: &str| -> Result<Certificate, InitError> {
        let p = dir.join(name);
        let pem = std::fs::read_to_string(&p).map_err(io(&p))?;
        Ok(Certificate::from_pem(&pem)?)
    };
    let identity = Identity {
        node_key: SigningKey::from_pem(&sealed.node_key)?,
        node_cert: read(NODE_CERT)?,
        service_key: SigningKey::from_pem(&sealed.service_key)?,
        service_cert: read(SERVICE_CERT)?,
    };
    Ok((identity, secrets, sealed.recovering))
}
