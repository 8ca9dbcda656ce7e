//! Config loading shared by both daemons: YAML text to typed structs, secret key files, and the exit code for a
//! bad config.
//!
//! Invariants:
//! - Every error a user can get from a config names the field path (`limits.idle_timeout`, `listen[1]`,
//!   `clients.cpe-1.key_file`) and the reason. Structs deserialized here are expected to carry
//!   `#[serde(deny_unknown_fields)]`, so an unknown key is an error naming that key.
//! - Secret key bytes never appear in an error message or a `Debug` output of this module.
//! - Relative paths inside a config file are resolved against the directory of that file
//!   ([`resolve_relative`]), so a config works the same whatever the daemon's working directory is.

use std::fmt::Display;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

mod secret;
pub use secret::{SecretFiles, read_secret_key, secret_file_check, warn};

/// Exit code of a daemon (and of `--check-config`) when the config is bad: `EX_USAGE` (64) as DESIGN §3 fixes.
pub const EXIT_BAD_CONFIG: i32 = 64;

/// Shortest secret key accepted (bytes after decoding): an HMAC-SHA256 key shorter than this is guessable.
pub const MIN_KEY_LEN: usize = 16;

/// Longest secret key file read, so a wrong path (e.g. a device or a log file) cannot make us read without limit.
pub const MAX_KEY_FILE_LEN: u64 = 4096;

/// Everything that can be wrong with a config. Each variant's message names the field it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file itself could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// Path of the config file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: io::Error,
    },
    /// A field is missing, unknown, of the wrong type or has a value that fails validation.
    #[error("{field}: {reason}")]
    Field {
        /// Dotted path of the field (`limits.idle_timeout`, `listen[0]`); `.` for the document itself.
        field: String,
        /// What is wrong, for a human.
        reason: String,
    },
    /// A secret key file named by a field could not be read.
    #[error("{field}: cannot read key file {}: {source}", path.display())]
    KeyFile {
        /// Path of the field naming the file.
        field: String,
        /// Path of the key file as resolved.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: io::Error,
    },
    /// A secret key file was read but its content is not a usable key.
    #[error("{field}: key file {}: {reason}", path.display())]
    KeyFormat {
        /// Path of the field naming the file.
        field: String,
        /// Path of the key file as resolved.
        path: PathBuf,
        /// What is wrong with it (never the key bytes).
        reason: String,
    },
}

impl ConfigError {
    /// A validation failure of `field` (dotted path) with a human reason.
    pub fn invalid(field: impl Into<String>, reason: impl Display) -> Self {
        ConfigError::Field { field: field.into(), reason: reason.to_string() }
    }

    /// The field path this error is about, when it is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Field { field, .. }
            | ConfigError::KeyFile { field, .. }
            | ConfigError::KeyFormat { field, .. } => Some(field),
        }
    }
}

/// Parses YAML `text` into `T`, reporting the field path of the first error.
///
/// `T` should use `#[serde(deny_unknown_fields)]` on every struct so unknown keys are rejected.
pub fn from_yaml_str<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let mut reason = err.inner().to_string();
        // serde_yaml_ng prefixes nested errors with its own idea of the path (sometimes the parent of ours);
        // we print the path once, as `field`.
        if let Some((prefix, rest)) = reason.split_once(": ")
            && !prefix.is_empty()
            && !prefix.contains(char::is_whitespace)
            && path.starts_with(prefix)
        {
            reason = rest.to_owned();
        }
        ConfigError::Field { field: field_of(&path, &reason), reason }
    })
}

/// Reads and parses the YAML config file at `path` (see [`from_yaml_str`]).
pub fn load_yaml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    from_yaml_str(&text)
}

/// serde reports a missing field at its parent's path and the missing name only in the message; an operator
/// wants the full path of the field to add, so it is appended here.
fn field_of(path: &str, reason: &str) -> String {
    if let Some(rest) = reason.strip_prefix("missing field `")
        && let Some(name) = rest.split('`').next()
    {
        return if path == "." { name.to_owned() } else { format!("{path}.{name}") };
    }
    path.to_owned()
}

/// Resolves a path written in the config file at `config_path`: absolute paths stay, relative ones are taken
/// relative to the config file's directory.
pub fn resolve_relative(config_path: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_owned();
    }
    match config_path.parent() {
        Some(dir) => dir.join(p),
        None => p.to_owned(),
    }
}

/// Parses `host:port`, `[v6]:port`, a bare IPv4 or IPv6 address (then `default_port` is used).
pub fn parse_addr_with_default_port(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(s);
    match bare.parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, default_port)),
        Err(_) => Err(format!(
            "`{s}` is not an address: expected `192.0.2.1`, `192.0.2.1:{default_port}`, `2001:db8::1` or \
             `[2001:db8::1]:{default_port}`"
        )),
    }
}

/// serde helper for durations written as `30s`, `500ms`, `5m`, `1h 30m` (humantime syntax):
/// `#[serde(with = "common::config::duration")]`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer, Serializer};

    /// Deserializes a humantime duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a duration string like `30s` or `500ms`"))?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    /// Serializes as a humantime duration string.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// Parses a humantime duration (`30s`, `500ms`, `2m`), with an error message an operator can act on.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration ({e}); write it like `30s`, `500ms` or `5m`"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Limits {
        max: u32,
        #[serde(with = "duration", default = "default_idle")]
        idle: Duration,
    }
    fn default_idle() -> Duration {
        Duration::from_secs(300)
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        listen: Vec<SocketAddr>,
        limits: Limits,
    }

    fn err_of(text: &str) -> ConfigError {
        from_yaml_str::<Doc>(text).expect_err("config should be rejected")
    }

    #[test]
    fn valid_document_parses() {
        let doc: Doc = from_yaml_str("listen: ['192.0.2.1:5124']\nlimits:\n  max: 3\n  idle: 90s\n").unwrap();
        assert_eq!(doc.listen, vec!["192.0.2.1:5124".parse().unwrap()]);
        assert_eq!(doc.limits, Limits { max: 3, idle: Duration::from_secs(90) });
    }

    #[test]
    fn unknown_key_names_its_path() {
        let e = err_of("listen: []\nlimits:\n  max: 3\n  bogus: 1\n");
        assert_eq!(e.field(), Some("limits.bogus"), "{e}");
        assert!(e.to_string().contains("unknown field `bogus`"), "{e}");
        let e = err_of("listen: []\nlimits:\n  max: 3\nextra: true\n");
        assert_eq!(e.field(), Some("extra"), "{e}");
    }

    #[test]
    fn bad_value_names_index_and_reason() {
        let e = err_of("listen: ['192.0.2.1:5124', 'not-an-address']\nlimits: {max: 1}\n");
        assert_eq!(e.field(), Some("listen[1]"), "{e}");
        assert!(e.to_string().starts_with("listen[1]: invalid"), "{e}");
    }

    #[test]
    fn missing_field_names_the_missing_field() {
        let e = err_of("listen: []\nlimits: {idle: 3s}\n");
        assert_eq!(e.field(), Some("limits.max"), "{e}");
        let e = err_of("limits: {max: 1}\n");
        assert_eq!(e.field(), Some("listen"), "{e}");
    }

    #[test]
    fn bad_duration_names_field() {
        let e = err_of("listen: []\nlimits: {max: 1, idle: forever}\n");
        assert_eq!(e.field(), Some("limits.idle"), "{e}");
        assert!(e.to_string().contains("not a duration"), "{e}");
        let e = err_of("listen: []\nlimits: {max: 1, idle: 30}\n");
        assert_eq!(e.field(), Some("limits.idle"), "{e}");
    }

    #[test]
    fn default_port_applies_to_bare_addresses() {
        assert_eq!(parse_addr_with_default_port("192.0.2.1", 5124).unwrap(), "192.0.2.1:5124".parse().unwrap());
        assert_eq!(parse_addr_with_default_port("::", 5124).unwrap(), "[::]:5124".parse().unwrap());
        assert_eq!(parse_addr_with_default_port("[2001:db8::1]", 5124).unwrap(), "[2001:db8::1]:5124".parse().unwrap());
        assert_eq!(parse_addr_with_default_port("[::1]:99", 5124).unwrap(), "[::1]:99".parse().unwrap());
        assert!(parse_addr_with_default_port("example", 5124).is_err());
        assert!(parse_addr_with_default_port("192.0.2.1:99999", 5124).is_err());
    }

    struct TempFile(PathBuf);
    impl TempFile {
        fn new(name: &str, content: &[u8]) -> Self {
            let p = std::env::temp_dir().join(format!("common-config-test-{}-{name}", std::process::id()));
            std::fs::write(&p, content).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
            TempFile(p)
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn key_file_hex_is_decoded_and_trimmed() {
        let f = TempFile::new("hex", b"  00112233445566778899AABBCCDDEEFF00112233445566778899aabbccddeeff\n");
        let key = read_secret_key("clients.a.key_file", &f.0, SecretFiles::Refuse).unwrap();
        assert_eq!(key.len(), 32);
        assert_eq!(key[..4], [0x00, 0x11, 0x22, 0x33]);
    }

    #[test]
    fn key_file_text_is_trimmed_and_binary_is_kept() {
        let f = TempFile::new("text", b"correct horse battery staple\n");
        assert_eq!(read_secret_key("k", &f.0, SecretFiles::Refuse).unwrap(), b"correct horse battery staple");
        let mut bin = vec![0xffu8; 31];
        bin.push(b'\n');
        let f = TempFile::new("bin", &bin);
        assert_eq!(read_secret_key("k", &f.0, SecretFiles::Refuse).unwrap(), bin);
    }

    #[test]
    fn key_file_errors_name_field_and_path() {
        let missing = std::env::temp_dir().join("common-config-test-no-such-key");
        let e = read_secret_key("clients.cpe-1.key_file", &missing, SecretFiles::Refuse).unwrap_err();
        assert_eq!(e.field(), Some("clients.cpe-1.key_file"));
        assert!(e.to_string().contains("no-such-key"), "{e}");
        let f = TempFile::new("short", b"abc\n");
        let e = read_secret_key("clients.cpe-1.key_file", &f.0, SecretFiles::Refuse).unwrap_err();
        assert!(matches!(e, ConfigError::KeyFormat { .. }), "{e}");
        assert!(e.to_string().starts_with("clients.cpe-1.key_file: "), "{e}");
        assert!(!e.to_string().contains("abc"), "secret leaked: {e}");
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let cfg = Path::new("/etc/hag/hag.yaml");
        assert_eq!(resolve_relative(cfg, Path::new("keys/a.key")), Path::new("/etc/hag/keys/a.key"));
        assert_eq!(resolve_relative(cfg, Path::new("/k")), Path::new("/k"));
    }
}
