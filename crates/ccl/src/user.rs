//! User commands: `ccl put`, `ccl get`, `ccl list`, `ccl receipt get`, `ccl collection`,
//! through the API.

use anyhow::{Context, Result, bail};
use ccl_client::{Client, Connection};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long commands wait for a commit or a historical read.
pub const WAIT_LIMIT: Duration = Duration::from_secs(30);

#[derive(clap::Args, Clone)]
pub struct Conn {
    /// The node's endpoint.
    #[arg(long, default_value = "https://localhost:8443", global = true)]
    endpoint: String,
    /// The service certificate (default: the one `ccl start` wrote in ./ccl-data).
    #[arg(long, default_value = "ccl-data/service_cert.pem", global = true)]
    service_cert: PathBuf,
    /// Your certificate and key in one PEM (default: ./ccl-data/user0.pem).
    #[arg(long, default_value = "ccl-data/user0.pem", global = true)]
    identity: PathBuf,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

impl Conn {
    fn runtime(&self) -> Result<tokio::runtime::Runtime> {
        Ok(tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?)
    }

    async fn connect(&self) -> Result<Connection> {
        let cert = std::fs::read_to_string(&self.service_cert).with_context(|| {
            format!(
                "cannot read the service certificate {}",
                self.service_cert.display()
            )
        })?;
        let id = std::fs::read_to_string(&self.identity)
            .with_context(|| format!("cannot read the identity {}", self.identity.display()))?;
        let client = Client::new(&self.endpoint, &cert, Some(&id))?;
        client
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", self.endpoint))
    }
}

/// Waits until the node's commit passes the transaction (told by the node as it happens), then
/// checks that the transaction is the one committed there (not rolled back by an election).
async fn wait_committed(c: &mut Connection, txid: &str) -> Result<()> {
    let started = Instant::now();
    let seqno = txid
        .parse::<ccl_ledger::txid::TxId>()
        .with_context(|| format!("the node answered with a bad transaction id {txid:?}"))?
        .seqno;
    loop {
        let committed = c.committed_after(seqno.saturating_sub(1)).await?;
        let passed = committed
            .parse::<ccl_ledger::txid::TxId>()
            .is_ok_and(|t| t.seqno >= seqno);
        if passed {
            break;
        }
        if started.elapsed() > WAIT_LIMIT {
            bail!("transaction {txid} is not committed after {WAIT_LIMIT:?}");
        }
    }
    match c.status(txid).await?.as_str() {
        "Committed" => Ok(()),
        other => bail!("transaction {txid} was not committed: its status is {other}"),
    }
}

async fn wait_ready(c: &mut Connection, path: &str) -> Result<serde_json::Value> {
    let started = Instant::now();
    loop {
        let v = c.get_app(path).await?;
        if v["state"] == "Ready" {
            return Ok(v);
        }
        if started.elapsed() > WAIT_LIMIT {
            bail!("{path} is not ready after {WAIT_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn put(conn: &Conn, contents: &str, collection: Option<&str>, wait: bool) -> Result<()> {
    conn.runtime()?.block_on(async {
        let mut c = conn.connect().await?;
        let txid = c.write_entry(collection, contents).await?;
        if wait {
            wait_committed(&mut c, &txid).await?;
        }
        if conn.json {
            println!(
                "{}",
                serde_json::json!({"transactionId": txid, "committed": wait})
            );
        } else {
            println!("{txid}{}", if wait { " committed" } else { "" });
        }
        Ok(())
    })
}

pub fn get(conn: &Conn, txid: &str) -> Result<()> {
    conn.runtime()?.block_on(async {
        let mut c = conn.connect().await?;
        let v = wait_ready(&mut c, &format!("/app/transactions/{txid}")).await?;
        if conn.json {
            println!("{}", v["entry"]);
        } else {
            println!("{}", v["entry"]["contents"].as_str().unwrap_or(""));
        }
        Ok(())
    })
}

pub fn list(
    conn: &Conn,
    collection: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<()> {
    conn.runtime()?.block_on(async {
        let mut c = conn.connect().await?;
        let mut q = Vec::new();
        if let Some(x) = collection {
            q.push(format!("collectionId={}", ccl_client::escape(x)));
        }
        if let Some(x) = from {
            q.push(format!("fromTransactionId={}", ccl_client::escape(x)));
        }
        if let Some(x) = to {
            q.push(format!("toTransactionId={}", ccl_client::escape(x)));
        }
        let mut path = format!("/app/transactions?{}", q.join("&"));
        loop {
            let v = c.get_app(&path).await?;
            for e in v["entries"].as_array().into_iter().flatten() {
                if conn.json {
                    println!("{e}");
                } else {
                    println!(
                        "{}\t{}",
                        e["transactionId"].as_str().unwrap_or(""),
                        e["contents"].as_str().unwrap_or("")
                    );
                }
            }
            match v["nextLink"].as_str() {
                // The link carries its api-version; get_app adds ours again, so drop it.
                Some(next) => {
                    path = next.replace(&format!("api-version={}&", ccl_client::API_VERSION), "")
                }
                None => break,
            }
        }
        Ok(())
    })
}

/// Prints a collection's access as `ccl collection show` does.
fn print_access(conn: &Conn, v: &serde_json::Value) {
    if conn.json {
        println!("{v}");
        return;
    }
    let id = v["collectionId"].as_str().unwrap_or("");
    if v["private"] != true {
        println!("{id}: public");
        return;
    }
    let list = |k: &str| {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    println!("{id}: private");
    println!("owner:   {}", v["owner"].as_str().unwrap_or(""));
    println!("writers: {}", list("writers"));
    println!("readers: {}", list("readers"));
}

/// `ccl collection show`: whether a collection is private, and to whom.
pub fn collection_show(conn: &Conn, id: &str) -> Result<()> {
    conn.runtime()?.block_on(async {
        let mut c = conn.connect().await?;
        let v = c
            .get_app(&format!("/app/collections/{}", ccl_client::escape(id)))
            .await?;
        print_access(conn, &v);
        Ok(())
    })
}

/// `ccl collection access`: makes a collection private to these readers and writers (or
/// changes them).
pub fn collection_access(
    conn: &Conn,
    id: &str,
    readers: &[String],
    writers: &[String],
) -> Result<()> {
    conn.runtime()?.block_on(async {
        let mut c = conn.connect().await?;
        let body = serde_json::json!({"readers": readers, "writers": writers}).to_string();
        let path = format!(
            "/app/collections/{}?api-version={}",
            ccl_client::escape(id),
            ccl_client::API_VERSION
        );
        let r = c
            .request(
                ccl_client::Method::PUT,
                &path,
                Some(("application/json", body.into_bytes())),
            )
            .await?;
        let v = r.json()?;
        print_access(conn, &v);
        Ok(())
    })
}

pub fn receipt_get(conn: &Conn, txid: &str, verify: bool) -> Result<()> {
    conn.runtime()?.block_on(async {
        let mut c = conn.connect().await?;
        let v = wait_ready(&mut c, &format!("/app/transactions/{txid}/receipt")).await?;
        if verify {
            let cert = std::fs::read_to_string(&conn.service_cert)?;
            let r = ccl_receipt::Receipt::from_json(&v)
                .map_err(|e| anyhow::anyhow!("invalid receipt: {e}"))?;
            match v.get("applicationClaims") {
                Some(c) => {
                    let claims = ccl_receipt::ApplicationClaims::from_json(c)
                        .map_err(|e| anyhow::anyhow!("invalid application claims: {e}"))?;
                    r.verify_with_claims(&cert, &claims)
                }
                None => r.verify(&cert),
            }
            .map_err(|e| anyhow::anyhow!("receipt verification failed: {e}"))?;
            eprintln!("receipt OK: transaction {txid} is in the ledger of this service");
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        Ok(())
    })
}
