//! `POST /api/v1/reload`: re-read the config file the daemon started with, validate it whole, apply what can
//! change live and name what needs a restart.
//!
//! Live: each uplink's `mode` (through `UplinkControl::set_mode` with reason `reload`, only for uplinks whose
//! mode in the file changed, so a mode set through the API survives a reload that does not touch it), the
//! ready-connection pool's sizes (`hag.pool`),
//! `log_level` (when the daemon gave a [`LogLevelSetter`]) and the admin token (`admin.token_file` is re-read
//! on every reload; the token is not listed as a change, since only its digest is kept).
//! Everything else is reported under `restart_required` until the daemon restarts.
//!
//! Invariants: an invalid file changes nothing (400 naming the field; no path of a server-side file in the
//! message); reloads run one at a time; the running config (`Reloader::running`) is what the daemon really
//! runs with, i.e. only live-applied fields are updated in it.

use std::path::PathBuf;
use std::sync::Arc;

use common::admin::{ApiError, Auth};
use common::config::ConfigError;
use serde::Serialize;
use tracing::{info, warn};

use crate::config::Config;
use crate::conn::pool::Pool;
use crate::uplink::{ModeReason, UplinkControl};

/// Sets the daemon's log filter at run time (`Err` says why not, e.g. `RUST_LOG` overrides the config).
pub use common::process::LogLevelSetter;

/// Body of a successful reload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = Reload)]
pub struct ReloadOutcome {
    /// Always `true` (a failed reload is a 400).
    pub reloaded: bool,
    /// Field paths whose value differs from the running config.
    pub changed: Vec<String>,
    /// Of those, what took effect now.
    pub applied: Vec<String>,
    /// Of those, what takes effect only after a restart.
    pub restart_required: Vec<String>,
}

/// Reloads the config file; holds the running config.
pub struct Reloader {
    path: Option<PathBuf>,
    running: tokio::sync::Mutex<Config>,
    log: Option<LogLevelSetter>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").field("path", &self.path).field("log", &self.log.is_some()).finish_non_exhaustive()
    }
}

/// The message of a 400 for a bad config: field path and reason, without file paths.
fn bad_config(e: &ConfigError) -> ApiError {
    let msg = match e {
        ConfigError::Read { source, .. } => format!("cannot read the config file: {source}"),
        ConfigError::Field { .. } => e.to_string(),
        ConfigError::KeyFile { field, source, .. } => format!("{field}: cannot read the file: {source}"),
        ConfigError::KeyFormat { field, reason, .. } => format!("{field}: {reason}"),
    };
    ApiError::bad_request(msg)
}

impl Reloader {
    /// Reloads from `path` (the file `running` was read from; `None`: reload answers 409).
    pub fn new(path: Option<PathBuf>, running: Config, log: Option<LogLevelSetter>) -> Self {
        Reloader { path, running: tokio::sync::Mutex::new(running), log }
    }

    /// Reads and validates the file, applies the live changes and reports.
    pub async fn reload(
        &self,
        uplinks: Option<&UplinkControl>,
        auth: Option<&Arc<Auth>>,
        pool: Option<&Pool>,
    ) -> Result<ReloadOutcome, ApiError> {
        let Some(path) = self.path.clone() else {
            return Err(ApiError::conflict("hcpe was not started from a config file: nothing to reload"));
        };
        let mut running = self.running.lock().await;
        let new = tokio::task::spawn_blocking(move || Config::from_file(&path))
            .await
            .map_err(|e| ApiError::internal(format!("config reload task: {e}")))?
            .map_err(|e| {
                warn!(error = %e, "config reload refused: the running config stays");
                bad_config(&e)
            })?;
        // The token cannot be compared (only its digest is kept, without an accessor): it is simply re-read.
        if let (Some(auth), Some(new_admin), Some(run_admin)) = (auth, &new.admin, &mut running.admin) {
            auth.set_token(new_admin.token.clone());
            run_admin.token = new_admin.token.clone();
        }
        let mut out = ReloadOutcome { reloaded: true, ..Default::default() };
        for change in diff(&running, &new) {
            out.changed.push(change.clone());
            let applied = match change.as_str() {
                "log_level" => match &self.log {
                    Some(set) => match set(&new.log_level) {
                        Ok(()) => {
                            running.log_level = new.log_level.clone();
                            true
                        }
                        Err(why) => {
                            warn!(%why, "log_level not changed");
                            false
                        }
                    },
                    None => false,
                },
                "hag.pool" => match pool {
                    Some(pool) => {
                        pool.apply(new.pool);
                        running.pool = new.pool;
                        true
                    }
                    None => false,
                },
                c => match mode_change(c) {
                    Some(i) => match uplinks {
                        Some(control) => {
                            let (name, mode) = (&new.uplinks[i].name, new.uplinks[i].mode);
                            match control.set_mode(name, mode, ModeReason::Reload).await {
                                Ok(_) => {
                                    running.uplinks[i].mode = mode;
                                    true
                                }
                                Err(e) => {
                                    warn!(uplink = %name, error = %e, "reload: mode not applied");
                                    false
                                }
                            }
                        }
                        None => false,
                    },
                    None => false,
                },
            };
            if applied {
                out.applied.push(change);
            } else {
                out.restart_required.push(change);
            }
        }
        info!(changed = ?out.changed, applied = ?out.applied, restart_required = ?out.restart_required, "config reloaded");
        Ok(out)
    }
}

/// `uplinks[i].mode` -> `i`.
fn mode_change(path: &str) -> Option<usize> {
    path.strip_prefix("uplinks[")?.strip_suffix("].mode")?.parse().ok()
}

/// Field paths whose value differs between `old` and `new`. Uplinks are compared field by field when the
/// list keeps its names in order (so a mode change is live); any other uplink change is `uplinks`.
pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut cmp = |path: &str, a: String, b: String| {
        if a != b {
            out.push(path.to_owned());
        }
    };
    let d = |v: &dyn std::fmt::Debug| format!("{v:?}");
    cmp("lan_interfaces", d(&old.lan_interfaces), d(&new.lan_interfaces));
    cmp("tun", d(&old.tun), d(&new.tun));
    cmp("hag.addresses", d(&old.hag_addresses), d(&new.hag_addresses));
    cmp("hag.cpe_id", old.cpe_id.clone(), new.cpe_id.clone());
    cmp("hag.key_file", hex(&old.key.0), hex(&new.key.0));
    cmp("hag.fastopen", d(&old.fastopen), d(&new.fastopen));
    cmp("hag.pool", d(&old.pool), d(&new.pool));
    cmp("hag.congestion_control", d(&old.congestion_control), d(&new.congestion_control));
    let same_names =
        old.uplinks.len() == new.uplinks.len() && old.uplinks.iter().zip(&new.uplinks).all(|(a, b)| a.name == b.name);
    if same_names {
        for (i, (a, b)) in old.uplinks.iter().zip(&new.uplinks).enumerate() {
            cmp(&format!("uplinks[{i}].mode"), d(&a.mode), d(&b.mode));
            let rest = |u: &crate::config::Uplink| {
                format!("{:?}", (&u.interface, &u.ipv4, &u.ipv6, &u.role, &u.table, &u.quota))
            };
            cmp(&format!("uplinks[{i}]"), rest(a), rest(b));
        }
    } else {
        out.push("uplinks".to_owned());
    }
    let mut cmp = |path: &str, a: String, b: String| {
        if a != b {
            out.push(path.to_owned());
        }
    };
    cmp("bypass", d(&old.bypass), d(&new.bypass));
    cmp("fallback", d(&old.fallback), d(&new.fallback));
    cmp("routing", d(&old.routing), d(&new.routing));
    cmp("limits", d(&old.limits), d(&new.limits));
    cmp("probe", d(&old.probe), d(&new.probe));
    cmp("path_control", d(&old.path_control), d(&new.path_control));
    cmp("volume", d(&old.volume), d(&new.volume));
    cmp("log_level", old.log_level.clone(), new.log_level.clone());
    let admin_cfg = |c: &Config| d(&c.admin.as_ref().map(|a| &a.config));
    cmp("admin", admin_cfg(old), admin_cfg(new));
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
