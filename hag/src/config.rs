//! hag configuration: the YAML file's shape ([`FileConfig`]), its validation, and the resolved [`Config`] the
//! server runs with (secret keys read from their files, listen addresses with the default port filled in).
//!
//! Invariants:
//! - A [`Config`] is only ever built by [`Config::from_file`] / [`Config::from_yaml`], i.e. it passed
//!   validation: at least one listen address, no duplicate, every client has a readable key of a usable
//!   length, CPE ids are 1..=64 bytes, limits are non-zero, the log level parses.
//! - Every error names the field path (see `common::config`), and no error or `Debug` output shows a key.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::config::{self as cfg, ConfigError};
use common::mptcp::{CongestionControl, StartPhase};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// Default HAG service port (DESIGN §3, RFC 8803 has none assigned).
pub const DEFAULT_PORT: u16 = 5124;

/// Default port of the admin REST API (next to the service port; loopback unless configured otherwise).
pub const DEFAULT_ADMIN_PORT: u16 = 5125;

/// The `admin:` section: listen addresses (default `127.0.0.1:5125`), token file, limits.
pub type AdminConfig = common::admin::AdminConfig<DEFAULT_ADMIN_PORT>;

/// Longest CPE id the Auth TLV can carry (DESIGN §3: id length 1..=64).
pub const MAX_CPE_ID_LEN: usize = 64;

/// The config file as written: every key the operator may set, nothing more (`deny_unknown_fields`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Addresses to accept CPE connections on. A bare address gets port 5124. Default: `0.0.0.0` and `::`.
    #[serde(default = "default_listen")]
    pub listen: Vec<ListenAddr>,
    /// CPE id -> its secret. The secret authenticates the Auth TLV (HMAC-SHA256).
    #[serde(default)]
    pub clients: BTreeMap<String, ClientFile>,
    /// Source prefixes (the operator's own access network) whose clients may omit the Auth TLV.
    #[serde(default)]
    pub trusted_sources: Vec<IpNet>,
    /// Which destinations the hag connects to.
    #[serde(default)]
    pub destinations: DestinationsFile,
    /// Connection limits and timers.
    #[serde(default)]
    pub limits: Limits,
    /// The congestion control of the MPTCP connections from CPEs (every subflow; downloads): `cubic` where not
    /// set (where it can be used), `system` for the namespace's default ([`common::mptcp::CongestionControl`]).
    #[serde(default)]
    pub congestion_control: Option<CongestionControl>,
    /// The algorithm those connections start on, and for how long, before `congestion_control`
    /// ([`common::mptcp::StartPhase`]); not set: none.
    #[serde(default)]
    pub congestion_control_start: Option<StartFile>,
    /// Admin REST API; absent = no admin API.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// tracing filter directive (`info`, `debug`, `hag=debug,common=info`); `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// A key or token file the group or other users can read: refuse the config (default) or warn.
    #[serde(default)]
    pub secret_files: cfg::SecretFiles,
}

/// The `congestion_control_start:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartFile {
    /// The algorithm of the first phase, by its kernel name.
    pub algorithm: CongestionControl,
    /// How long it runs from the start of each transfer; `0s` turns the phase off.
    #[serde(with = "cfg::duration")]
    pub duration: Duration,
}

/// One client (CPE) entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// File holding the CPE's secret key: hex text, or raw bytes (see `common::config::read_secret_key`).
    /// Relative paths are relative to the config file's directory.
    pub key_file: PathBuf,
}

/// Destination policy as written. Private, loopback, link-local, CGNAT, multicast, unique-local, unspecified
/// and broadcast destinations and the hag's own addresses are denied unless `allow` lists them; `deny` adds
/// more. When both lists match, the longer prefix wins (a tie denies).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationsFile {
    /// Prefixes allowed even if a built-in rule would deny them.
    #[serde(default)]
    pub allow: Vec<IpNet>,
    /// Prefixes denied in addition to the built-in rules.
    #[serde(default)]
    pub deny: Vec<IpNet>,
}

/// Limits and timers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Connections open at once, all CPEs together; over it a client gets Error 64.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections open at once per authenticated CPE id; over it a client gets Error 64.
    #[serde(default = "default_max_connections_per_cpe")]
    pub max_connections_per_cpe: usize,
    /// Time a client has to deliver the whole Convert message after the connection is accepted.
    #[serde(default = "default_header_deadline", with = "cfg::duration")]
    pub header_deadline: Duration,
    /// Connections one source address may have open that have not delivered a whole Convert message yet
    /// (before authentication); past it the oldest of them is closed. Bounds a slow-header flood (hundreds of
    /// connections sending a byte a second) without touching other sources, while new connections, which
    /// deliver their message within a round trip, get through (several CPEs may share one NAT address).
    #[serde(default = "default_max_pending_per_source")]
    pub max_pending_per_source: usize,
    /// Connections one authenticated CPE may hold idle for its ready-connection pool (Hold TLV); past it the
    /// hold is answered with Error 64. They count against `max_connections_per_cpe` too.
    #[serde(default = "default_max_held_per_cpe")]
    pub max_held_per_cpe: usize,
    /// How long a held connection waits for the Convert message naming its destination before hag closes it.
    #[serde(default = "default_hold_timeout", with = "cfg::duration")]
    pub hold_timeout: Duration,
    /// Time to establish the TCP connection to the destination; past it the client gets Error 65.
    #[serde(default = "default_connect_timeout", with = "cfg::duration")]
    pub connect_timeout: Duration,
    /// A relay with no byte in either direction for this long is closed.
    #[serde(default = "default_idle_timeout", with = "cfg::duration")]
    pub idle_timeout: Duration,
    /// On SIGTERM/SIGINT, how long open relays may go on before the hag exits anyway.
    #[serde(default = "default_drain_deadline", with = "cfg::duration")]
    pub drain_deadline: Duration,
    /// Accepted difference between an Auth TLV's timestamp and the hag's clock; also the replay window.
    #[serde(default = "default_auth_skew", with = "cfg::duration")]
    pub auth_skew: Duration,
    /// Nonces remembered for replay detection (bounds memory; beyond it the oldest are dropped early).
    #[serde(default = "default_replay_entries")]
    pub replay_entries: usize,
    /// Pending connections the kernel queues per listener.
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    /// TCP Fast Open queue length per listener (pending 0-RTT SYNs); 0 turns TFO off.
    #[serde(default = "default_tfo_queue")]
    pub tfo_queue: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: default_max_connections(),
            max_connections_per_cpe: default_max_connections_per_cpe(),
            header_deadline: default_header_deadline(),
            max_pending_per_source: default_max_pending_per_source(),
            max_held_per_cpe: default_max_held_per_cpe(),
            hold_timeout: default_hold_timeout(),
            connect_timeout: default_connect_timeout(),
            idle_timeout: default_idle_timeout(),
            drain_deadline: default_drain_deadline(),
            auth_skew: default_auth_skew(),
            replay_entries: default_replay_entries(),
            backlog: default_backlog(),
            tfo_queue: default_tfo_queue(),
        }
    }
}

fn default_listen() -> Vec<ListenAddr> {
    vec![
        ListenAddr(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT)),
        ListenAddr(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), DEFAULT_PORT)),
    ]
}
fn default_log_level() -> String {
    "info".to_owned()
}
fn default_max_connections() -> usize {
    20_000
}
fn default_max_connections_per_cpe() -> usize {
    4_000
}
fn default_header_deadline() -> Duration {
    Duration::from_secs(5)
}
fn default_max_pending_per_source() -> usize {
    256
}
fn default_max_held_per_cpe() -> usize {
    64
}
fn default_hold_timeout() -> Duration {
    Duration::from_secs(90)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_drain_deadline() -> Duration {
    Duration::from_secs(10)
}
fn default_auth_skew() -> Duration {
    Duration::from_secs(30)
}
fn default_replay_entries() -> usize {
    1 << 20
}
fn default_backlog() -> u32 {
    1024
}
fn default_tfo_queue() -> u32 {
    1024
}

/// A listen address: `192.0.2.1:5124`, `[::]:5124`, or a bare address that gets port 5124.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenAddr(pub SocketAddr);

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        cfg::parse_addr_with_default_port(&s, DEFAULT_PORT).map(ListenAddr).map_err(serde::de::Error::custom)
    }
}

/// A secret key. `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(Vec<u8>);

impl SecretKey {
    /// Wraps key bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretKey(bytes)
    }
    /// The key bytes, for the MAC only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(<{} bytes>)", self.0.len())
    }
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen addresses, no duplicates.
    pub listen: Vec<SocketAddr>,
    /// CPE id -> key.
    pub clients: HashMap<String, SecretKey>,
    /// Source prefixes that may omit the Auth TLV.
    pub trusted_sources: Vec<IpNet>,
    /// Destination allow/deny lists.
    pub destinations: DestinationsFile,
    /// Limits and timers.
    pub limits: Limits,
    /// What the MPTCP connections from CPEs run, as configured (resolved at start:
    /// [`CongestionControl::resolve`]).
    pub congestion_control: Option<CongestionControl>,
    /// Their start phase, as configured (resolved at start: [`StartPhase::resolve`]).
    pub congestion_control_start: Option<StartPhase>,
    /// Admin REST API (token file already read), if configured.
    pub admin: Option<Admin>,
    /// tracing filter directive, checked to parse.
    pub log_level: String,
}

/// The validated `admin:` section with its token loaded (so `--check-config` proves the token file is usable).
pub type Admin = common::admin::AdminSection<DEFAULT_ADMIN_PORT>;

impl Config {
    /// Reads, parses and validates the config file at `path`; key files are read relative to its directory.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let file: FileConfig = cfg::load_yaml(path)?;
        Config::validate(file, path)
    }

    /// Parses and validates YAML text; relative key file paths are taken relative to `config_path`'s directory.
    pub fn from_yaml(text: &str, config_path: &Path) -> Result<Config, ConfigError> {
        let file: FileConfig = cfg::from_yaml_str(text)?;
        Config::validate(file, config_path)
    }

    /// Checks a parsed file and resolves it into a [`Config`].
    pub fn validate(file: FileConfig, config_path: &Path) -> Result<Config, ConfigError> {
        if file.listen.is_empty() {
            return Err(ConfigError::invalid("listen", "at least one listen address is needed"));
        }
        let mut seen = HashSet::new();
        for (i, a) in file.listen.iter().enumerate() {
            if !seen.insert(a.0) {
                return Err(ConfigError::invalid(format!("listen[{i}]"), format!("{} is listed twice", a.0)));
            }
        }
        let mut clients = HashMap::new();
        for (id, entry) in &file.clients {
            let field = format!("clients.{id}");
            if id.is_empty() || id.len() > MAX_CPE_ID_LEN {
                return Err(ConfigError::invalid(
                    field,
                    format!("a CPE id is 1 to {MAX_CPE_ID_LEN} bytes, this one is {}", id.len()),
                ));
            }
            let key_path = cfg::resolve_relative(config_path, &entry.key_file);
            let key = cfg::read_secret_key(&format!("{field}.key_file"), &key_path, file.secret_files)?;
            clients.insert(id.clone(), SecretKey(key));
        }
        let l = &file.limits;
        for (name, value) in [
            ("max_connections", l.max_connections),
            ("max_connections_per_cpe", l.max_connections_per_cpe),
            ("max_pending_per_source", l.max_pending_per_source),
            ("replay_entries", l.replay_entries),
            ("backlog", l.backlog as usize),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(format!("limits.{name}"), "must be at least 1"));
            }
        }
        for (name, value) in [
            ("header_deadline", l.header_deadline),
            ("hold_timeout", l.hold_timeout),
            ("connect_timeout", l.connect_timeout),
            ("idle_timeout", l.idle_timeout),
            ("auth_skew", l.auth_skew),
        ] {
            if value.is_zero() {
                return Err(ConfigError::invalid(format!("limits.{name}"), "must be longer than 0s"));
            }
        }
        let congestion_control_start = match file.congestion_control_start {
            None => None,
            Some(StartFile { algorithm: CongestionControl::System, .. }) => {
                return Err(ConfigError::invalid(
                    "congestion_control_start.algorithm",
                    "name an algorithm (e.g. bbr); `0s` as the duration turns the start phase off",
                ));
            }
            Some(StartFile { algorithm: CongestionControl::Named(algorithm), duration }) => {
                Some(StartPhase { algorithm, duration })
            }
        };
        let admin = file.admin.map(|a| a.load("admin", config_path, file.secret_files)).transpose()?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&file.log_level) {
            return Err(ConfigError::invalid("log_level", format!("`{}` is not a log filter: {e}", file.log_level)));
        }
        Ok(Config {
            listen: file.listen.iter().map(|a| a.0).collect(),
            clients,
            trusted_sources: file.trusted_sources,
            destinations: file.destinations,
            limits: file.limits,
            congestion_control: file.congestion_control,
            congestion_control_start,
            admin,
            log_level: file.log_level,
        })
    }

    /// Whether `source` is inside a trusted prefix (may omit the Auth TLV).
    pub fn is_trusted(&self, source: IpAddr) -> bool {
        let source = source.to_canonical();
        self.trusted_sources.iter().any(|p| p.contains(&source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Self {
            let d = std::env::temp_dir().join(format!("hag-config-test-{}-{tag}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            let key = d.join("cpe1.key");
            std::fs::write(&key, "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n").unwrap();
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
            Dir(d)
        }
        fn config_path(&self) -> PathBuf {
            self.0.join("hag.yaml")
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn load(dir: &Dir, yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(yaml, &dir.config_path())
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let d = Dir::new("min");
        let c = load(&d, "clients:\n  cpe-1: {key_file: cpe1.key}\n").unwrap();
        assert_eq!(c.listen, vec!["0.0.0.0:5124".parse().unwrap(), "[::]:5124".parse().unwrap()]);
        assert_eq!(c.clients["cpe-1"].expose().len(), 32);
        assert_eq!(c.limits.auth_skew, Duration::from_secs(30));
        assert_eq!(c.log_level, "info");
        assert!(!format!("{c:?}").contains("0a0b"), "key must not appear in Debug");
    }

    #[test]
    fn admin_section_is_optional_and_defaults_to_loopback() {
        let d = Dir::new("admin");
        let c = load(&d, "listen: ['192.0.2.1']\n").unwrap();
        assert!(c.admin.is_none());
        let c = load(&d, "admin: {token_file: cpe1.key}\n").unwrap();
        let a = c.admin.unwrap();
        assert_eq!(a.config.listen, vec!["127.0.0.1:5125".parse().unwrap()]);
        assert_eq!(a.config.token_file, d.0.join("cpe1.key"));
        assert!(!format!("{a:?}").contains("0a0b"), "token must not appear in Debug");
    }

    #[test]
    fn congestion_control_start_names_an_algorithm_or_is_off() {
        let d = Dir::new("start");
        assert_eq!(load(&d, "listen: ['192.0.2.1']\n").unwrap().congestion_control_start, None);
        let c = load(&d, "congestion_control_start: {algorithm: bbr, duration: 2500ms}\n").unwrap();
        let phase = StartPhase { algorithm: "bbr".into(), duration: Duration::from_millis(2500) };
        assert_eq!(c.congestion_control_start, Some(phase));
        let c = load(&d, "congestion_control_start: {algorithm: bbr, duration: 0s}\n").unwrap();
        assert_eq!(c.congestion_control_start.unwrap().duration, Duration::ZERO);
        let e = load(&d, "congestion_control_start: {algorithm: system, duration: 3s}\n").unwrap_err();
        assert!(e.to_string().contains("congestion_control_start.algorithm"), "{e}");
        assert!(load(&d, "congestion_control_start: {algorithm: bbr}\n").is_err(), "the duration is required");
    }

    #[test]
    fn full_config_parses() {
        let d = Dir::new("full");
        let c = load(
            &d,
            "listen: ['192.0.2.1', '[2001:db8::1]:6000']\n\
             clients: {cpe-1: {key_file: cpe1.key}}\n\
             trusted_sources: [198.51.100.0/24, '2001:db8:1::/48']\n\
             destinations: {allow: [10.9.0.0/16], deny: [203.0.113.0/24]}\n\
             limits: {max_connections: 5, max_connections_per_cpe: 2, header_deadline: 2s, connect_timeout: 3s,\n\
             \x20 idle_timeout: 1m, drain_deadline: 500ms, auth_skew: 10s}\n\
             log_level: hag=debug\n",
        )
        .unwrap();
        assert_eq!(c.listen, vec!["192.0.2.1:5124".parse().unwrap(), "[2001:db8::1]:6000".parse().unwrap()]);
        assert!(c.is_trusted("198.51.100.7".parse().unwrap()));
        assert!(c.is_trusted("::ffff:198.51.100.7".parse().unwrap()));
        assert!(!c.is_trusted("198.51.101.7".parse().unwrap()));
        assert_eq!(c.limits.drain_deadline, Duration::from_millis(500));
        assert_eq!(c.limits.max_connections_per_cpe, 2);
        assert_eq!(c.destinations.allow, vec!["10.9.0.0/16".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn errors_name_the_field() {
        let d = Dir::new("err");
        let cases: &[(&str, &str)] = &[
            ("listen: ['192.0.2.1']\nlisten_typo: 1\n", "listen_typo"),
            ("listen: ['192.0.2.1', 'nonsense']\n", "listen[1]"),
            ("listen: ['192.0.2.1', '192.0.2.1:5124']\n", "listen[1]"),
            ("listen: []\n", "listen"),
            ("clients: {cpe-1: {key_file: missing.key}}\n", "clients.cpe-1.key_file"),
            ("clients: {cpe-1: {keyfile: cpe1.key}}\n", "clients.cpe-1.keyfile"),
            ("trusted_sources: [300.1.1.0/24]\n", "trusted_sources[0]"),
            ("destinations: {allow: [10.0.0.0/33]}\n", "destinations.allow[0]"),
            ("limits: {idle_timeout: soon}\n", "limits.idle_timeout"),
            ("limits: {max_connections: 0}\n", "limits.max_connections"),
            ("log_level: 'hag=[[['\n", "log_level"),
            ("admin: {}\n", "admin.token_file"),
            ("admin: {token_file: missing.token}\n", "admin.token_file"),
            ("admin: {token_file: cpe1.key, listen: ['127.0.0.1', x]}\n", "admin.listen[1]"),
            ("admin: {token_file: cpe1.key, listen: ['127.0.0.1:0']}\n", "admin.listen[0]"),
            ("admin: {token_file: cpe1.key, request_timeout: 0s}\n", "admin.request_timeout"),
            ("admin: {token_file: cpe1.key, tokenfile: x}\n", "admin.tokenfile"),
        ];
        for (yaml, field) in cases {
            let e = load(&d, yaml).expect_err(yaml);
            assert_eq!(e.field(), Some(*field), "{yaml} -> {e}");
            assert!(e.to_string().starts_with(field), "{e}");
        }
        let long_id = "x".repeat(65);
        let e = load(&d, &format!("clients: {{{long_id}: {{key_file: cpe1.key}}}}\n")).unwrap_err();
        assert_eq!(e.field(), Some(format!("clients.{long_id}").as_str()));
    }

    #[test]
    fn shipped_example_is_valid() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/hag.yaml");
        let c = Config::from_file(&example).unwrap_or_else(|e| panic!("{}: {e}", example.display()));
        assert!(!c.clients.is_empty());
        assert!(c.admin.is_some(), "the example shows the admin section");
    }
}
