//! `ccl gov`: members' governance commands. Each request is a COSE Sign1 signed with the member's
//! key (as CCF's `ccf_cose_sign1` makes them) and sent to the node's `/gov` API.

use anyhow::{Context, Result, bail};
use ccl_client::{Client, ClientError, Connection};
use ccl_crypto::cert::Certificate;
use ccl_crypto::keys::SigningKey;
use ccl_gov::msg;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

const V: &str = ccl_node::gov::GOV_API_VERSION;
/// Largest proposal or ballot file read.
const MAX_FILE: u64 = 1 << 20;

#[derive(clap::Args, Clone)]
pub struct GovArgs {
    /// The node's endpoint.
    #[arg(long, default_value = "https://localhost:8443", global = true)]
    endpoint: String,
    /// The service certificate (default: the one `ccl start` wrote in ./ccl-data).
    #[arg(long, default_value = "ccl-data/service_cert.pem", global = true)]
    service_cert: PathBuf,
    /// The member's certificate and private key in one PEM (default: ./ccl-data/member0.pem).
    #[arg(long, default_value = "ccl-data/member0.pem", global = true)]
    member: PathBuf,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: GovCommand,
}

#[derive(clap::Subcommand, Clone)]
enum GovCommand {
    /// Submit a proposal: a JSON file {"actions": [{"name", "args"}, ...]}.
    Propose { file: PathBuf },
    /// Vote on a proposal: --accept, --reject, or a ballot script file (a module exporting
    /// `vote(proposal, proposerId)`).
    Vote {
        proposal_id: String,
        #[arg(long, conflicts_with_all = ["reject", "ballot"])]
        accept: bool,
        #[arg(long, conflicts_with = "ballot")]
        reject: bool,
        #[arg(long)]
        ballot: Option<PathBuf>,
    },
    /// Withdraw one of your Open proposals.
    Withdraw { proposal_id: String },
    /// List proposals.
    List,
    /// Show a proposal: its state, ballots and actions.
    Show { proposal_id: String },
    /// Acknowledge the service's state digest: an Accepted member becomes Active.
    Ack,
    /// Show the service's status, members and constitution digest.
    Info,
    /// Disaster recovery: fetch this member's encrypted recovery share, decrypt it with the
    /// member's encryption key (RSA-OAEP-SHA256, as `openssl pkeyutl -decrypt -pkeyopt
    /// rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256` would) and submit it, signed.
    RecoveryShare {
        /// The member's encryption private key (PEM), e.g. ccl-data/member0_enc_privk.pem.
        #[arg(long)]
        encryption_key: PathBuf,
    },
}

struct Member {
    id: String,
    key: SigningKey,
}

fn read_limited(path: &Path, what: &str) -> Result<String> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?
        .len();
    if len > MAX_FILE {
        bail!("{what} {} is larger than {MAX_FILE} bytes", path.display());
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

fn load_member(path: &Path) -> Result<Member> {
    let text = read_limited(path, "the member identity")?;
    let cert = Certificate::from_pem(&text)
        .with_context(|| format!("{}: no member certificate", path.display()))?;
    let key = SigningKey::from_pem(&text)
        .with_context(|| format!("{}: no private key", path.display()))?;
    if key.verifying_key().spki_der() != cert.spki_der() {
        bail!("{}: the key is not the certificate's", path.display());
    }
    Ok(Member {
        id: hex::encode(cert.fingerprint()),
        key,
    })
}

fn now() -> i64 {
    ccl_crypto::cert::now_unix()
}

fn api_error(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Api {
            status,
            code,
            message,
        } => anyhow::anyhow!("{code} ({status}): {message}"),
        other => anyhow::anyhow!(other),
    }
}

impl GovArgs {
    async fn connect(&self) -> Result<Connection> {
        let cert = read_limited(&self.service_cert, "the service certificate")?;
        let client = Client::new(&self.endpoint, &cert, None)?;
        client
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", self.endpoint))
    }

    async fn signed(
        &self,
        c: &mut Connection,
        m: &Member,
        path: &str,
        ty: &str,
        pid: Option<&str>,
        payload: &[u8],
    ) -> Result<Option<Value>> {
        let body = ccl_gov::sign_request(&m.key, &m.id, ty, pid, now(), payload)?;
        let sep = if path.contains('?') { '&' } else { '?' };
        let r = c
            .request(
                ccl_client::Method::POST,
                &format!("{path}{sep}api-version={V}"),
                Some(("application/cose", body)),
            )
            .await
            .map_err(api_error)?;
        Ok(if r.body.is_empty() {
            None
        } else {
            Some(r.json()?)
        })
    }

    async fn get(&self, c: &mut Connection, path: &str) -> Result<Value> {
        let r = c
            .request(
                ccl_client::Method::GET,
                &format!("{path}?api-version={V}"),
                None,
            )
            .await
            .map_err(api_error)?;
        if r.headers
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
        {
            Ok(r.json()?)
        } else {
            Ok(Value::String(String::from_utf8_lossy(&r.body).into_owned()))
        }
    }

    fn print_proposal(&self, v: &Value) {
        if self.json {
            println!("{v}");
            return;
        }
        println!(
            "proposal {}: {} (proposer {}, {} ballot(s))",
            v["proposalId"].as_str().unwrap_or("?"),
            v["proposalState"].as_str().unwrap_or("?"),
            v["proposerId"].as_str().unwrap_or("?"),
            v["ballotCount"]
        );
        if let Some(f) = v.get("failure") {
            println!("  failure: {}", f["reason"].as_str().unwrap_or("?"));
        }
        if let Some(votes) = v["finalVotes"].as_object() {
            for (m, vote) in votes {
                println!("  {m}: {}", if vote == true { "accept" } else { "reject" });
            }
        }
    }
}

pub fn run(args: &GovArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

async fn run_async(a: &GovArgs) -> Result<()> {
    let mut c = a.connect().await?;
    match &a.command {
        GovCommand::Propose { file } => {
            let m = load_member(&a.member)?;
            let text = read_limited(file, "the proposal")?;
            let parsed: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let v = a
                .signed(
                    &mut c,
                    &m,
                    "/gov/members/proposals:create",
                    msg::PROPOSAL,
                    None,
                    parsed.to_string().as_bytes(),
                )
                .await?
                .unwrap_or_default();
            a.print_proposal(&v);
        }
        GovCommand::Vote {
            proposal_id,
            accept,
            reject,
            ballot,
        } => {
            let m = load_member(&a.member)?;
            let script = match (accept, reject, ballot) {
                (true, _, _) => {
                    "export function vote (proposal, proposerId) { return true }".to_string()
                }
                (_, true, _) => {
                    "export function vote (proposal, proposerId) { return false }".to_string()
                }
                (_, _, Some(f)) => read_limited(f, "the ballot")?,
                _ => bail!("say --accept, --reject or --ballot FILE"),
            };
            let path = format!(
                "/gov/members/proposals/{proposal_id}/ballots/{}:submit",
                m.id
            );
            let v = a
                .signed(
                    &mut c,
                    &m,
                    &path,
                    msg::BALLOT,
                    Some(proposal_id),
                    json!({"ballot": script}).to_string().as_bytes(),
                )
                .await?
                .unwrap_or_default();
            a.print_proposal(&v);
        }
        GovCommand::Withdraw { proposal_id } => {
            let m = load_member(&a.member)?;
            let path = format!("/gov/members/proposals/{proposal_id}:withdraw");
            let v = a
                .signed(&mut c, &m, &path, msg::WITHDRAWAL, Some(proposal_id), b"")
                .await?
                .unwrap_or_default();
            a.print_proposal(&v);
        }
        GovCommand::RecoveryShare { encryption_key } => {
            let m = load_member(&a.member)?;
            let pem = zeroize::Zeroizing::new(read_limited(encryption_key, "the encryption key")?);
            let key = ccl_crypto::oaep::EncryptionPrivateKey::from_pem(&pem)
                .with_context(|| format!("{}", encryption_key.display()))?;
            let v = a
                .get(&mut c, &format!("/gov/recovery/encrypted-shares/{}", m.id))
                .await?;
            let encrypted = v["encryptedShare"]
                .as_str()
                .and_then(|s| {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD.decode(s).ok()
                })
                .context("the node's answer holds no encrypted share")?;
            let share = key.decrypt(&encrypted).context(
                "the recovery share does not decrypt with this encryption key (another member's key?)",
            )?;
            let share_b64 = zeroize::Zeroizing::new({
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(&share[..])
            });
            let payload = zeroize::Zeroizing::new(json!({"share": *share_b64}).to_string());
            let path = format!("/gov/recovery/members/{}:recover", m.id);
            let v = a
                .signed(
                    &mut c,
                    &m,
                    &path,
                    msg::RECOVERY_SHARE,
                    None,
                    payload.as_bytes(),
                )
                .await?
                .unwrap_or_default();
            if a.json {
                println!("{v}");
            } else {
                println!("{}", v["message"].as_str().unwrap_or("submitted"));
            }
        }
        GovCommand::List => {
            let v = a.get(&mut c, "/gov/members/proposals").await?;
            if a.json {
                println!("{v}");
            } else {
                let list = v["value"].as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    println!("no proposals");
                }
                for p in &list {
                    a.print_proposal(p);
                }
            }
        }
        GovCommand::Show { proposal_id } => {
            let info = a
                .get(&mut c, &format!("/gov/members/proposals/{proposal_id}"))
                .await?;
            let actions = a
                .get(
                    &mut c,
                    &format!("/gov/members/proposals/{proposal_id}/actions"),
                )
                .await?;
            if a.json {
                println!("{}", json!({"proposal": info, "actions": actions}));
            } else {
                a.print_proposal(&info);
                println!(
                    "{}",
                    serde_json::to_string_pretty(&actions).unwrap_or_default()
                );
            }
        }
        GovCommand::Ack => {
            let m = load_member(&a.member)?;
            let base = format!("/gov/members/state-digests/{}", m.id);
            let d = a
                .signed(
                    &mut c,
                    &m,
                    &format!("{base}:update"),
                    msg::STATE_DIGEST,
                    None,
                    b"",
                )
                .await?
                .unwrap_or_default();
            let digest = d["stateDigest"].as_str().unwrap_or_default().to_string();
            a.signed(
                &mut c,
                &m,
                &format!("{base}:ack"),
                msg::ACK,
                None,
                json!({"stateDigest": digest}).to_string().as_bytes(),
            )
            .await?;
            if a.json {
                println!(
                    "{}",
                    json!({"memberId": m.id, "stateDigest": digest, "status": "Active"})
                );
            } else {
                println!("member {} acknowledged state digest {digest}: Active", m.id);
            }
        }
        GovCommand::Info => {
            let info = a.get(&mut c, "/gov/service/info").await?;
            let members = a.get(&mut c, "/gov/service/members").await?;
            let constitution = a.get(&mut c, "/gov/service/constitution").await?;
            let digest = hex::encode(ccl_crypto::sha256(
                constitution.as_str().unwrap_or_default().as_bytes(),
            ));
            if a.json {
                println!(
                    "{}",
                    json!({"service": info, "members": members["value"], "constitutionDigest": digest})
                );
            } else {
                println!("service: {}", info["status"].as_str().unwrap_or("?"));
                println!("constitution: sha256 {digest}");
                for m in members["value"].as_array().into_iter().flatten() {
                    println!(
                        "member {}: {}",
                        m["memberId"].as_str().unwrap_or("?"),
                        m["status"].as_str().unwrap_or("?")
                    );
                }
            }
        }
    }
    Ok(())
}
