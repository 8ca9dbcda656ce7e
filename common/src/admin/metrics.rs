//! Prometheus text exposition format (version 0.0.4): a small writer the daemons fill from their counters. The
//! strict parser that proves the output is what a Prometheus server accepts lives with the test support
//! (`testkit::prometheus`).
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

use std::collections::HashSet;
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            w.finish(),
            "# HELP ok_total x\n# TYPE ok_total counter\nok_total 1\n# HELP lab x\n# TYPE lab gauge\nlab{l=\"v\"} 2\n"
        );
    }

    #[test]
    #[should_panic(expected = "written twice")]
    fn repeated_family_is_a_bug_in_debug_builds() {
        let mut w = MetricsWriter { strict: true, ..MetricsWriter::new() };
        w.counter("ok_total", "x", 1u64);
        w.counter("ok_total", "again", 2u64);
    }
}
