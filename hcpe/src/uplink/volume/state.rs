//! The state file: totals per uplink across restarts, JSON, replaced atomically (temp file + rename).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::account::Totals;

/// Errors of the state file. Reading errors make the tracker start from zero (logged), writing errors are
/// logged and retried at the next save.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The file exists but cannot be read.
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is not a state file of this version.
    #[error("parsing {path}: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    /// The file (or its temporary sibling) cannot be written.
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The state file's content (JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// Format version, 1.
    pub version: u32,
    /// Totals per uplink name.
    pub uplinks: BTreeMap<String, Totals>,
}

impl StateFile {
    /// Reads `path`; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<StateFile, VolumeError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(StateFile { version: 1, ..Default::default() });
            }
            Err(source) => return Err(VolumeError::Read { path: path.to_owned(), source }),
        };
        serde_json::from_slice(&text).map_err(|source| VolumeError::Parse { path: path.to_owned(), source })
    }

    /// Replaces `path` atomically: a temporary file in the same directory, synced, renamed over it.
    pub fn save(&self, path: &Path) -> Result<(), VolumeError> {
        let err = |source| VolumeError::Write { path: path.to_owned(), source };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut tmp = tempfile::Builder::new().prefix(".volume-").suffix(".tmp").tempfile_in(dir).map_err(err)?;
        serde_json::to_writer_pretty(&mut tmp, self).map_err(|e| err(e.into()))?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(path).map_err(|e| err(e.error))?;
        Ok(())
    }
}
