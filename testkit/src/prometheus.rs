//! Strict parser of the Prometheus text exposition format 0.0.4, for tests to prove that `/metrics` output is
//! what a Prometheus server accepts (`prometheus-parse` is lenient: it skips lines it does not understand, so it
//! cannot fail a test).

use std::collections::{BTreeMap, HashSet};

use common::admin::metrics::{valid_label_name, valid_metric_name};

/// One parsed metric family (see [`parse`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedFamily {
    /// Family name.
    pub name: String,
    /// Unescaped HELP text, if there was a HELP line.
    pub help: Option<String>,
    /// The TYPE word (`counter`, `gauge`, ...), `untyped` when there was no TYPE line.
    pub kind: String,
    /// Samples in order of appearance.
    pub samples: Vec<ParsedSample>,
}

/// One parsed sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedSample {
    /// Sample name (the family name, or with `_bucket`/`_sum`/`_count` for histograms and summaries).
    pub name: String,
    /// Unescaped label values by label name.
    pub labels: BTreeMap<String, String>,
    /// Sample value.
    pub value: f64,
}

impl ParsedFamily {
    /// The value of the sample whose labels are exactly `labels`.
    pub fn value(&self, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        self.samples.iter().find(|s| s.labels == want).map(|s| s.value)
    }
}

/// Strict parser of the Prometheus text format 0.0.4, following the Prometheus server's lexer and parser
/// (`model/textparse/promlex.l`, `promparse.go`; where they are lenient this is stricter): for
/// tests (here and in the daemons) to prove `/metrics` output is accepted. Returns families in order.
///
/// Rejects: text not ending in a newline, bad metric or label names, bad escapes, unquoted or unterminated
/// label values, duplicate label names, unparsable values or timestamps, a HELP or TYPE line repeated or a
/// TYPE line after the family's first sample, an unknown type, samples of a family split by another family,
/// and a repeated series (same name and labels). The error names the 1-based line.
pub fn parse(text: &str) -> Result<Vec<ParsedFamily>, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("text does not end with a newline".into());
    }
    let mut families: Vec<Building> = Vec::new();
    let mut closed: HashSet<String> = HashSet::new();
    let mut series: HashSet<(String, BTreeMap<String, String>)> = HashSet::new();
    // Whether the current (last) family has had a sample; a TYPE line must come before the first.
    let mut has_samples = false;
    // Lines end at `\n` only, as in Prometheus: a `\r` is text (in HELP or a label value), not a line end.
    for (i, line) in text.split('\n').enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", i + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            // `#HELP` (no blank after `#`) and `# HELP` without a blank after it are plain comments.
            let Some(rest) = rest.strip_prefix([' ', '\t']) else {
                continue;
            };
            let rest = rest.trim_start_matches([' ', '\t']);
            let Some((keyword, rest)) = rest.split_once([' ', '\t']) else {
                continue;
            };
            if keyword != "HELP" && keyword != "TYPE" {
                continue; // a plain comment
            }
            let rest = rest.trim_start_matches([' ', '\t']);
            let (name, arg) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
            if !valid_metric_name(name) {
                return Err(err(format!("invalid metric name {name:?}")));
            }
            let fam = enter_family(&mut families, &mut closed, &mut has_samples, name).map_err(err)?;
            if keyword == "HELP" {
                if fam.help.is_some() {
                    return Err(err("second HELP line for the family".into()));
                }
                fam.help = Some(unescape(arg, false).map_err(err)?);
            } else {
                let kind = arg; // exact: Prometheus rejects `counter ` with a trailing blank
                if !matches!(kind, "counter" | "gauge" | "histogram" | "summary" | "untyped") {
                    return Err(err(format!("unknown type {kind:?}")));
                }
                if has_samples || fam.kind != "untyped" || fam.typed {
                    return Err(err("TYPE line repeated or after the family's samples".into()));
                }
                fam.kind = kind.to_owned();
                fam.typed = true;
            }
            continue;
        }
        let (name, labels, rest) = parse_series(line).map_err(err)?;
        let family_name = match families.last() {
            Some(f) if sample_belongs(&f.inner.kind, &f.inner.name, &name) => f.inner.name.clone(),
            _ => name.clone(),
        };
        enter_family(&mut families, &mut closed, &mut has_samples, &family_name).map_err(err)?;
        has_samples = true;
        let mut parts = rest.split([' ', '\t']).filter(|p| !p.is_empty());
        let value = parts.next().ok_or_else(|| err("missing value".into()))?;
        let value = parse_float(value).ok_or_else(|| err(format!("invalid value {value:?}")))?;
        if let Some(ts) = parts.next()
            && (!ts.bytes().all(|b| b.is_ascii_digit()) || ts.parse::<i64>().is_err())
        {
            return Err(err(format!("invalid timestamp {ts:?}")));
        }
        if parts.next().is_some() {
            return Err(err("trailing text after the timestamp".into()));
        }
        if !series.insert((name.clone(), labels.clone())) {
            return Err(err("repeated series (same name and labels)".into()));
        }
        families.last_mut().expect("entered above").inner.samples.push(ParsedSample { name, labels, value });
    }
    Ok(families.into_iter().map(|f| f.inner).collect())
}

/// Parser-internal family: whether a TYPE line was seen is tracked beside the public view.
struct Building {
    inner: ParsedFamily,
    typed: bool,
}

impl std::ops::Deref for Building {
    type Target = ParsedFamily;
    fn deref(&self) -> &ParsedFamily {
        &self.inner
    }
}

impl std::ops::DerefMut for Building {
    fn deref_mut(&mut self) -> &mut ParsedFamily {
        &mut self.inner
    }
}

/// Makes `name` the current family: the last one if it is already, else a new one (an error if `name` was
/// seen before, since a family's lines must be contiguous).
fn enter_family<'a>(
    families: &'a mut Vec<Building>,
    closed: &mut HashSet<String>,
    has_samples: &mut bool,
    name: &str,
) -> Result<&'a mut Building, String> {
    if families.last().is_none_or(|f| f.inner.name != name) {
        if !closed.insert(name.to_owned()) {
            return Err(format!("family {name:?} appears again after another family"));
        }
        families.push(Building {
            inner: ParsedFamily { name: name.to_owned(), help: None, kind: "untyped".into(), samples: Vec::new() },
            typed: false,
        });
        *has_samples = false;
    }
    Ok(families.last_mut().expect("pushed above"))
}

fn sample_belongs(kind: &str, family: &str, sample: &str) -> bool {
    if sample == family {
        return true;
    }
    let suffixes: &[&str] = match kind {
        "histogram" => &["_bucket", "_sum", "_count"],
        "summary" => &["_sum", "_count"],
        _ => &[],
    };
    sample.strip_prefix(family).is_some_and(|s| suffixes.contains(&s))
}

/// Splits a sample line into name, labels and the rest (value and optional timestamp).
fn parse_series(line: &str) -> Result<(String, BTreeMap<String, String>, &str), String> {
    let end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..end];
    if !valid_metric_name(name) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[end..];
    if let Some(mut s) = rest.strip_prefix('{') {
        loop {
            s = s.trim_start_matches([' ', '\t']);
            if let Some(after) = s.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = s.find('=').ok_or("label without `=`")?;
            let lname = s[..eq].trim_end_matches([' ', '\t']);
            if !valid_label_name(lname) && lname != "__name__" {
                return Err(format!("invalid label name {lname:?}"));
            }
            s = s[eq + 1..].trim_start_matches([' ', '\t']);
            s = s.strip_prefix('"').ok_or("label value not quoted")?;
            let (raw, after) = split_quoted(s).ok_or("unterminated label value")?;
            let value = unescape(raw, true)?;
            if labels.insert(lname.to_owned(), value).is_some() {
                return Err(format!("duplicate label {lname:?}"));
            }
            s = after.trim_start_matches([' ', '\t']);
            if let Some(after) = s.strip_prefix(',') {
                s = after;
            } else if !s.starts_with('}') {
                return Err("expected `,` or `}` after a label".into());
            }
        }
    }
    if rest.trim().is_empty() {
        return Err("missing value".into());
    }
    if !rest.starts_with([' ', '\t']) {
        return Err("expected whitespace before the value".into());
    }
    Ok((name.to_owned(), labels, rest))
}

/// Given text after an opening quote, returns the raw content up to the closing (unescaped) quote and the rest.
fn split_quoted(s: &str) -> Option<(&str, &str)> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some((&s[..i], &s[i + 1..])),
            _ => {}
        }
    }
    None
}

/// Undoes `\\`, `\n` and (in label values) `\"`; any other escape is an error, as in Prometheus.
fn unescape(s: &str, label_value: bool) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if label_value => out.push('"'),
            other => {
                return Err(format!("invalid escape \\{}", other.map(String::from).unwrap_or_default()));
            }
        }
    }
    Ok(out)
}

fn parse_float(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        // Rust accepts "inf"/"nan"/"infinity" in any case; Prometheus' Go parser accepts only the forms above.
        _ if s.bytes().any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E') => None,
        _ => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::admin::metrics::{MetricType, MetricsWriter};

    fn sample_output() -> String {
        let mut w = MetricsWriter::with_prefix("hcpe_");
        w.counter("connections_total", "LAN connections accepted since start.", 42u64);
        w.gauge("connections_open", "LAN connections open now.", 3u32);
        let mut f = w.family("uplink_rtt_seconds", "Smoothed RTT per uplink.\nFrom probes.", MetricType::Gauge);
        f.sample(&[("uplink", "dsl")], 0.0123)
            .sample(&[("uplink", "lte")], f64::INFINITY)
            .sample(&[("uplink", "sat")], f64::NAN);
        let mut f = w.family("weird_labels_total", "Label values with \\ and \"quotes\".", MetricType::Counter);
        f.sample(&[("v", "a\"b"), ("w", "c\\d")], 1u64)
            .sample(&[("v", "line1\nline2"), ("w", "} , = {")], 2u64)
            .sample(&[("v", "ünïcødé ✓"), ("w", "")], 3u64);
        w.family("empty", "  ", MetricType::Gauge);
        w.gauge("big", "Large and tiny floats.", 1e300);
        w.finish()
    }

    #[test]
    fn writer_output_is_accepted_by_a_strict_parser_and_round_trips() {
        let text = sample_output();
        let fams = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let names: Vec<_> = fams.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "hcpe_connections_total",
                "hcpe_connections_open",
                "hcpe_uplink_rtt_seconds",
                "hcpe_weird_labels_total",
                "hcpe_empty",
                "hcpe_big"
            ]
        );
        assert_eq!(fams[0].kind, "counter");
        assert_eq!(fams[0].value(&[]), Some(42.0));
        assert_eq!(fams[1].kind, "gauge");
        assert_eq!(fams[2].help.as_deref(), Some("Smoothed RTT per uplink.\nFrom probes."));
        assert_eq!(fams[2].value(&[("uplink", "dsl")]), Some(0.0123));
        assert_eq!(fams[2].value(&[("uplink", "lte")]), Some(f64::INFINITY));
        assert!(fams[2].value(&[("uplink", "sat")]).unwrap().is_nan());
        assert_eq!(fams[3].help.as_deref(), Some("Label values with \\ and \"quotes\"."));
        assert_eq!(fams[3].value(&[("v", "a\"b"), ("w", "c\\d")]), Some(1.0));
        assert_eq!(fams[3].value(&[("v", "line1\nline2"), ("w", "} , = {")]), Some(2.0));
        assert_eq!(fams[3].value(&[("v", "ünïcødé ✓"), ("w", "")]), Some(3.0));
        assert!(fams[4].samples.is_empty());
        assert_eq!(fams[4].help, None, "an empty HELP is left out");
        assert_eq!(fams[5].value(&[]), Some(1e300));
        // Every sample is on its own line: a newline in a label value did not split one.
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 9, "{text}");
    }

    proptest::proptest! {
        /// Any label value and (trimmed) HELP text (quotes, backslashes, newlines, braces, any Unicode) comes back intact,
        /// and any value comes back equal (NaN as NaN).
        #[test]
        fn any_text_and_value_round_trip(
            help in ".*",
            values in proptest::collection::vec((".*", proptest::num::f64::ANY), 1..5),
        ) {
            let mut w = MetricsWriter::new();
            let mut f = w.family("m", &help, MetricType::Gauge);
            for (i, (v, x)) in values.iter().enumerate() {
                f.sample(&[("i", &i.to_string()), ("v", v)], *x);
            }
            let text = w.finish();
            let fams = parse(&text).map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e}\n{text}")))?;
            proptest::prop_assert_eq!(fams.len(), 1);
            proptest::prop_assert_eq!(fams[0].help.as_deref(), Some(help.trim()).filter(|h| !h.is_empty()));
            for (i, (v, x)) in values.iter().enumerate() {
                let got = fams[0].value(&[("i", &i.to_string()), ("v", v)]);
                proptest::prop_assert!(got.is_some_and(|g| g == *x || (g.is_nan() && x.is_nan())), "{got:?} != {x}");
            }
        }
    }

    #[test]
    fn parser_rejects_what_prometheus_rejects() {
        let bad = [
            ("a 1", "newline"),
            ("a{b=\"c} 1\n", "unterminated"),
            ("a{b=c} 1\n", "not quoted"),
            ("a{b=\"\\x\"} 1\n", "escape"),
            ("a{b=\"1\",b=\"2\"} 1\n", "duplicate label"),
            ("a{1b=\"1\"} 1\n", "label name"),
            ("a-b 1\n", "metric name"),
            ("a one\n", "invalid value"),
            ("a inf\n", "invalid value"),
            ("a 1 12.5\n", "timestamp"),
            ("a 1 -5\n", "timestamp"),
            ("# TYPE a counter \n", "unknown type"),
            ("a 1 2 3\n", "trailing"),
            ("a\n", "missing value"),
            ("a 1\nb 1\na 2\n", "appears again"),
            ("a 1\na 2\n", "repeated series"),
            ("# TYPE a counter\n# TYPE a gauge\n", "TYPE line repeated"),
            ("a 1\n# TYPE a counter\n", "TYPE line"),
            ("# TYPE a countr\n", "unknown type"),
            ("# HELP a x\n# HELP a y\n", "second HELP"),
            ("# HELP a bad \\q escape\n", "escape"),
            ("a{b=\"1\"}1\n", "whitespace"),
        ];
        for (text, want) in bad {
            let e = parse(text).expect_err(text);
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let ok = "# a comment\n#HELP not a help line\n# HELP\n\n# HELP h x\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 2\nh_count 1\n\
                  a{b=\"1\",} 1 1700000000000\nc -Inf\n";
        let fams = parse(ok).unwrap();
        assert_eq!(fams.len(), 3);
        assert_eq!(fams[0].samples.len(), 3);
    }
}
