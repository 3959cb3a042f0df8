//! End-to-end: `ccl start` as a real process on loopback, driven by the unmodified Azure
//! Confidential Ledger SDK (issue 3 acceptance, in part).

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

struct Node {
    child: Child,
    endpoint: String,
    dir: PathBuf,
}

fn start(dir: &Path) -> Node {
    let (child, endpoint) = spawn_node(dir, &[]);
    Node {
        child,
        endpoint,
        dir: dir.to_path_buf(),
    }
}

impl Node {
    fn python(&self, script: &str, extra: &[&str]) -> String {
        let path = format!("{}/tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
        let mut cmd = Command::new(python());
        cmd.arg(path);
        if script == "entries.py" {
            cmd.arg(extra[0]);
        }
        cmd.arg(&self.endpoint)
            .arg(self.dir.join("service_cert.pem"))
            .arg(self.dir.join("user0.pem"));
        cmd.args(if script == "entries.py" {
            &extra[1..]
        } else {
            extra
        });
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{script} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// The CLI's user commands against this node.
    fn cli_round_trip(&self) {
        let run = |args: &[&str]| {
            let out = ccl()
                .args(args)
                .arg("--endpoint")
                .arg(&self.endpoint)
                .arg("--service-cert")
                .arg(self.dir.join("service_cert.pem"))
                .arg("--identity")
                .arg(self.dir.join("user0.pem"))
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        };
        let (ok, out, err) = run(&["put", "from the CLI", "--collection", "cli", "--wait"]);
        assert!(ok, "{err}");
        let txid = out.split_whitespace().next().unwrap().to_string();
        assert!(out.contains("committed"), "{out}");
        let (ok, out, err) = run(&["get", &txid]);
        assert!(ok && out.trim() == "from the CLI", "{out}{err}");
        let (ok, out, err) = run(&["list", "--collection", "cli"]);
        assert!(
            ok && out.trim() == format!("{txid}\tfrom the CLI"),
            "{out}{err}"
        );
        let (ok, out, err) = run(&["receipt", "get", &txid, "--verify"]);
        assert!(
            ok && err.contains("receipt OK") && out.contains("leafComponents"),
            "{out}{err}"
        );
        let (ok, _, err) = run(&["get", "banana"]);
        assert!(!ok && err.contains("InvalidTransactionId"), "{err}");
        // Private collections: the caller creates one and owns it.
        let (ok, out, err) = run(&["collection", "show", "cli"]);
        assert!(ok && out.trim() == "cli: public", "{out}{err}");
        let (ok, out, err) = run(&[
            "collection",
            "access",
            "cli-private",
            "--writer",
            "group:supplier1",
            "--reader",
            "AB:CD",
        ]);
        assert!(ok, "{err}");
        assert!(
            out.contains("cli-private: private")
                && out.contains("writers: group:supplier1")
                && out.contains("readers: AB:CD"),
            "{out}"
        );
        let (ok, out, err) = run(&["put", "mine", "--collection", "cli-private", "--wait"]);
        assert!(ok && out.contains("committed"), "{out}{err}");
        let (ok, out, err) = run(&["collection", "show", "cli-private", "--json"]);
        assert!(ok && out.contains("\"private\":true"), "{out}{err}");
        // Bad lists and unknown collections: a clear error and a non-zero exit.
        let (ok, _, err) = run(&["collection", "access", "cli-bad", "--reader", "group:"]);
        assert!(!ok && err.contains("InvalidAccessList"), "{err}");
        let (ok, _, err) = run(&["collection", "show", "never-written"]);
        assert!(!ok && err.contains("CollectionNotFound"), "{err}");
        // The default collection stays public.
        let (ok, _, err) = run(&["collection", "access", "subledger:0", "--reader", "AB:CD"]);
        assert!(!ok && err.contains("CollectionIdTaken"), "{err}");
    }

    fn stop(self, signal: &str) {
        let mut this = std::mem::ManuallyDrop::new(self);
        let child = &mut this.child;
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = child.wait().unwrap();
        if signal == "TERM" {
            assert!(
                exit.success(),
                "ccl start did not stop cleanly on SIGTERM: {exit:?}"
            );
        }
    }
}

impl Drop for Node {
    /// A failing test must not leave its node running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn azure_sdk_works_against_ccl_start_and_bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&dir.path().join("data"));
    assert!(node.python("sdk_e2e.py", &[]).contains("sdk e2e OK"));
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    assert!(
        node.python("bad_input.py", &[tmp.to_str().unwrap()])
            .contains("bad input OK")
    );
    assert!(
        node.python("auth_matrix.py", &[tmp.to_str().unwrap()])
            .contains("auth matrix OK")
    );
    node.cli_round_trip();
    node.stop("TERM");
}

#[test]
fn restarts_keep_everything_committed_and_the_ledger_validates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let state = dir.path().join("written.json");
    let state = state.to_str().unwrap();
    const MARKER: &str = "OPERATOR-MUST-NOT-SEE-7c41e9";

    let node = start(&data);
    node.python("entries.py", &["write", state, MARKER, "20"]);
    node.stop("TERM");

    let node = start(&data);
    node.python("entries.py", &["check", state]);
    node.python("entries.py", &["write", state, MARKER, "10"]);
    node.stop("KILL");

    let node = start(&data);
    assert!(
        node.python("entries.py", &["check", state])
            .contains("checked 30")
    );
    node.stop("TERM");

    // The directory validates with ccl's verifier and with CCF's.
    let (stdout, _) = validate_data_dir(&data, false);
    assert!(stdout.contains("Ledger verification complete"), "{stdout}");

    // The operator sees no entry contents in any file of the data directory.
    for f in files(&data) {
        let b = std::fs::read(&f).unwrap();
        assert!(
            !b.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "entry contents in {}",
            f.display()
        );
    }
}

#[test]
fn config_file_sets_options_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("from-config");
    let cfg = dir.path().join("ccl.toml");
    std::fs::write(
        &cfg,
        format!("data_dir = {:?}\nlisten = \"127.0.0.1:0\"\nnames = [\"ledger.example\"]\nsignature_interval_ms = 20\n", data),
    )
    .unwrap();
    let mut child = ccl()
        .arg("start")
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.unwrap().starts_with("listening on https://localhost:")));
    let _ = child.kill();
    let _ = child.wait();
    let node_cert = std::fs::read_to_string(data.join("node_cert.pem")).unwrap();
    let cert = ccl_crypto::cert::Certificate::from_pem(&node_cert).unwrap();
    assert!(
        cert.der().windows(14).any(|w| w == b"ledger.example"),
        "the configured name is in the node certificate"
    );

    for bad in [
        "bogus = 1\n",
        "listen = \"not an address\"\n",
        "signature_interval_ms = -5\n",
        "[[[\n",
    ] {
        std::fs::write(&cfg, bad).unwrap();
        let out = ccl()
            .arg("start")
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("invalid configuration"),
            "{bad}"
        );
    }
}
