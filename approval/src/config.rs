//! The command line: flags read into a [`Config`], and the three files they
//! name (the OIDC client secret, the filter's key, the Ed25519 seed) read
//! and checked. Every error names the flag and, for files, the path, never
//! a file's content. `main` turns an error into exit status 2.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use std::net::SocketAddr;

/// The usage text (`--help`).
pub const USAGE: &str = "\
agentplane-approval: human approval of exact tool calls

  --listen ADDR               address to listen on, e.g. 127.0.0.1:8090 (port 0: any)
  --public-url URL            base of page links (default http://<listen address>)
  --issuer URL                the identity provider (OIDC discovery under it)
  --client-id ID              this service's OIDC client at the provider
  --client-secret-file PATH   its secret (client_secret_basic), on one line
  --filter-key-file PATH      the bearer token the filter presents on /v1/check
                              (16 characters at least)
  --signing-key-file PATH     Ed25519 seed: 32 bytes, base64url without padding
  --kid ID                    the grant key's id in /jwks.json (default approval-1)
  --links-file PATH           linked accounts at third-party services (JSON; see
                              docs/acting-for-users.md#linked-accounts): off without it
";

/// Shortest filter key accepted: a guessable key lets anyone collect grants.
pub const MIN_FILTER_KEY: usize = 16;

/// What the service runs with. Not `Debug`: it holds secrets.
pub struct Config {
    pub listen: SocketAddr,
    /// Without a trailing slash; `None`: `http://<bound address>`.
    pub public_url: Option<String>,
    /// As given: the ID token's `iss` must be exactly this.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    pub filter_key: String,
    pub seed: [u8; 32],
    pub kid: String,
    /// `--links-file`, read when the service starts.
    pub links_file: Option<String>,
}

/// What the command line asks for.
pub enum Command {
    Help,
    Run(Box<Config>),
}

/// Reads the flags (without the program name) and the files they name.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut listen = None;
    let mut public_url = None;
    let mut issuer = None;
    let mut client_id = None;
    let mut secret_file = None;
    let mut key_file = None;
    let mut seed_file = None;
    let mut kid = None;
    let mut links_file = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--help" || arg == "-h" {
            return Ok(Command::Help);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        let slot = match flag.as_str() {
            "--listen" => &mut listen,
            "--public-url" => &mut public_url,
            "--issuer" => &mut issuer,
            "--client-id" => &mut client_id,
            "--client-secret-file" => &mut secret_file,
            "--filter-key-file" => &mut key_file,
            "--signing-key-file" => &mut seed_file,
            "--kid" => &mut kid,
            "--links-file" => &mut links_file,
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        };
        let value = match inline {
            Some(v) => v,
            None => args.next().ok_or_else(|| format!("{flag} needs a value"))?,
        };
        if slot.replace(value).is_some() {
            return Err(format!("{flag} given twice"));
        }
    }
    let need = |v: Option<String>, flag: &str| v.ok_or_else(|| format!("{flag} is required"));
    let listen = need(listen, "--listen")?;
    let listen: SocketAddr = listen
        .parse()
        .map_err(|_| format!("--listen {listen:?}: not an address like 127.0.0.1:8090"))?;
    let public_url = public_url
        .map(|u| http_url("--public-url", &u))
        .transpose()?;
    let issuer = need(issuer, "--issuer")?;
    http_url("--issuer", &issuer)?;
    let client_id = need(client_id, "--client-id")?;
    if client_id.is_empty() {
        return Err("--client-id is empty".into());
    }
    let client_secret = one_line(
        "--client-secret-file",
        &need(secret_file, "--client-secret-file")?,
    )?;
    let key_path = need(key_file, "--filter-key-file")?;
    let filter_key = one_line("--filter-key-file", &key_path)?;
    if filter_key.len() < MIN_FILTER_KEY || !filter_key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "--filter-key-file {key_path}: the key must be at least {MIN_FILTER_KEY} printable ASCII characters"
        ));
    }
    let seed = seed(&need(seed_file, "--signing-key-file")?)?;
    let kid = kid.unwrap_or_else(|| "approval-1".into());
    if kid.is_empty() {
        return Err("--kid is empty".into());
    }
    Ok(Command::Run(Box::new(Config {
        listen,
        public_url,
        issuer,
        client_id,
        client_secret,
        filter_key,
        seed,
        kid,
        links_file,
    })))
}

/// An http(s) URL with no query or fragment, without its trailing slash.
fn http_url(flag: &str, s: &str) -> Result<String, String> {
    let u = url::Url::parse(s).map_err(|e| format!("{flag} {s:?}: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err(format!("{flag} {s:?}: not an http(s) URL"));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(format!("{flag} {s:?}: no query or fragment allowed"));
    }
    Ok(s.trim_end_matches('/').to_string())
}

/// A file holding one non-empty line (a trailing newline allowed).
fn one_line(flag: &str, path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{flag} {path}: {e}"))?;
    let line = text.strip_suffix('\n').unwrap_or(&text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.is_empty() || line.contains('\n') {
        return Err(format!("{flag} {path}: expected one non-empty line"));
    }
    Ok(line.to_string())
}

/// The Ed25519 seed file: 32 bytes, base64url without padding, one line.
fn seed(path: &str) -> Result<[u8; 32], String> {
    let flag = "--signing-key-file";
    let bad = || {
        format!("{flag} {path}: expected a 32-byte Ed25519 seed, base64url without padding, on one line")
    };
    let line = one_line(flag, path)?;
    let bytes = URL_SAFE_NO_PAD.decode(line.trim()).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fresh directory, removed (with the keys written in it) when
    /// the test ends, passed or not.
    struct Tmp(PathBuf);

    impl std::ops::Deref for Tmp {
        type Target = std::path::Path;
        fn deref(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir() -> Tmp {
        let d = std::env::temp_dir().join(format!(
            "agentplane-approval-config-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        Tmp(d)
    }

    fn args(d: &std::path::Path, extra: &[&str]) -> Vec<String> {
        let p = |n: &str| d.join(n).display().to_string();
        let mut v: Vec<String> = [
            "--listen",
            "127.0.0.1:0",
            "--issuer",
            "http://127.0.0.1:9/",
            "--client-id",
            "approval",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend([
            format!("--client-secret-file={}", p("secret")),
            "--filter-key-file".into(),
            p("key"),
            "--signing-key-file".into(),
            p("seed"),
        ]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    fn write(d: &std::path::Path, seed: &str, key: &str) {
        std::fs::write(d.join("secret"), "s3cret\n").unwrap();
        std::fs::write(d.join("key"), key).unwrap();
        std::fs::write(d.join("seed"), seed).unwrap();
    }

    fn error(a: Vec<String>) -> String {
        match parse(a) {
            Err(e) => e,
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn good_flags_and_files_are_read() {
        let d = dir();
        write(
            &d,
            &format!("{}\n", URL_SAFE_NO_PAD.encode([3u8; 32])),
            "k".repeat(16).as_str(),
        );
        let Ok(Command::Run(c)) = parse(args(&d, &["--public-url", "https://x.test/"])) else {
            panic!("refused")
        };
        assert_eq!(c.seed, [3u8; 32]);
        assert_eq!(c.client_secret, "s3cret");
        assert_eq!(c.filter_key, "k".repeat(16));
        assert_eq!(c.kid, "approval-1");
        assert_eq!(c.public_url.as_deref(), Some("https://x.test"));
        assert_eq!(c.issuer, "http://127.0.0.1:9/");
    }

    #[test]
    fn bad_keys_and_flags_say_which_and_never_the_content() {
        let d = dir();
        write(&d, &URL_SAFE_NO_PAD.encode([3u8; 31]), &"k".repeat(16));
        let e = error(args(&d, &[]));
        assert!(
            e.contains("--signing-key-file") && e.contains("32-byte"),
            "{e}"
        );
        write(&d, "not base64 at all!", &"k".repeat(16));
        assert!(error(args(&d, &[])).contains("--signing-key-file"));
        write(&d, &URL_SAFE_NO_PAD.encode([3u8; 32]), "short-key");
        let e = error(args(&d, &[]));
        assert!(
            e.contains("--filter-key-file") && !e.contains("short-key"),
            "{e}"
        );
        write(&d, &URL_SAFE_NO_PAD.encode([3u8; 32]), &"k".repeat(16));
        assert!(error(args(&d, &["--bogus", "1"])).contains("unknown argument"));
        assert!(error(args(&d, &["--kid"])).contains("--kid needs a value"));
        assert!(error(args(&d, &["--listen", "x"])).contains("given twice"));
        assert!(error(args(&d, &["--public-url", "ftp://x"])).contains("--public-url"));
        let mut a = args(&d, &[]);
        a.splice(0..2, ["--listen".to_string(), "nowhere".to_string()]);
        assert!(error(a).contains("--listen"));
        std::fs::remove_file(d.join("secret")).unwrap();
        assert!(error(args(&d, &[])).contains("--client-secret-file"));
    }
}
