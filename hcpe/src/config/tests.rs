use super::*;

fn key_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    testkit::write_secret(dir.path().join("cpe.key"), "00112233445566778899aabbccddeeff").unwrap();
    let cfg = dir.path().join("hcpe.yaml");
    (dir, cfg)
}

const GOOD: &str = r#"
lan_interfaces: [lan0]
hag:
  addresses: [198.51.100.1, "[2001:db8::1]:6000"]
  cpe_id: cpe-1
  key_file: cpe.key
uplinks:
  - name: dsl
    interface: dsl0
    ipv4: { address: 192.0.2.2, gateway: 192.0.2.1 }
  - name: lte
    interface: lte0
    ipv4: { address: 203.0.113.2, gateway: 203.0.113.1 }
    ipv6: { address: "2001:db8:1::2", gateway: "2001:db8:1::1" }
bypass: [10.0.0.0/8]
fallback: reject
"#;

fn err_of(text: &str) -> ConfigError {
    let (_d, path) = key_dir();
    Config::from_yaml(text, &path).unwrap_err()
}

#[test]
fn example_parses_with_defaults() {
    let (_d, path) = key_dir();
    let c = Config::from_yaml(GOOD, &path).unwrap();
    assert_eq!(c.hag_addresses, vec!["198.51.100.1:5124".parse().unwrap(), "[2001:db8::1]:6000".parse().unwrap()]);
    assert_eq!(c.fallback, Fallback::Reject);
    assert_eq!(c.tun.name, "hcpe0");
    assert_eq!(c.primary_uplink().name, "dsl");
    assert_eq!(c.key.0.len(), 16);
    assert!(!format!("{c:?}").contains("00112233"), "Debug never shows the key");
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(600));
    assert_eq!(c.race, RaceFile::default());
}

#[test]
fn admin_section_is_optional_and_defaults_to_loopback() {
    let (d, path) = key_dir();
    assert!(Config::from_yaml(GOOD, &path).unwrap().admin.is_none());
    testkit::write_secret(d.path().join("admin.token"), "0123456789abcdef0123\n").unwrap();
    let c = Config::from_yaml(&format!("{GOOD}admin: {{ token_file: admin.token }}\n"), &path).unwrap();
    let a = c.admin.unwrap();
    assert_eq!(a.config.listen, vec!["127.0.0.1:5126".parse::<SocketAddr>().unwrap()]);
    assert_eq!(a.config.token_file, d.path().join("admin.token"));
    assert!(a.token.matches(b"0123456789abcdef0123"));
    assert!(!format!("{a:?}").contains("0123456789abcdef"), "Debug never shows the token");
    for (text, field) in [
        ("admin: {}\n", "admin.token_file"),
        ("admin: { token_file: missing.token }\n", "admin.token_file"),
        ("admin: { token_file: admin.token, listen: ['127.0.0.1', x] }\n", "admin.listen[1]"),
        ("admin: { token_file: admin.token, colour: red }\n", "admin.colour"),
    ] {
        let e = Config::from_yaml(&format!("{GOOD}{text}"), &path).unwrap_err();
        assert_eq!(e.field(), Some(field), "{text}: {e}");
    }
}

#[test]
fn shipped_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/hcpe.yaml");
    Config::from_file(&path).unwrap();
}

#[test]
fn race_delay_is_rtts_of_the_uplink_clamped_and_the_cap_without_an_rtt() {
    let race = RaceFile::default();
    let ms = Duration::from_millis;
    assert_eq!(race.delay(Some(ms(20))), Some(ms(150)), "floor");
    assert_eq!(race.delay(Some(ms(80))), Some(ms(240)));
    assert_eq!(race.delay(Some(ms(500))), Some(ms(1000)), "cap");
    assert_eq!(race.delay(None), Some(ms(1000)));
    assert_eq!(RaceFile { rtts: 0, ..race }.delay(Some(ms(20))), None, "off");
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (GOOD.replace("fallback: reject", "fallback: maybe"), "fallback"),
        (GOOD.replace("lan_interfaces: [lan0]", "lan_interfaces: []"), "lan_interfaces"),
        (GOOD.replace("198.51.100.1,", "not-an-ip,"), "hag.addresses[0]"),
        (GOOD.replace("cpe_id: cpe-1", "cpe_id: \"\""), "hag.cpe_id"),
        (GOOD.replace("key_file: cpe.key", "key_file: missing.key"), "hag.key_file"),
        (GOOD.replace("interface: lte0", "interface: lte0\n    colour: red"), "uplinks[1].colour"),
        (GOOD.replace("name: lte", "name: dsl"), "uplinks[1].name"),
        (GOOD.replace("bypass: [10.0.0.0/8]", "bypass: [10.0.0.0/33]"), "bypass[0]"),
        (format!("{GOOD}routing: {{ table: 0 }}\n"), "routing.table"),
        (format!("{GOOD}limits: {{ idle_timeout: forever }}\n"), "limits.idle_timeout"),
        (format!("{GOOD}tun: {{ ipv4: null, ipv6: null }}\n"), "tun"),
        (format!("{GOOD}race: {{ floor: 2s }}\n"), "race.floor"),
        (format!("{GOOD}race: {{ cap: 0s }}\n"), "race.cap"),
        (format!("{GOOD}race: {{ after: 3 }}\n"), "race.after"),
    ];
    for (text, field) in cases {
        let e = err_of(&text);
        assert_eq!(e.field(), Some(field), "{e}");
    }
}

/// The `uplinks:` entries and the `probe:` section.
pub(crate) mod uplinks {
    use super::super::*;
    use crate::uplink::settings::*;

    /// Two uplinks with fixed addresses and gateways, everything else on defaults (also `volume`'s tests).
    pub(crate) const BASE: &str = r#"
lan_interfaces: [lan0]
hag: { addresses: [198.51.100.1], cpe_id: cpe-1, key_file: cpe.key }
uplinks:
  - name: dsl
    interface: dsl0
    ipv4: { address: 192.0.2.2, gateway: 192.0.2.1 }
  - name: lte
    interface: lte0
    ipv4: { address: 203.0.113.2, gateway: 203.0.113.1 }
"#;

    /// `text` parsed as `hcpe.yaml` in a scratch directory with `cpe.key`; the directory stays for paths
    /// relative to the config file.
    pub(crate) fn parse_in_dir(text: &str) -> (tempfile::TempDir, Result<Config, ConfigError>) {
        let dir = tempfile::tempdir().unwrap();
        testkit::write_secret(dir.path().join("cpe.key"), "00112233445566778899aabbccddeeff").unwrap();
        let c = Config::from_yaml(text, &dir.path().join("hcpe.yaml"));
        (dir, c)
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_in_dir(text).1
    }

    #[test]
    fn defaults_keep_the_old_behaviour() {
        let c = parse(BASE).unwrap();
        assert_eq!((c.uplinks[0].role, c.uplinks[1].role), (Role::Primary, Role::Secondary));
        assert_eq!((c.uplinks[0].mode, c.uplinks[1].mode), (Mode::Active, Mode::Adaptive));
        assert_eq!((c.uplinks[0].table, c.uplinks[1].table), (5125, 5126));
        assert_eq!(c.probe, ProbeFile::default());
        assert_eq!((c.probe.interval, c.probe.down_after, c.probe.up_after), (Duration::from_millis(200), 3, 3));
    }

    #[test]
    fn explicit_role_mode_table_and_probe_timers() {
        let text = BASE
            .replace("interface: lte0", "interface: lte0\n    role: primary\n    mode: backup\n    table: 200")
            + "probe: { interval: 100ms, down_after: 2, up_after: 5 }\n";
        let c = parse(&text).unwrap();
        assert_eq!((c.uplinks[1].role, c.uplinks[1].mode, c.uplinks[1].table), (Role::Primary, Mode::Backup, 200));
        assert_eq!(
            c.probe,
            ProbeFile { enabled: true, interval: Duration::from_millis(100), down_after: 2, up_after: 5 }
        );
        for mode in ["active", "backup", "standby", "off"] {
            let t = BASE.replace("interface: lte0", &format!("interface: lte0\n    mode: {mode}"));
            assert_eq!(parse(&t).unwrap().uplinks[1].mode.as_str(), mode);
        }
    }

    #[test]
    fn uplink_address_is_fixed_or_learned() {
        use std::net::{Ipv4Addr, Ipv6Addr};
        let c = parse(BASE).unwrap();
        assert_eq!(c.uplinks[1].ipv4.unwrap().address, UplinkAddress::Fixed(Ipv4Addr::new(203, 0, 113, 2)));
        for (text, what) in [
            (BASE.replace("address: 203.0.113.2, ", "address: auto, "), "auto"),
            (BASE.replace("address: 203.0.113.2, ", ""), "absent"),
        ] {
            let c = parse(&text).unwrap();
            let lte = &c.uplinks[1];
            assert_eq!(lte.ipv4.unwrap().address, UplinkAddress::Auto, "{what}");
            assert_eq!(lte.ipv4.unwrap().gateway, Some(Ipv4Addr::new(203, 0, 113, 1)), "{what}");
            assert_eq!(lte.source_for("198.51.100.1".parse().unwrap()), None, "{what}: nothing to bind to yet");
            assert_eq!(lte.ipv4.unwrap().address.to_string(), "auto");
        }
        let v6 = BASE.replace("interface: lte0", "interface: lte0\n    ipv6: { address: auto }");
        assert_eq!(parse(&v6).unwrap().uplinks[1].ipv6.unwrap().address, UplinkAddress::<Ipv6Addr>::Auto);
        // Only learned addresses, of the hag's family: still a valid config (the address comes later).
        let only_auto = BASE.replace("address: 192.0.2.2, ", "").replace("address: 203.0.113.2, ", "");
        assert!(parse(&only_auto).is_ok());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (BASE.replace("address: 203.0.113.2", "address: automatic"), "uplinks[1].ipv4.address"),
            (BASE.replace("interface: lte0", "interface: lte0\n    mode: sometimes"), "uplinks[1].mode"),
            (BASE.replace("interface: lte0", "interface: lte0\n    role: tertiary"), "uplinks[1].role"),
            (BASE.replace("interface: lte0", "interface: lte0\n    table: 5125"), "uplinks[1].table"),
            (BASE.replace("interface: dsl0", "interface: dsl0\n    table: 254"), "uplinks[0].table"),
            (BASE.replace("interface: dsl0", "interface: dsl0\n    table: 5124"), "uplinks[0].table"),
            (
                BASE.replace("interface: dsl0", "interface: dsl0\n    mode: off")
                    .replace("interface: lte0", "interface: lte0\n    mode: off"),
                "uplinks",
            ),
            (format!("{BASE}probe: {{ down_after: 0 }}\n"), "probe.down_after"),
            (format!("{BASE}probe: {{ up_after: 0 }}\n"), "probe.up_after"),
            (format!("{BASE}probe: {{ interval: 1ms }}\n"), "probe.interval"),
            (format!("{BASE}probe: {{ colour: red }}\n"), "probe.colour"),
        ];
        for (text, field) in cases {
            let e = parse(&text).unwrap_err();
            assert_eq!(e.field(), Some(field), "{e}");
        }
    }
}

/// `uplinks[].quota` and the `volume:` section.
mod volume {
    use std::time::Duration;

    use bytesize::ByteSize;

    use super::uplinks::{BASE, parse_in_dir};
    use crate::uplink::Mode;
    use crate::uplink::settings::{QuotaAction, QuotaFile};
    use crate::uplink::volume::VolumeFile;

    #[test]
    fn quota_and_volume_config() {
        let (_d, c) = parse_in_dir(BASE);
        let c = c.unwrap();
        assert_eq!((c.uplinks[1].quota, &c.volume), (None, &VolumeFile::default()));
        let text = BASE
            .replace("interface: lte0", "interface: lte0\n    quota: { limit: 20GiB, reset_day: 15, action: off }")
            + "volume: { state_file: state/volume.json, save_interval: 30s }\n";
        let (d, c) = parse_in_dir(&text);
        let c = c.unwrap();
        assert_eq!(
            c.uplinks[1].quota,
            Some(QuotaFile { limit: ByteSize(20 << 30), reset_day: 15, action: QuotaAction::Off })
        );
        assert_eq!(c.volume.state_file, Some(d.path().join("state/volume.json")), "relative to the config file");
        assert_eq!(c.volume.save_interval, Duration::from_secs(30));
        let text = BASE.replace("interface: lte0", "interface: lte0\n    quota: { limit: 5000000 }");
        let q = parse_in_dir(&text).1.unwrap().uplinks[1].quota.unwrap();
        assert_eq!((q.limit.as_u64(), q.reset_day, q.action), (5_000_000, 1, QuotaAction::Backup));
        assert_eq!(QuotaAction::Off.mode(), Mode::Off);
    }

    #[test]
    fn quota_errors_name_the_field() {
        let lte = |q: &str| BASE.replace("interface: lte0", &format!("interface: lte0\n    quota: {q}"));
        let cases = [
            (lte("{ limit: 0 }"), "uplinks[1].quota.limit"),
            (lte("{ limit: lots }"), "uplinks[1].quota.limit"),
            (lte("{ limit: 1GB, reset_day: 29 }"), "uplinks[1].quota.reset_day"),
            (lte("{ limit: 1GB, reset_day: 0 }"), "uplinks[1].quota.reset_day"),
            (lte("{ limit: 1GB, action: standby }"), "uplinks[1].quota.action"),
            (lte("{ reset_day: 3 }"), "uplinks[1].quota.limit"),
            (format!("{BASE}volume: {{ save_interval: 10ms }}\n"), "volume.save_interval"),
            (format!("{BASE}volume: {{ statefile: x }}\n"), "volume.statefile"),
        ];
        for (text, field) in cases {
            let e = parse_in_dir(&text).1.unwrap_err();
            assert_eq!(e.field(), Some(field), "{e}");
        }
    }
}
