//! Embeds the Rego bundle (`policies/*.rego` without tests, plus `data.json`)
//! into the crate and computes its revision, so a policy change ships as a
//! rebuild and every build can say exactly which policy it enforces.
//!
//! `AGENTPLANE_POLICY_DIR` points the build at another bundle directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

fn main() {
    if let Err(e) = run() {
        println!("cargo::error=agentplane policy bundle: {e}");
    }
}

fn run() -> Result<(), String> {
    println!("cargo::rerun-if-env-changed=AGENTPLANE_POLICY_DIR");
    let manifest = env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?;
    let dir = match env::var("AGENTPLANE_POLICY_DIR") {
        Ok(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(&manifest).join("../../policies"),
    };
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("policy directory {}: {e}", dir.display()))?;
    println!("cargo::rerun-if-changed={}", dir.display());

    let mut modules: Vec<PathBuf> = Vec::new();
    for entry in fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".rego") && !name.ends_with("_test.rego") {
            println!("cargo::rerun-if-changed={}", path.display());
            modules.push(path);
        }
    }
    modules.sort();
    if modules.is_empty() {
        return Err(format!("no .rego modules in {}", dir.display()));
    }
    let data = dir.join("data.json");
    println!("cargo::rerun-if-changed={}", data.display());

    // FNV-1a over names and contents: an identifier of the bundle, not a MAC.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    let mut out = String::from("/// Rego modules compiled into the filter: (file name, source).\npub static MODULES: &[(&str, &str)] = &[\n");
    for m in &modules {
        let name = m
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("policy.rego");
        let body = fs::read(m).map_err(|e| format!("{}: {e}", m.display()))?;
        feed(name.as_bytes());
        feed(&body);
        let _ = writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            m.display().to_string()
        );
    }
    out.push_str("];\n");
    if data.exists() {
        let body = fs::read(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        feed(b"data.json");
        feed(&body);
        let _ = writeln!(
            out,
            "/// The bundle's `data.json`.\npub static DATA_JSON: &str = include_str!({:?});",
            data.display().to_string()
        );
    } else {
        out.push_str(
            "/// The bundle's `data.json` (absent: empty).\npub static DATA_JSON: &str = \"{}\";\n",
        );
    }
    let _ = writeln!(
        out,
        "/// Content hash of the embedded modules and data.\npub static REVISION: &str = \"{hash:016x}\";"
    );
    let out_dir = env::var("OUT_DIR").map_err(|e| e.to_string())?;
    fs::write(Path::new(&out_dir).join("bundle.rs"), out).map_err(|e| e.to_string())?;
    Ok(())
}
