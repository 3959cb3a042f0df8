//! The workspace's layering: lower crates never depend on higher ones, and the pure layers pull in
//! no async runtime or network stack.

use std::path::Path;

/// Crates by layer, lowest first. A crate may depend only on crates of strictly lower layers.
const LAYERS: &[(&str, u32)] = &[
    ("ccl-crypto", 0),
    ("ccl-lincheck", 0),
    ("ccl-attest", 1),
    ("ccl-ledger", 1),
    ("ccl-receipt", 1),
    ("ccl-store", 2),
    ("ccl-engine", 3),
    ("ccl-gov", 3),
    ("ccl-consensus", 4),
    ("ccl-node", 5),
    ("ccl-client", 3),
    ("ccl", 9),
];

/// Crates that must stay pure (no async runtime, no network).
const PURE: &[&str] = &[
    "ccl-crypto",
    "ccl-ledger",
    "ccl-receipt",
    "ccl-store",
    "ccl-engine",
    "ccl-gov",
    "ccl-lincheck",
    "ccl-attest",
];
const IMPURE_DEPS: &[&str] = &[
    "tokio",
    "hyper",
    "axum",
    "reqwest",
    "openraft",
    "tokio-rustls",
    "mio",
];

/// `[dependencies]` (not dev-dependencies) of a manifest.
fn deps(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_deps = false;
    for line in manifest.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_deps = l == "[dependencies]";
            continue;
        }
        if in_deps && !l.is_empty() && !l.starts_with('#') {
            let name: String = l
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

#[test]
fn lower_layers_never_depend_on_higher_ones() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut seen = 0;
    for entry in std::fs::read_dir(crates).unwrap().flatten() {
        let manifest = entry.path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let name = entry.file_name().to_string_lossy().to_string();
        let layer = LAYERS
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("crate {name} has no layer in LAYERS"))
            .1;
        seen += 1;
        for d in deps(&text) {
            if let Some((_, l)) = LAYERS.iter().find(|(n, _)| *n == d) {
                assert!(
                    *l < layer,
                    "{name} (layer {layer}) depends on {d} (layer {l})"
                );
            }
            if PURE.contains(&name.as_str()) {
                assert!(
                    !IMPURE_DEPS.contains(&d.as_str()),
                    "pure crate {name} depends on {d}"
                );
            }
        }
    }
    assert!(seen >= LAYERS.len(), "found {seen} crates");
}

#[test]
fn the_parser_sees_dependencies() {
    let d = deps(
        "[package]\nname = \"x\"\n[dependencies]\nccl-ledger.workspace = true\ntokio = \"1\"\n[dev-dependencies]\nfoo = \"1\"\n",
    );
    assert_eq!(d, vec!["ccl-ledger", "tokio"]);
}
