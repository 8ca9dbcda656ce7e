//! `docs/configuration.md` documents every key of both config files: the keys are read off the config types
//! themselves, so a field added to a type without a line in the reference fails here.
//!
//! How the keys are found: every config struct denies unknown fields, and serde's error for an unknown key
//! lists the struct's fields (`unknown field `x`, expected one of `a`, `b``) at a path our config errors name.
//! Starting at the top, each field is tried as a section (`{x: 1}`), a list of sections (`[{x: 1}]`) and a
//! map of sections (`{id: {x: 1}}`); whatever answers with its own field list is walked into. A section that
//! takes an unknown key silently fails the test too: a typo there would be ignored.

use std::collections::BTreeSet;
use std::path::Path;

use common::config::ConfigError;

const PROBE: &str = "zz_not_a_key";

/// The fields serde expected where it met `PROBE`, when the error is that (`None` for any other outcome).
fn expected_fields(result: Result<(), ConfigError>, at: &str) -> Option<Vec<String>> {
    let e = result.err()?;
    let want = if at.is_empty() { PROBE.to_owned() } else { format!("{at}.{PROBE}") };
    if e.field() != Some(want.as_str()) {
        return None;
    }
    let text = e.to_string();
    let list = text.split_once(&format!("unknown field `{PROBE}`, expected")).map(|(_, l)| l)?;
    Some(list.split('`').skip(1).step_by(2).map(str::to_owned).collect())
}

/// YAML that puts `leaf` at `path` (`a.b` nested mappings; `a[]` a one-element list; `a.<id>` a map key).
fn nest(path: &[String], leaf: &str) -> String {
    let mut yaml = leaf.to_owned();
    for part in path.iter().rev() {
        yaml = match part.strip_suffix("[]") {
            Some(name) => format!("{{{name}: [{yaml}]}}"),
            None if part == "<id>" => format!("{{x: {yaml}}}"),
            None => format!("{{{part}: {yaml}}}"),
        };
    }
    yaml
}

/// The error path our config errors use for `path` (`uplinks[0].ipv4`, `clients.x`).
fn error_path(path: &[String]) -> String {
    let mut out = String::new();
    for part in path {
        match part.strip_suffix("[]") {
            Some(name) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(name);
                out.push_str("[0]");
            }
            None => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(if part == "<id>" { "x" } else { part });
            }
        }
    }
    out
}

/// Every key path of the config that `parse` reads (e.g. `uplinks[].ipv4.gateway`, `clients.<id>.key_file`).
fn keys(parse: &dyn Fn(&str) -> Result<(), ConfigError>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    walk(parse, &[], &mut out);
    out
}

fn walk(parse: &dyn Fn(&str) -> Result<(), ConfigError>, path: &[String], out: &mut BTreeSet<String>) {
    let probe = format!("{{{PROBE}: 1}}");
    let fields = expected_fields(parse(&nest(path, &probe)), &error_path(path))
        .unwrap_or_else(|| panic!("`{}` does not list its fields for an unknown key", path.join(".")));
    for field in fields {
        let shapes = [vec![field.clone()], vec![format!("{field}[]")], vec![field.clone(), "<id>".to_owned()]];
        let mut section = None;
        for shape in shapes {
            let mut p = path.to_vec();
            p.extend(shape);
            if expected_fields(parse(&nest(&p, &probe)), &error_path(&p)).is_some() {
                section = Some(p);
                break;
            }
            let mut accepted = path.to_vec();
            accepted.push(field.clone());
            if parse(&nest(&accepted, &probe)).is_ok() {
                panic!("`{}` takes an unknown key without an error: deny_unknown_fields", accepted.join("."));
            }
        }
        let mut key = path.to_vec();
        key.push(field);
        out.insert(key.join("."));
        if let Some(p) = section {
            walk(parse, &p, out);
        }
    }
}

/// The reference's section for `daemon` (from its `## <daemon>` heading to the next `## `).
fn reference(daemon: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find(&format!("\n## `{daemon}")).unwrap_or_else(|| panic!("no `## {daemon}` section"));
    let rest = &text[start + 4..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end].to_owned()
}

fn check(daemon: &str, keys: &BTreeSet<String>) {
    let doc = reference(daemon);
    let missing: Vec<&String> = keys.iter().filter(|k| !doc.contains(&format!("| `{k}` |"))).collect();
    eprintln!("{daemon}: {} keys", keys.len());
    assert!(missing.is_empty(), "docs/configuration.md, {daemon}: no row for {missing:#?}");
    // And nothing documented that the config no longer has.
    let documented: Vec<&str> =
        doc.lines().filter_map(|l| l.strip_prefix("| `")).filter_map(|l| l.split_once("` |").map(|(k, _)| k)).collect();
    let stale: Vec<&&str> = documented.iter().filter(|k| !keys.contains(**k)).collect();
    assert!(stale.is_empty(), "docs/configuration.md, {daemon}: rows for keys the config does not have: {stale:?}");
}

#[test]
fn every_hag_key_is_documented() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hag.yaml");
    let keys = keys(&|yaml| hag::Config::from_yaml(yaml, &config).map(drop));
    assert!(keys.contains("limits.max_connections") && keys.contains("clients.<id>.key_file"), "{keys:?}");
    check("hag", &keys);
}

#[test]
fn every_hcpe_key_is_documented() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hcpe.yaml");
    let keys = keys(&|yaml| hcpe::config::Config::from_yaml(yaml, &config).map(drop));
    assert!(keys.contains("uplinks[].ipv4.gateway") && keys.contains("hag.pool.max_age"), "{keys:?}");
    check("hcpe", &keys);
}
