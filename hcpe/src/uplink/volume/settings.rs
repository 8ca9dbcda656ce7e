//! The `volume:` config section and its check (each uplink's `quota` is an uplink setting:
//! `crate::uplink::settings::QuotaFile`).

use std::path::PathBuf;
use std::time::Duration;

use common::config::ConfigError;
use serde::Deserialize;

/// The top-level `volume:` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeFile {
    /// Where the totals are kept across restarts (relative to the config file). Absent: counted in memory
    /// only, so every restart starts from zero and a quota period's volume is forgotten.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// How often the state file is written (also on a quota event and on shutdown).
    #[serde(with = "common::config::duration", default = "default_save_interval")]
    pub save_interval: Duration,
}

impl Default for VolumeFile {
    fn default() -> Self {
        VolumeFile { state_file: None, save_interval: default_save_interval() }
    }
}

fn default_save_interval() -> Duration {
    Duration::from_secs(60)
}

/// Checks the `volume:` section.
pub fn validate_volume(v: &VolumeFile) -> Result<(), ConfigError> {
    if v.save_interval < Duration::from_secs(1) {
        return Err(ConfigError::invalid("volume.save_interval", "must be at least 1s"));
    }
    if v.state_file.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
        return Err(ConfigError::invalid("volume.state_file", "must not be empty"));
    }
    Ok(())
}
