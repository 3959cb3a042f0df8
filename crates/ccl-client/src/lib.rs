//! Rust client of ccl's API: HTTPS (rustls, ring) to one node, trusting its service certificate,
//! authenticated by a client certificate (user or member). One [`Connection`] is one TLS
//! connection with HTTP/1.1 keep-alive; open several for concurrency.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
pub use hyper::{Method, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use std::sync::Arc;

/// The api-version the client speaks.
pub const API_VERSION: &str = "2022-05-13";
/// Largest response body read.
pub const MAX_RESPONSE: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad endpoint {0:?}: expected https://host:port")]
    Endpoint(String),
    #[error("credentials: {0}")]
    Credentials(String),
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("{status}: {code}: {message}")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("unexpected response: {0}")]
    Unexpected(String),
}

type Result<T, E = ClientError> = std::result::Result<T, E>;

/// How to reach and trust a node, and who we are.
#[derive(Clone)]
pub struct Client {
    host: String,
    port: u16,
    tls: tokio_rustls::TlsConnector,
}

impl Client {
    /// `endpoint` is `https://host:port`; `service_cert_pem` the service certificate (the CA the
    /// node's certificate chains to); `identity_pem` a certificate and its private key in one
    /// PEM (as `ccl start` writes `user0.pem`), or none.
    pub fn new(endpoint: &str, service_cert_pem: &str, identity_pem: Option<&str>) -> Result<Self> {
        let rest = endpoint
            .strip_prefix("https://")
            .ok_or_else(|| ClientError::Endpoint(endpoint.into()))?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| ClientError::Endpoint(endpoint.into()))?;
        let port: u16 = port
            .parse()
            .map_err(|_| ClientError::Endpoint(endpoint.into()))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(service_cert_pem.as_bytes()) {
            let c = c.map_err(|e| ClientError::Credentials(format!("service certificate: {e}")))?;
            roots
                .add(c)
                .map_err(|e| ClientError::Credentials(format!("service certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(ClientError::Credentials(
                "no certificate in the service certificate PEM".into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Credentials(e.to_string()))?
            .with_root_certificates(roots);
        let config = match identity_pem {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let certs: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(pem.as_bytes())
                        .collect::<std::result::Result<_, _>>()
                        .map_err(|e| {
                            ClientError::Credentials(format!("identity certificate: {e}"))
                        })?;
                let key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
                    .map_err(|e| ClientError::Credentials(format!("identity key: {e}")))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| ClientError::Credentials(e.to_string()))?
            }
        };
        Ok(Client {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// Opens a connection.
    pub async fn connect(&self) -> Result<Connection> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(self.host.clone())
            .map_err(|_| ClientError::Endpoint(self.host.clone()))?;
        let tls = self.tls.connect(name, tcp).await?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Connection {
            sender,
            host: self.host.clone(),
        })
    }
}

/// One keep-alive connection to a node.
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

/// A request to send unchanged ([`Connection::send_raw`]).
#[derive(Debug)]
pub struct RawRequest {
    pub method: Method,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A successful response.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ClientError::Unexpected(format!("not JSON: {e}")))
    }
}

impl Connection {
    /// Sends a request; API errors (4xx, 5xx with `{"error"}`) become [`ClientError::Api`].
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Response> {
        let (headers, body) = match body {
            Some((ct, b)) => (vec![("content-type".to_string(), ct.to_string())], b),
            None => (Vec::new(), Vec::new()),
        };
        let resp = self
            .send_raw(RawRequest {
                method,
                path: path.to_string(),
                headers,
                body,
            })
            .await?;
        if resp.status.is_client_error() || resp.status.is_server_error() {
            let v: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
            return Err(ClientError::Api {
                status: resp.status,
                code: v["error"]["code"].as_str().unwrap_or("").to_string(),
                message: v["error"]["message"]
                    .as_str()
                    .unwrap_or(&String::from_utf8_lossy(&resp.body))
                    .to_string(),
            });
        }
        Ok(resp)
    }

    /// Sends a request as it is and returns the answer as it is, whatever its status (a node
    /// forwarding a client's request to the primary).
    pub async fn send_raw(&mut self, raw: RawRequest) -> Result<Response> {
        let mut req = Request::builder()
            .method(raw.method)
            .uri(raw.path)
            .header("host", &self.host);
        for (k, v) in &raw.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(raw.body)))
            .map_err(|e| ClientError::Unexpected(e.to_string()))?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = http_body_util::Limited::new(body, MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| ClientError::Unexpected(format!("response body: {e}")))?
            .to_bytes();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Writes a ledger entry; returns its transaction id.
    pub async fn write_entry(
        &mut self,
        collection: Option<&str>,
        contents: &str,
    ) -> Result<String> {
        let path = match collection {
            Some(c) => format!(
                "/app/transactions?api-version={API_VERSION}&collectionId={}",
                escape(c)
            ),
            None => format!("/app/transactions?api-version={API_VERSION}"),
        };
        let body = serde_json::json!({ "contents": contents })
            .to_string()
            .into_bytes();
        let r = self
            .request(Method::POST, &path, Some(("application/json", body)))
            .await?;
        r.headers
            .get("x-ms-ccf-transaction-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| ClientError::Unexpected("no transaction id in the response".into()))
    }

    /// GET `/app/...` with the api-version added; the JSON answer.
    pub async fn get_app(&mut self, path: &str) -> Result<Value> {
        let sep = if path.contains('?') { '&' } else { '?' };
        self.request(
            Method::GET,
            &format!("{path}{sep}api-version={API_VERSION}"),
            None,
        )
        .await?
        .json()
    }

    /// The transaction's status: "Pending" or "Committed".
    pub async fn status(&mut self, txid: &str) -> Result<String> {
        let v = self
            .get_app(&format!("/app/transactions/{txid}/status"))
            .await?;
        v["state"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ClientError::Unexpected(v.to_string()))
    }

    /// The last committed transaction id (`/node/commit`).
    pub async fn committed(&mut self) -> Result<String> {
        self.commit_at("/node/commit").await
    }

    /// The last committed transaction id once the commit passes `seqno` (the node answers as
    /// soon as it does, or after about a second with the commit as it is).
    pub async fn committed_after(&mut self, seqno: u64) -> Result<String> {
        self.commit_at(&format!("/node/commit?after={seqno}")).await
    }

    async fn commit_at(&mut self, path: &str) -> Result<String> {
        let v = self.request(Method::GET, path, None).await?.json()?;
        v["transaction_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ClientError::Unexpected(v.to_string()))
    }
}

/// Percent-encodes a query value.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
