//! The `path_control:` section of hcpe's config: the path controller's limits, with their defaults and
//! their checks.

use std::time::Duration;

use serde::Deserialize;

use common::config::{self as cfg, ConfigError};

/// The `path_control:` section of the config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathControlFile {
    /// An adaptive path whose round trip exceeds the best carrying path's by more than this is demoted. The
    /// default lies between a jittery LTE loaded by our own upload (157-165 ms over DSL, and it helps) and a
    /// 3-5 Mbit/s LTE 150 ms away (240-280 ms over a loaded DSL, idle); the connections' 4 MiB windows
    /// ([`common::mptcp::RECEIVE_WINDOW`], [`common::mptcp::SEND_BUFFER`]) cover what a 50 Mbit/s best path
    /// delivers in twice that (`docs/path-control.md`).
    #[serde(with = "cfg::duration", default = "default_excess")]
    pub max_rtt_excess: Duration,
    /// An adaptive path losing more than this fraction of its probes (and more than the best path) is demoted.
    #[serde(default = "default_loss")]
    pub max_loss: f64,
    /// How long a path must be worse than the limits before it is demoted.
    #[serde(with = "cfg::duration", default = "default_demote_after")]
    pub demote_after: Duration,
    /// How long a demoted path must be within half the limits before it is promoted.
    #[serde(with = "cfg::duration", default = "default_promote_after")]
    pub promote_after: Duration,
    /// A busy path whose round trip is this far above its idle minimum is saturated (its queue fills); a
    /// path with an idle round trip under twice this is saturated from half its idle round trip on
    /// (the saturated rule in [`super`]'s module doc).
    #[serde(with = "cfg::duration", default = "default_overflow_delay")]
    pub overflow_delay: Duration,
    /// An overflow path stops carrying when no carrying path has been saturated for this long.
    #[serde(with = "cfg::duration", default = "default_release_after")]
    pub overflow_release_after: Duration,
}

impl Default for PathControlFile {
    fn default() -> Self {
        PathControlFile {
            max_rtt_excess: default_excess(),
            max_loss: default_loss(),
            demote_after: default_demote_after(),
            promote_after: default_promote_after(),
            overflow_delay: default_overflow_delay(),
            overflow_release_after: default_release_after(),
        }
    }
}

fn default_excess() -> Duration {
    Duration::from_millis(200)
}
fn default_loss() -> f64 {
    0.1
}
fn default_demote_after() -> Duration {
    Duration::from_millis(500)
}
fn default_promote_after() -> Duration {
    Duration::from_secs(2)
}
fn default_overflow_delay() -> Duration {
    Duration::from_millis(20)
}
fn default_release_after() -> Duration {
    Duration::from_secs(5)
}

impl PathControlFile {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_rtt_excess < Duration::from_millis(10) {
            return Err(ConfigError::invalid("path_control.max_rtt_excess", "must be at least 10ms"));
        }
        if !(self.max_loss > 0.0 && self.max_loss <= 1.0) {
            return Err(ConfigError::invalid("path_control.max_loss", "must be in (0, 1]"));
        }
        if self.overflow_delay < Duration::from_millis(2) {
            return Err(ConfigError::invalid("path_control.overflow_delay", "must be at least 2ms"));
        }
        Ok(())
    }
}
