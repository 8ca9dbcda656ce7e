//! The config hag runs with, and its reload (SIGHUP, `systemctl reload hag`): re-read the file the daemon
//! started with, validate it whole, apply what can change while connections are open, and name what needs a
//! restart.
//!
//! Live: `clients` (keys added, changed or removed: the next Convert message or probe uses the new set),
//! `trusted_sources`, `destinations` (the policy is rebuilt with the own addresses learnt at start), the
//! admission limits and timers in `limits` (for connections accepted from then on; an open relay keeps the
//! idle timeout it started with), `log_level`, and the admin token (re-read on every reload).
//! Restart: `listen`, `limits.backlog` and `limits.tfo_queue` (they shape the bound sockets),
//! `limits.auth_skew` and `limits.replay_entries` (they size the replay window, which must not forget
//! nonces it has seen), `congestion_control` and `congestion_control_start` (checked against the kernel at
//! start), and the rest of `admin`.
//!
//! Invariants: an invalid file changes nothing; a connection reads one [`Live`] snapshot per step, never a
//! half-applied one; the running config is what hag really runs with, i.e. a field that needs a restart
//! keeps its old value in it.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use common::admin::Auth;
use common::process::LogLevelSetter;
use tracing::{info, warn};

use crate::config::{Config, Limits};
use crate::policy::{DestinationPolicy, PrefixPolicy};

/// One consistent view of the reloadable settings.
pub struct Live {
    /// The running config (fields that need a restart keep the value hag started with).
    pub config: Config,
    /// The destination policy built from `config.destinations` and the hag's own addresses.
    pub policy: Box<dyn DestinationPolicy>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").field("config", &self.config).finish_non_exhaustive()
    }
}

/// What a reload found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// Field paths whose value differs from the running config.
    pub changed: Vec<String>,
    /// Of those, what took effect now.
    pub applied: Vec<String>,
    /// Of those, what takes effect only after a restart.
    pub restart_required: Vec<String>,
}

/// The swappable settings, with what a reload needs to rebuild them.
pub struct Settings {
    current: RwLock<Arc<Live>>,
    /// The host's own addresses at start (always denied as destinations unless allowed).
    own: Vec<IpAddr>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings").field("own", &self.own).finish_non_exhaustive()
    }
}

impl Settings {
    /// Settings from the config hag starts with and its own addresses.
    pub fn new(config: Config, own: Vec<IpAddr>) -> Self {
        let policy = policy_for(&config, &own);
        Settings { current: RwLock::new(Arc::new(Live { config, policy })), own }
    }

    /// The current view.
    pub fn get(&self) -> Arc<Live> {
        self.current.read().expect("settings lock poisoned").clone()
    }

    /// Applies `new` (already validated) over the running config: live fields take `new`'s value, the others
    /// keep theirs and are reported. `log` changes the log filter; `auth` takes the re-read admin token.
    pub fn apply(&self, new: Config, log: Option<&LogLevelSetter>, auth: Option<&Auth>) -> ReloadOutcome {
        let old = self.get();
        let mut running = old.config.clone();
        if let (Some(auth), Some(admin), Some(run_admin)) = (auth, &new.admin, &mut running.admin) {
            auth.set_token(admin.token.clone());
            run_admin.token = admin.token.clone();
        }
        running.limits = live_limits(&old.config.limits, &new.limits);
        let mut out = ReloadOutcome::default();
        for change in diff(&old.config, &new) {
            let applied = match change.as_str() {
                "clients" => {
                    running.clients = new.clients.clone();
                    true
                }
                "trusted_sources" => {
                    running.trusted_sources = new.trusted_sources.clone();
                    true
                }
                "destinations" => {
                    running.destinations = new.destinations.clone();
                    true
                }
                "log_level" => match log.map(|set| set(&new.log_level)) {
                    Some(Ok(())) => {
                        running.log_level = new.log_level.clone();
                        true
                    }
                    Some(Err(why)) => {
                        warn!(%why, "log_level not changed");
                        false
                    }
                    None => false,
                },
                c => c.strip_prefix("limits.").is_some_and(|field| !RESTART_LIMITS.contains(&field)),
            };
            out.changed.push(change.clone());
            if applied {
                out.applied.push(change);
            } else {
                out.restart_required.push(change);
            }
        }
        let policy = policy_for(&running, &self.own);
        *self.current.write().expect("settings lock poisoned") = Arc::new(Live { config: running, policy });
        info!(
            changed = ?out.changed,
            applied = ?out.applied,
            restart_required = ?out.restart_required,
            clients = self.get().config.clients.len(),
            "config reloaded"
        );
        out
    }
}

fn policy_for(config: &Config, own: &[IpAddr]) -> Box<dyn DestinationPolicy> {
    let d = &config.destinations;
    Box::new(PrefixPolicy::new(d.allow.clone(), d.deny.clone(), own.iter().copied()).with_kernel_check())
}

/// The `limits` fields that shape the bound sockets or the replay window: they keep their value until a
/// restart.
const RESTART_LIMITS: [&str; 4] = ["backlog", "tfo_queue", "auth_skew", "replay_entries"];

/// `new` limits with the fields of [`RESTART_LIMITS`] kept as they run.
fn live_limits(running: &Limits, new: &Limits) -> Limits {
    Limits {
        backlog: running.backlog,
        tfo_queue: running.tfo_queue,
        auth_skew: running.auth_skew,
        replay_entries: running.replay_entries,
        ..new.clone()
    }
}

/// Field paths whose value differs between `old` and `new` (`limits` field by field). Keys are compared by
/// their bytes, never printed.
pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let d = |v: &dyn std::fmt::Debug| format!("{v:?}");
    let mut cmp = |path: &str, differs: bool| {
        if differs {
            out.push(path.to_owned());
        }
    };
    cmp("listen", old.listen != new.listen);
    let keys_differ = old.clients.len() != new.clients.len()
        || old.clients.iter().any(|(id, k)| new.clients.get(id).is_none_or(|n| n.expose() != k.expose()));
    cmp("clients", keys_differ);
    cmp("trusted_sources", old.trusted_sources != new.trusted_sources);
    cmp("destinations", d(&old.destinations) != d(&new.destinations));
    cmp("congestion_control", old.congestion_control != new.congestion_control);
    cmp("congestion_control_start", old.congestion_control_start != new.congestion_control_start);
    let (a, b) = (&old.limits, &new.limits);
    for (field, differs) in [
        ("max_connections", a.max_connections != b.max_connections),
        ("max_connections_per_cpe", a.max_connections_per_cpe != b.max_connections_per_cpe),
        ("header_deadline", a.header_deadline != b.header_deadline),
        ("max_pending_per_source", a.max_pending_per_source != b.max_pending_per_source),
        ("max_held_per_cpe", a.max_held_per_cpe != b.max_held_per_cpe),
        ("hold_timeout", a.hold_timeout != b.hold_timeout),
        ("connect_timeout", a.connect_timeout != b.connect_timeout),
        ("idle_timeout", a.idle_timeout != b.idle_timeout),
        ("drain_deadline", a.drain_deadline != b.drain_deadline),
        ("auth_skew", a.auth_skew != b.auth_skew),
        ("replay_entries", a.replay_entries != b.replay_entries),
        ("backlog", a.backlog != b.backlog),
        ("tfo_queue", a.tfo_queue != b.tfo_queue),
    ] {
        cmp(&format!("limits.{field}"), differs);
    }
    cmp("admin", d(&old.admin.as_ref().map(|a| &a.config)) != d(&new.admin.as_ref().map(|a| &a.config)));
    cmp("log_level", old.log_level != new.log_level);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(dir: &Path, yaml: &str) -> Config {
        Config::from_yaml(yaml, &dir.join("hag.yaml")).unwrap()
    }

    #[test]
    fn a_new_key_and_limits_apply_listeners_and_the_replay_window_wait_for_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let key = |name: &str, hex: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, hex).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        };
        key("a.key", "00".repeat(32));
        key("b.key", "11".repeat(32));
        let old = config(dir.path(), "listen: ['192.0.2.1']\nclients: {a: {key_file: a.key}}\n");
        let settings = Settings::new(old, vec![]);
        let new = config(
            dir.path(),
            "listen: ['192.0.2.2']\nclients: {a: {key_file: a.key}, b: {key_file: b.key}}\n\
             destinations: {allow: [10.1.0.0/16]}\nlimits: {max_connections: 7, auth_skew: 5s}\n",
        );
        let out = settings.apply(new, None, None);
        assert_eq!(out.changed, ["listen", "clients", "destinations", "limits.max_connections", "limits.auth_skew"]);
        assert_eq!(out.applied, ["clients", "destinations", "limits.max_connections"]);
        assert_eq!(out.restart_required, ["listen", "limits.auth_skew"]);
        let live = settings.get();
        assert!(live.config.clients.contains_key("b"));
        assert_eq!(live.config.limits.max_connections, 7);
        assert_eq!(live.config.limits.auth_skew, std::time::Duration::from_secs(30), "needs a restart");
        assert_eq!(live.config.listen, vec!["192.0.2.1:5124".parse().unwrap()], "needs a restart");
        assert!(live.policy.check("10.1.2.3".parse().unwrap()).is_ok(), "policy rebuilt");
        // A changed key is a change even with the same ids; the same file again changes nothing.
        key("b.key", "22".repeat(32));
        let again = config(
            dir.path(),
            "listen: ['192.0.2.1']\nclients: {a: {key_file: a.key}, b: {key_file: b.key}}\n\
             destinations: {allow: [10.1.0.0/16]}\nlimits: {max_connections: 7}\n",
        );
        assert_eq!(settings.apply(again.clone(), None, None).changed, ["clients"]);
        assert!(settings.apply(again, None, None).changed.is_empty());
    }
}
