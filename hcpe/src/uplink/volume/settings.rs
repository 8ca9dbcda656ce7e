//! The `uplinks[].quota` and `volume:` config sections and their checks.

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use common::config::ConfigError;
use serde::Deserialize;

use crate::uplink::settings::Mode;

/// `uplinks[].quota`: a monthly volume limit for one uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaFile {
    /// Bytes per period, received plus sent: a number of bytes or a size like `20GiB`, `500MB`.
    pub limit: ByteSize,
    /// Day of the month (1..=28) on which a new period starts, at 00:00 UTC.
    #[serde(default = "default_reset_day")]
    pub reset_day: u8,
    /// Mode the uplink drops to while over quota.
    #[serde(default)]
    pub action: QuotaAction,
}

/// What happens to an uplink over its quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaAction {
    /// Keep the subflow but with the backup flag: used only when nothing else works.
    #[default]
    Backup,
    /// No endpoint at all until the period ends.
    Off,
}

impl QuotaAction {
    /// The uplink mode this action sets.
    pub fn mode(self) -> Mode {
        match self {
            QuotaAction::Backup => Mode::Backup,
            QuotaAction::Off => Mode::Off,
        }
    }
}

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

fn default_reset_day() -> u8 {
    1
}
fn default_save_interval() -> Duration {
    Duration::from_secs(60)
}

/// Checks `uplinks[index].quota`.
pub fn validate_quota(index: usize, q: &QuotaFile) -> Result<(), ConfigError> {
    if q.limit.as_u64() == 0 {
        return Err(ConfigError::invalid(format!("uplinks[{index}].quota.limit"), "must be more than 0 bytes"));
    }
    if !(1..=28).contains(&q.reset_day) {
        return Err(ConfigError::invalid(
            format!("uplinks[{index}].quota.reset_day"),
            "must be 1..=28 (a day every month has)",
        ));
    }
    Ok(())
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
