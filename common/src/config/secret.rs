//! Secret files (CPE keys, admin tokens): reading them, and who else may read them.
//!
//! A key that the group or other users can read is a key others on the host may know. By default a daemon
//! refuses such a file (the config fails naming it and the fix); `secret_files: warn` makes it a warning
//! instead. The example key and token shipped in `deploy/examples/` are public whatever their mode: a daemon
//! that finds one says so loudly, and does not hold the (meaningless) mode against it, so the examples work
//! from a fresh checkout.

use std::fs::File;
use std::io::Read as _;
use std::path::Path;

use serde::Deserialize;

use super::{ConfigError, MAX_KEY_FILE_LEN, MIN_KEY_LEN};

/// The example key and token of `deploy/examples/hag-keys/`, to recognise them wherever they are copied.
const EXAMPLE_SECRETS: [&str; 2] = [
    include_str!("../../../deploy/examples/hag-keys/example-cpe.key"),
    include_str!("../../../deploy/examples/hag-keys/admin.token"),
];

/// What a daemon does with a secret file its group or other users can read (`secret_files:` in both
/// configs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretFiles {
    /// The config is refused, naming the file and the fix.
    #[default]
    Refuse,
    /// A warning names the file and the fix; the daemon goes on.
    Warn,
}

/// A warning where the operator sees it: the daemon's log once logging is up (start, reload), stderr before
/// (`--check-config`, and while the config is first read).
pub fn warn(message: &str) {
    if tracing::dispatcher::has_been_set() {
        tracing::warn!("{message}");
    } else {
        eprintln!("warning: {message}");
    }
}

/// Checks a secret file's content and mode: the public example content is a warning; otherwise a mode that
/// lets the group or others read is refused or warned about as `policy` says. `kind` names the secret in
/// messages (`key`, `admin token`).
pub fn secret_file_check(
    field: &str,
    path: &Path,
    file: &File,
    content: &[u8],
    kind: &str,
    policy: SecretFiles,
) -> Result<(), ConfigError> {
    let text = String::from_utf8_lossy(content);
    if EXAMPLE_SECRETS.iter().any(|e| e.trim() == text.trim()) {
        warn(&format!(
            "{field}: {} holds the public example {kind} from deploy/examples: anyone can use it; make a real one \
             with `head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'`",
            path.display()
        ));
        return Ok(());
    }
    use std::os::unix::fs::PermissionsExt as _;
    let mode = file.metadata().map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let reason = format!(
        "readable by {} (mode {mode:04o}); `chmod 600 {}` and owned by the daemon's user, or set `secret_files: warn`",
        if mode & 0o007 != 0 { "every user" } else { "its group" },
        path.display()
    );
    match policy {
        SecretFiles::Refuse => Err(ConfigError::KeyFormat { field: field.to_owned(), path: path.to_owned(), reason }),
        SecretFiles::Warn => {
            warn(&format!("{field}: {kind} file {}: {reason}", path.display()));
            Ok(())
        }
    }
}

/// Reads a secret key from the file at `path`, named by config field `field` (for the error message), and
/// checks its mode ([`secret_file_check`]).
///
/// Accepted content: hex text (any case, surrounding whitespace ignored) which is decoded; any other UTF-8
/// text is taken as raw bytes after trimming surrounding whitespace; non-UTF-8 content (e.g. 32 bytes from
/// `/dev/urandom`) is taken byte for byte, untrimmed, since a trailing 0x0a there is part of the key.
/// The key must be at least [`MIN_KEY_LEN`] bytes.
pub fn read_secret_key(field: &str, path: &Path, policy: SecretFiles) -> Result<Vec<u8>, ConfigError> {
    let key_file = |source| ConfigError::KeyFile { field: field.to_owned(), path: path.to_owned(), source };
    let file = File::open(path).map_err(key_file)?;
    let mut raw = Vec::new();
    (&file).take(MAX_KEY_FILE_LEN + 1).read_to_end(&mut raw).map_err(key_file)?;
    let format = |reason: String| ConfigError::KeyFormat { field: field.to_owned(), path: path.to_owned(), reason };
    if raw.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(format(format!("longer than {MAX_KEY_FILE_LEN} bytes; is this really a key file?")));
    }
    secret_file_check(field, path, &file, &raw, "key", policy)?;
    let key = decode_key(raw);
    if key.len() < MIN_KEY_LEN {
        return Err(format(format!("key is {} bytes, at least {MIN_KEY_LEN} are needed", key.len())));
    }
    Ok(key)
}

fn decode_key(raw: Vec<u8>) -> Vec<u8> {
    match String::from_utf8(raw) {
        Ok(text) => {
            let text = text.trim();
            if !text.is_empty()
                && text.len() % 2 == 0
                && text.bytes().all(|b| b.is_ascii_hexdigit())
                && let Ok(bytes) = hex::decode(text)
            {
                return bytes;
            }
            text.as_bytes().to_vec()
        }
        Err(not_utf8) => not_utf8.into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn key_file(dir: &Path, content: &str, mode: u32) -> std::path::PathBuf {
        let p = dir.join("cpe.key");
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn a_key_others_can_read_is_refused_naming_the_file_and_the_fix_or_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let hex = "00112233445566778899aabbccddeeff";
        let p = key_file(dir.path(), hex, 0o644);
        let e = read_secret_key("hag.key_file", &p, SecretFiles::Refuse).unwrap_err().to_string();
        assert!(e.starts_with("hag.key_file: key file "), "{e}");
        assert!(e.contains("readable by every user (mode 0644)"), "{e}");
        assert!(e.contains(&format!("chmod 600 {}", p.display())), "{e}");
        assert!(!e.contains(hex), "the key must not be in the message: {e}");
        assert_eq!(read_secret_key("hag.key_file", &p, SecretFiles::Warn).unwrap().len(), 16);
        let p = key_file(dir.path(), hex, 0o640);
        let e = read_secret_key("k", &p, SecretFiles::Refuse).unwrap_err().to_string();
        assert!(e.contains("readable by its group (mode 0640)"), "{e}");
        let p = key_file(dir.path(), hex, 0o600);
        assert!(read_secret_key("k", &p, SecretFiles::Refuse).is_ok());
    }

    #[test]
    fn the_public_example_key_passes_whatever_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = key_file(dir.path(), EXAMPLE_SECRETS[0], 0o644);
        assert!(read_secret_key("hag.key_file", &p, SecretFiles::Refuse).is_ok());
    }
}
