//! Prometheus text exposition format (version 0.0.4): a small writer the daemons fill from their counters, and a
//! strict parser that tests use to prove the output is what a Prometheus server accepts.
//!
//! Hand-written on purpose: the daemons only export counters and gauges (with labels), which is a few dozen
//! lines of formatting; `prometheus-client` would impose its own registry and atomic types on counters that
//! already live as plain structs in the code that owns them (STYLE: Observability), and `prometheus-parse` is a
//! lenient regex parser that silently skips lines it does not understand, so it cannot fail a test.
//!
//! Invariants of [`MetricsWriter`] output:
//! - Every family has exactly one `# HELP` and one `# TYPE` line, before its samples, and its samples are
//!   contiguous. A second family with the same name is dropped (a bug: debug builds panic).
//! - Metric and label names match the Prometheus grammar; a family or sample with an invalid name is dropped,
//!   never written half. Label values and HELP text are escaped, so no value can break a line or a label set.
//! - The output ends with a newline.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

/// Content type of [`MetricsWriter`] output, as Prometheus expects it for the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A source of metrics: each daemon (or component) implements this over the counters it owns.
///
/// Called on every scrape; implementations read their counters (atomics, snapshots) and write them. They must
/// not block for long: a scrape is a request on the admin API.
pub trait Metrics: Send + Sync {
    /// Writes this component's metric families into `out`.
    fn write_metrics(&self, out: &mut MetricsWriter);
}

/// No metrics, for a daemon that has none yet (or for tests).
impl Metrics for () {
    fn write_metrics(&self, _out: &mut MetricsWriter) {}
}

impl<T: Metrics + ?Sized> Metrics for std::sync::Arc<T> {
    fn write_metrics(&self, out: &mut MetricsWriter) {
        (**self).write_metrics(out);
    }
}

/// Several sources written one after the other (their family names must differ).
impl<M: Metrics> Metrics for [M] {
    fn write_metrics(&self, out: &mut MetricsWriter) {
        for m in self {
            m.write_metrics(out);
        }
    }
}

impl<M: Metrics> Metrics for Vec<M> {
    fn write_metrics(&self, out: &mut MetricsWriter) {
        self.as_slice().write_metrics(out);
    }
}

/// Type of a metric family (the `# TYPE` line). Histograms and summaries are not offered: nothing exports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// Monotonic count since start; by convention the name ends in `_total`.
    Counter,
    /// A value that goes up and down (connections open, RTT, state).
    Gauge,
    /// No type information.
    Untyped,
}

impl MetricType {
    /// The word used on the `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Untyped => "untyped",
        }
    }
}

/// A sample value. Integers are written exactly; floats in Prometheus' syntax (`NaN`, `+Inf`, `-Inf`).
pub trait MetricValue {
    /// Appends the value's text form to `out`.
    fn write_value(&self, out: &mut String);
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl MetricValue for $t {
            fn write_value(&self, out: &mut String) {
                let _ = write!(out, "{self}");
            }
        }
    )*};
}
int_value!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

impl MetricValue for f64 {
    fn write_value(&self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if *self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            // Debug keeps full precision and uses exponent notation for large/small magnitudes (`1e300`).
            let _ = write!(out, "{self:?}");
        }
    }
}

impl MetricValue for f32 {
    fn write_value(&self, out: &mut String) {
        f64::from(*self).write_value(out);
    }
}

impl MetricValue for bool {
    fn write_value(&self, out: &mut String) {
        out.push(if *self { '1' } else { '0' });
    }
}

/// Builds one scrape's worth of Prometheus text. Names given to it get the writer's prefix (e.g. `hcpe_`).
#[derive(Debug)]
pub struct MetricsWriter {
    out: String,
    prefix: String,
    families: HashSet<String>,
    /// Panic on an invalid name or a repeated family (a bug in the caller) instead of dropping it: in debug
    /// builds, so tests catch it; a release daemon drops the item, logs, and keeps serving the rest.
    strict: bool,
}

// Not derivable: `strict` follows the build's debug assertions (clippy sees `false` in a release build).
#[allow(clippy::derivable_impls)]
impl Default for MetricsWriter {
    fn default() -> Self {
        MetricsWriter {
            out: String::new(),
            prefix: String::new(),
            families: HashSet::new(),
            strict: cfg!(debug_assertions),
        }
    }
}

impl MetricsWriter {
    /// An empty writer without prefix.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty writer that prepends `prefix` (e.g. `hag_`) to every metric name.
    pub fn with_prefix(prefix: &str) -> Self {
        debug_assert!(prefix.is_empty() || valid_metric_name(prefix), "invalid metric prefix {prefix:?}");
        MetricsWriter { prefix: prefix.to_owned(), ..Self::default() }
    }

    /// Writes a family with one unlabelled counter sample.
    pub fn counter(&mut self, name: &str, help: &str, value: impl MetricValue) {
        self.family(name, help, MetricType::Counter).sample(&[], value);
    }

    /// Writes a family with one unlabelled gauge sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: impl MetricValue) {
        self.family(name, help, MetricType::Gauge).sample(&[], value);
    }

    /// Starts a family (writes its HELP and TYPE lines); add its samples through the returned [`Family`].
    ///
    /// A family with no sample is valid text (Prometheus ignores it). An invalid or repeated name makes the
    /// returned family discard its samples.
    pub fn family(&mut self, name: &str, help: &str, kind: MetricType) -> Family<'_> {
        let full = format!("{}{name}", self.prefix);
        let ok = valid_metric_name(&full) && self.families.insert(full.clone());
        assert!(ok || !self.strict, "metric family {full:?} has an invalid name or is written twice");
        if !ok {
            tracing::error!(family = %full, "metric family dropped: invalid name or written twice");
            return Family { w: self, name: full, ok: false };
        }
        let out = &mut self.out;
        // Trimmed: Prometheus' lexer drops whitespace after the name, and an empty HELP text is not accepted
        // by every version, so an empty HELP is left out (it is optional).
        let help = help.trim();
        if !help.is_empty() {
            out.push_str("# HELP ");
            out.push_str(&full);
            out.push(' ');
            escape_help(help, out);
            out.push('\n');
        }
        out.push_str("# TYPE ");
        out.push_str(&full);
        out.push(' ');
        out.push_str(kind.as_str());
        out.push('\n');
        Family { w: self, name: full, ok: true }
    }

    /// The text written so far.
    pub fn as_str(&self) -> &str {
        &self.out
    }

    /// The finished text (ends with a newline unless empty).
    pub fn finish(self) -> String {
        self.out
    }
}

/// A metric family being written; samples of one family stay together because this borrows the writer.
#[derive(Debug)]
pub struct Family<'w> {
    w: &'w mut MetricsWriter,
    name: String,
    ok: bool,
}

impl Family<'_> {
    /// Adds a sample with the given labels (name, value). Label values may hold any text; they are escaped.
    ///
    /// A label with an invalid or duplicate name drops this sample (a bug: debug builds panic).
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl MetricValue) -> &mut Self {
        if !self.ok {
            return self;
        }
        let labels_ok = labels
            .iter()
            .enumerate()
            .all(|(i, (name, _))| valid_label_name(name) && !labels[..i].iter().any(|(other, _)| other == name));
        assert!(labels_ok || !self.w.strict, "metric {}: invalid or duplicate label name in {labels:?}", self.name);
        if !labels_ok {
            tracing::error!(family = %self.name, "metric sample dropped: invalid or duplicate label name");
            return self;
        }
        let out = &mut self.w.out;
        out.push_str(&self.name);
        if !labels.is_empty() {
            out.push('{');
            for (i, (name, val)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(name);
                out.push_str("=\"");
                escape_label_value(val, out);
                out.push('"');
            }
            out.push('}');
        }
        out.push(' ');
        value.write_value(out);
        out.push('\n');
        self
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub fn valid_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved for Prometheus itself).
pub fn valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    !name.starts_with("__")
        && matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn escape_help(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_label_value(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

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

    #[test]
    fn exact_text_of_a_labelled_family() {
        let mut w = MetricsWriter::new();
        w.family("convert_errors_total", "Convert errors by code.", MetricType::Counter)
            .sample(&[("code", "1")], 5u64)
            .sample(&[("code", "96")], 0u64);
        assert_eq!(
            w.finish(),
            "# HELP convert_errors_total Convert errors by code.\n# TYPE convert_errors_total counter\n\
             convert_errors_total{code=\"1\"} 5\nconvert_errors_total{code=\"96\"} 0\n"
        );
    }

    #[test]
    fn name_grammar() {
        for good in ["a", "_x", "hcpe_uplink:rate5m", "A9_"] {
            assert!(valid_metric_name(good), "{good}");
        }
        for bad in ["", "9a", "a-b", "a b", "é", "a.b"] {
            assert!(!valid_metric_name(bad), "{bad}");
        }
        assert!(valid_label_name("uplink"));
        for bad in ["", "__name__", "a:b", "1x", "a-b"] {
            assert!(!valid_label_name(bad), "{bad}");
        }
    }

    #[test]
    fn release_builds_drop_invalid_names_and_repeated_families_whole() {
        let mut w = MetricsWriter { strict: false, ..MetricsWriter::new() };
        w.counter("bad-name", "x", 1u64);
        w.counter("ok_total", "x", 1u64);
        w.counter("ok_total", "again", 2u64);
        w.family("lab", "x", MetricType::Gauge).sample(&[("bad-label", "v")], 1u64).sample(&[("l", "v")], 2u64);
        let text = w.finish();
        let fams = parse(&text).unwrap();
        assert_eq!(fams.len(), 2, "{text}");
        assert_eq!(fams[0].value(&[]), Some(1.0));
        assert_eq!(fams[1].samples.len(), 1);
    }

    #[test]
    #[should_panic(expected = "written twice")]
    fn repeated_family_is_a_bug_in_debug_builds() {
        let mut w = MetricsWriter { strict: true, ..MetricsWriter::new() };
        w.counter("ok_total", "x", 1u64);
        w.counter("ok_total", "again", 2u64);
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
