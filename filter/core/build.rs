//! Embeds the Rego bundle (`policies/*.rego` without tests, plus `data.json`)
//! into the crate and computes its revision, so a policy change ships as a
//! rebuild and every build can say exactly which policy it enforces. It
//! also compiles the bundle for the default entrypoint to regorus RVM
//! bytecode here, so that a VM loads a finished program at configure time
//! instead of parsing and compiling Rego (see `src/policy/compiled.rs`).
//!
//! `AGENTPLANE_POLICY_DIR` points the build at another bundle directory.
//! `AGENTPLANE_SHADOW_POLICY_DIR` names a second bundle, the shadow
//! revision, compiled for the same entrypoint and evaluated beside the
//! enforced one without enforcing (`policy.shadow_sample`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

// The same code that generates the decision rule and finds the input
// reads at run time, so the build-time program is the runtime one.
#[path = "src/policy/entry.rs"]
mod entry;
#[path = "src/policy/native/gen_body.rs"]
mod native_expr;
#[path = "src/policy/native/gen.rs"]
mod native_gen;
#[path = "src/reads.rs"]
mod reads;

/// What `entry.rs` reports; mirrors the crate's `PolicyError` variants.
enum PolicyError {
    Compile(String),
    Entrypoint(String),
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyError::Compile(e) | PolicyError::Entrypoint(e) => f.write_str(e),
        }
    }
}

/// The entrypoint compiled at build time: `AGENTPLANE_ENTRYPOINT`, by
/// default the config's default (`config/policy.rs`). A configuration
/// naming another one needs a filter built with the `rego-compiler`
/// feature, which compiles it at configure time.
fn entrypoint() -> String {
    match env::var("AGENTPLANE_ENTRYPOINT") {
        Ok(e) if !e.is_empty() => e,
        _ => "data.mcp.authz".to_string(),
    }
}

fn main() {
    if let Err(e) = run() {
        println!("cargo::error=agentplane policy bundle: {e}");
    }
}

fn run() -> Result<(), String> {
    println!("cargo::rerun-if-env-changed=AGENTPLANE_POLICY_DIR");
    println!("cargo::rerun-if-env-changed=AGENTPLANE_ENTRYPOINT");
    println!("cargo::rerun-if-env-changed=AGENTPLANE_SHADOW_POLICY_DIR");
    let manifest = env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?;
    let dir = match env::var("AGENTPLANE_POLICY_DIR") {
        Ok(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(&manifest).join("../../policies"),
    };
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("policy directory {}: {e}", dir.display()))?;
    println!("cargo::rerun-if-changed={}", dir.display());
    for shared in [
        "src/policy/entry.rs",
        "src/reads.rs",
        "src/policy/native/gen.rs",
        "src/policy/native/gen_body.rs",
    ] {
        println!("cargo::rerun-if-changed={shared}");
    }

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
    let mut sources: Vec<(String, String)> = Vec::new();
    let mut out = String::from("/// Rego modules compiled into the filter: (file name, source).\npub static MODULES: &[(&str, &str)] = &[\n");
    for m in &modules {
        let name = m
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("policy.rego");
        let body = fs::read(m).map_err(|e| format!("{}: {e}", m.display()))?;
        feed(name.as_bytes());
        feed(&body);
        let text = String::from_utf8(body).map_err(|e| format!("{}: {e}", m.display()))?;
        sources.push((name.to_string(), text));
        let _ = writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            m.display().to_string()
        );
    }
    out.push_str("];\n");
    let data_json = if data.exists() {
        let body = fs::read(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        feed(b"data.json");
        feed(&body);
        let _ = writeln!(
            out,
            "/// The bundle's `data.json`.\npub static DATA_JSON: &str = include_str!({:?});",
            data.display().to_string()
        );
        String::from_utf8(body).map_err(|e| format!("{}: {e}", data.display()))?
    } else {
        out.push_str(
            "/// The bundle's `data.json` (absent: empty).\npub static DATA_JSON: &str = \"{}\";\n",
        );
        "{}".to_string()
    };
    let _ = writeln!(
        out,
        "/// Content hash of the embedded modules and data.\npub static REVISION: &str = \"{hash:016x}\";"
    );
    let out_dir = env::var("OUT_DIR").map_err(|e| e.to_string())?;
    let out_dir = Path::new(&out_dir);
    out.push_str(&compiled(&sources, &data_json, out_dir)?);
    native(&sources, out_dir)?;
    out.push_str(&shadow(out_dir)?);
    fs::write(out_dir.join("bundle.rs"), out).map_err(|e| e.to_string())?;
    Ok(())
}

/// The package entrypoint compiled to Rust (`src/policy/native/gen.rs`)
/// into `native_policy.rs`. A policy the generator does not translate
/// gets a stub that says why (`AVAILABLE`), the build prints the
/// reason, and the filter evaluates the RVM program instead.
fn native(sources: &[(String, String)], out_dir: &Path) -> Result<(), String> {
    let named: Vec<(&str, &str)> = sources
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_str()))
        .collect();
    let entry = entrypoint();
    let package = entry.strip_prefix("data.").unwrap_or(&entry);
    println!("cargo::rerun-if-env-changed=AGENTPLANE_NATIVE");
    let generated = if env::var("AGENTPLANE_NATIVE").is_ok_and(|v| v == "0") {
        Err("AGENTPLANE_NATIVE=0".to_string())
    } else {
        native_gen::generate(&named, package, &entry::OPTIONAL)
    };
    let code = match generated {
        Ok(code) => format!("{code}\n/// The policy was compiled to Rust.\npub(super) const AVAILABLE: Option<&str> = None;\n"),
        Err(why) if env::var_os("CARGO_FEATURE_RVM").is_none() => {
            return Err(format!(
                "{entry} is not compiled to Rust ({why}), and this build (without the rvm feature) has no VM to run it: build with --features rvm"
            ));
        }
        Err(why) => {
            println!("cargo::warning=agentplane: {entry} is not compiled to Rust ({why}); the filter evaluates its RVM program");
            format!(
                "pub(super) const BUILTIN_ARGS: usize = 0;\npub(super) static BUILTINS: [&str; 0] = [];\npub(super) const RULES: usize = 0;\npub(super) const INPUTS: usize = 0;\npub(super) fn constants() -> Vec<Value> {{ Vec::new() }}\n/// Why the policy was not compiled to Rust.\npub(super) const AVAILABLE: Option<&str> = Some({why:?});\nimpl Eval<'_> {{\n    pub(super) fn decision(&mut self) -> R {{\n        Err(AVAILABLE.unwrap_or_default().to_string())\n    }}\n}}\n"
            )
        }
    };
    fs::write(out_dir.join("native_policy.rs"), code).map_err(|e| e.to_string())
}

/// The shadow revision (`AGENTPLANE_SHADOW_POLICY_DIR`), compiled for the
/// same entrypoint: the `SHADOW` and `SHADOW_REVISION` items. It must
/// compile to the RVM (nothing compiles it at configure time).
fn shadow(out_dir: &Path) -> Result<String, String> {
    let dir = match env::var("AGENTPLANE_SHADOW_POLICY_DIR") {
        Ok(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            return Ok("/// No shadow revision in this build.\npub static SHADOW: Option<Compiled> = None;\n/// The shadow revision's content hash (none).\npub static SHADOW_REVISION: &str = \"\";\n".into())
        }
    };
    if env::var_os("CARGO_FEATURE_RVM").is_none() {
        return Err("a shadow revision runs on the RVM: build with --features rvm".into());
    }
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("shadow policy directory {}: {e}", dir.display()))?;
    println!("cargo::rerun-if-changed={}", dir.display());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut sources: Vec<(String, String)> = Vec::new();
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".rego") && !name.ends_with("_test.rego") {
            paths.push(path);
        }
    }
    paths.sort();
    for p in paths {
        println!("cargo::rerun-if-changed={}", p.display());
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("policy.rego")
            .to_string();
        let text = fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        for b in name.bytes().chain(text.bytes()) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        sources.push((name, text));
    }
    let data = dir.join("data.json");
    println!("cargo::rerun-if-changed={}", data.display());
    let data_json = if data.exists() {
        fs::read_to_string(&data).map_err(|e| format!("{}: {e}", data.display()))?
    } else {
        "{}".to_string()
    };
    for b in b"data.json".iter().chain(data_json.as_bytes()) {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let named: Vec<(&str, &str)> = sources
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_str()))
        .collect();
    let entry = entrypoint();
    match compile(&named, &data_json, &entry, out_dir, "shadow", "SHADOW")? {
        Ok(item) => Ok(format!(
            "{item}/// The shadow revision's content hash.\npub static SHADOW_REVISION: &str = \"{hash:016x}\";\n"
        )),
        Err(why) => Err(format!("the shadow policy in {} does not compile: {why}", dir.display())),
    }
}

/// Compiles the bundle for [`entrypoint`] exactly as `Policy::compile_for`
/// does at run time, writes the program and the data in regorus' binary
/// program format to `out_dir`, and returns the `COMPILED` and `READS`
/// items of `bundle.rs`. A bundle that does not declare the entrypoint, or
/// that the RVM cannot compile, gets no program (`COMPILED = None`): the
/// filter then compiles at configure time as before, reporting the same
/// errors or falling back to the interpreter. A program that does not load
/// back complete is a build failure, and so is a bundle without a program
/// in a build that cannot compile Rego at configure time.
fn compiled(
    sources: &[(String, String)],
    data_json: &str,
    out_dir: &Path,
) -> Result<String, String> {
    let named: Vec<(&str, &str)> = sources
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_str()))
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "/// The input paths the modules read (see `reads.rs`), found at build time.\npub static READS: Option<&[&[&str]]> = {};",
        match reads::input_reads(&named) {
            Some(paths) => format!(
                "Some(&[{}])",
                paths
                    .iter()
                    .map(|p| format!("&{p:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => "None".to_string(),
        }
    );
    let entry = entrypoint();
    match compile(&named, data_json, &entry, out_dir, "policy", "COMPILED")? {
        Ok(item) => out.push_str(&item),
        Err(why) if env::var_os("CARGO_FEATURE_REGO_COMPILER").is_none() => {
            return Err(format!(
                "{entry} does not compile to the RVM ({why}), and this build (without the rego-compiler feature) cannot compile it at configure time"
            ));
        }
        Err(why) => {
            println!("cargo::warning=agentplane: {entry} compiles at configure time: {why}");
            out.push_str(
                "/// No program compiled at build time: see the build's warning.\npub static COMPILED: Option<Compiled> = None;\n",
            );
        }
    }
    Ok(out)
}

/// The outer error fails the build; the inner one leaves the compiling to
/// configure time.
fn compile(
    modules: &[(&str, &str)],
    data_json: &str,
    entrypoint: &str,
    out_dir: &Path,
    stem: &str,
    item: &str,
) -> Result<Result<String, String>, String> {
    use regorus::languages::rego::compiler::Compiler;
    use regorus::rvm::program::DeserializationResult;
    use regorus::rvm::{Program, RegoVM};

    let mut engine = regorus::Engine::new();
    engine.set_rego_v0(false);
    for (name, src) in modules {
        if let Err(e) = engine.add_policy((*name).to_string(), (*src).to_string()) {
            return Ok(Err(format!("{name}: {e}")));
        }
    }
    let data = match regorus::Value::from_json_str(data_json) {
        Ok(d) => d,
        Err(e) => return Ok(Err(format!("data.json: {e}"))),
    };
    if let Err(e) = engine.add_data(data.clone()) {
        return Ok(Err(format!("data.json: {e}")));
    }
    let packages = engine.get_packages().map_err(|e| e.to_string())?;
    let in_package = entry::in_package(modules, &packages, entrypoint);
    let (rule, package, limits) = if in_package.is_empty() {
        (entrypoint.to_string(), false, false)
    } else {
        match entry::add(&mut engine, &in_package, entrypoint) {
            Ok((rule, limits)) => (rule, true, limits),
            Err(e) => return Ok(Err(e.to_string())),
        }
    };
    // The entry rule must exist (the runtime checks it the same way).
    if let Err(e) = engine.clone().eval_rule(rule.clone()) {
        return Ok(Err(format!("{rule}: {e}")));
    }
    let entry: regorus::Rc<str> = regorus::Rc::from(rule.as_str());
    let policy = match engine.compile_with_entrypoint(&entry) {
        Ok(p) => p,
        Err(e) => return Ok(Err(format!("RVM: {e}"))),
    };
    let program = match Compiler::compile_from_policy(&policy, &[rule.as_str()]) {
        Ok(p) => p,
        Err(e) => return Ok(Err(format!("RVM: {e}"))),
    };
    // The VM never reads the Rego text or the spans (they serve listings
    // and debugging): the shipped program carries neither.
    let mut program = (*program).clone();
    for source in &mut program.sources {
        source.content.clear();
    }
    for span in &mut program.instruction_spans {
        *span = None;
    }
    let bytes = program.serialize_binary()?;
    // The data as a program's rule tree: regorus' binary value encoding,
    // which the runtime reads back without a JSON parse.
    let carrier = Program {
        rule_tree: data.clone(),
        ..Program::new()
    };
    let data_bytes = carrier.serialize_binary()?;

    // Load both back as the filter will, and run the empty input: a
    // program this regorus cannot load complete, or that fails on its
    // data, must not ship.
    let loaded = match Program::deserialize_binary(&bytes)? {
        DeserializationResult::Complete(p) => p,
        DeserializationResult::Partial(_) => {
            return Err("the compiled program loads back only partially".into())
        }
    };
    let loaded_data = match Program::deserialize_binary(&data_bytes)? {
        DeserializationResult::Complete(p) => p.rule_tree,
        DeserializationResult::Partial(_) => {
            return Err("the compiled data loads back only partially".into())
        }
    };
    if loaded_data != data {
        return Err("the compiled data does not load back equal".into());
    }
    let mut vm = RegoVM::new();
    vm.load_program(std::sync::Arc::new(loaded));
    vm.set_data(loaded_data).map_err(|e| e.to_string())?;
    vm.set_input(regorus::Value::new_object());
    vm.execute()
        .map_err(|e| format!("the compiled program: {e}"))?;

    fs::write(out_dir.join(format!("{stem}.rvm")), &bytes).map_err(|e| e.to_string())?;
    fs::write(out_dir.join(format!("{stem}_data.rvm")), &data_bytes).map_err(|e| e.to_string())?;
    // A build without the VM carries neither blob (the Rust-compiled
    // policy reads the data from `DATA_JSON`).
    let (program_item, data_item) = if env::var_os("CARGO_FEATURE_RVM").is_some() {
        (
            format!("include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{stem}.rvm\"))"),
            format!("include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{stem}_data.rvm\"))"),
        )
    } else {
        ("&[]".to_string(), "&[]".to_string())
    };
    Ok(Ok(format!(
        "/// {entrypoint} compiled to RVM bytecode at build time.\n\
         pub static {item}: Option<Compiled> = Some(Compiled {{\n\
         \x20   entrypoint: {entrypoint:?},\n\
         \x20   rule: {rule:?},\n\
         \x20   package: {package},\n\
         \x20   limits: {limits},\n\
         \x20   program: {program_item},\n\
         \x20   data: {data_item},\n\
         }});\n"
    )))
}
