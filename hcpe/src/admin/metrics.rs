//! hcpe's `/metrics` families (prefix `hcpe_`): connection outcomes from [`ConnCounters`](crate::conn::ConnCounters), Convert errors by
//! code, the open connections' live bytes, and per uplink: state, mode, RTT, loss, probe counters, bytes and
//! rates (volume tracker), quota, mode changes by reason.
//!
//! Invariant: every sample is read from counters owned elsewhere at scrape time; uplink labels come from the
//! config only.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use common::admin::metrics::MetricValue;
use common::admin::{MetricType, Metrics, MetricsWriter};
use common::convert::ErrorCode;
use common::probe::HealthState;

use super::ApiState;
use super::api::{UplinkView, uplinks_view};
use crate::conn::{ERROR_CODES, EXCHANGE_FAILURES};
use crate::uplink::HealthSource;
use crate::uplink::adapt::Carry;

/// The metrics source the admin app scrapes.
#[derive(Debug, Clone)]
pub struct HcpeMetrics {
    state: Arc<ApiState>,
}

impl HcpeMetrics {
    /// Metrics over `state`.
    pub fn new(state: Arc<ApiState>) -> Self {
        HcpeMetrics { state }
    }
}

/// Metric label of a Convert error code (RFC 8803 §4.2.9 names).
pub fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::UnsupportedVersion => "unsupported_version",
        ErrorCode::MalformedMessage => "malformed_message",
        ErrorCode::UnsupportedMessage => "unsupported_message",
        ErrorCode::MissingCookie => "missing_cookie",
        ErrorCode::NotAuthorized => "not_authorized",
        ErrorCode::UnsupportedTcpOption => "unsupported_tcp_option",
        ErrorCode::ResourceExceeded => "resource_exceeded",
        ErrorCode::NetworkFailure => "network_failure",
        ErrorCode::ConnectionReset => "connection_reset",
        ErrorCode::DestinationUnreachable => "destination_unreachable",
        ErrorCode::Unknown(_) => "other",
    }
}

impl Metrics for HcpeMetrics {
    fn write_metrics(&self, w: &mut MetricsWriter) {
        let c = &self.state.conns.counters;
        let open = self.state.conns.connections.snapshot();
        w.gauge("connections_open", "LAN connections open now.", open.len() as u64);
        w.counter(
            "connections_accepted_total",
            "LAN connections accepted on the TUN listeners.",
            c.accepted.load(Relaxed),
        );
        w.family("connections_total", "LAN connections by how they were carried.", MetricType::Counter)
            .sample(&[("via", "hag")], c.converted.load(Relaxed))
            .sample(&[("via", "direct")], c.fallback_direct.load(Relaxed));
        w.family(
            "connections_failed_total",
            "LAN connections reset instead of carried, by reason (refused = hag answered with a Convert Error; \
             rejected = hag unavailable and no fallback or the direct attempt failed; orphaned = no NAT entry).",
            MetricType::Counter,
        )
        .sample(&[("reason", "refused")], c.refused.load(Relaxed))
        .sample(&[("reason", "rejected")], c.rejected.load(Relaxed))
        .sample(&[("reason", "orphaned")], c.orphaned.load(Relaxed));
        w.family(
            "connect_races_total",
            "Connections to hag whose first attempt was slow, so a second started over another uplink, by the \
             attempt that won.",
            MetricType::Counter,
        )
        .sample(&[("winner", "first")], c.races.load(Relaxed) - c.races_won_second.load(Relaxed))
        .sample(&[("winner", "second")], c.races_won_second.load(Relaxed));
        {
            let mut f = w.family(
                "hag_exchange_failures_total",
                "Convert exchanges with hag that failed before a reply (the fallback then applied), by reason.",
                MetricType::Counter,
            );
            for (i, reason) in EXCHANGE_FAILURES.iter().enumerate() {
                f.sample(&[("reason", reason)], c.exchange_failed[i].load(Relaxed));
            }
        }
        {
            let mut f = w.family(
                "convert_errors_received_total",
                "Convert Error TLVs received from hag, by RFC 8803 error code (other = an unassigned code).",
                MetricType::Counter,
            );
            for (i, code) in ERROR_CODES.iter().enumerate() {
                let label = match code {
                    ErrorCode::Unknown(_) => "other".to_owned(),
                    c => c.code().to_string(),
                };
                f.sample(&[("code", &label), ("name", code_name(*code))], c.refused_by_code[i].load(Relaxed));
            }
        }
        if let Some(nat) = &self.state.conns.nat {
            let (flows, c) = {
                let nat = nat.lock().expect("nat lock");
                (nat.len(), nat.counters().clone())
            };
            w.gauge(
                "nat_flows",
                "LAN flows in the NAT table now (a LAN connection's, until its close timeout after it ends).",
                flows as u64,
            );
            w.counter(
                "nat_flows_created_total",
                "LAN flows the NAT created (one per SYN from the LAN).",
                c.flows_created,
            );
            w.counter(
                "nat_exhausted_total",
                "LAN SYNs dropped because every fake source endpoint of their family was in use.",
                c.exhausted,
            );
        }
        {
            let pool = &self.state.conns.pool;
            let st = pool.status();
            let pc = &pool.counters;
            w.gauge("pool_ready", "Ready connections to hag in the pool now.", st.ready as u64);
            w.gauge(
                "pool_target",
                "Ready connections the pool aims for now (grows on misses, shrinks when quiet).",
                st.target as u64,
            );
            w.family(
                "pool_connections_total",
                "Ready connections: opened (hag held them), open failures, taken by a LAN connection, LAN \
                 connections that found the pool empty (missed) or left it alone while a probe of its uplink was overdue \
                 (bypassed), and taken ones that failed before hag's reply.",
                MetricType::Counter,
            )
            .sample(&[("event", "opened")], pc.opened.load(Relaxed))
            .sample(&[("event", "open_failed")], pc.open_failed.load(Relaxed))
            .sample(&[("event", "taken")], pc.taken.load(Relaxed))
            .sample(&[("event", "missed")], pc.missed.load(Relaxed))
            .sample(&[("event", "bypassed")], pc.bypassed.load(Relaxed))
            .sample(&[("event", "failed_after_take")], pc.failed_after_take.load(Relaxed));
            let mut f = w.family(
                "pool_retired_total",
                "Ready connections closed unused, by reason (aged, closed by hag, uplink changed, unjoined, surplus).",
                MetricType::Counter,
            );
            for (i, why) in crate::conn::pool::Retired::ALL.iter().enumerate() {
                f.sample(&[("reason", why.as_str())], pc.retired[i].load(Relaxed));
            }
        }
        w.counter(
            "connections_closed_by_admin_total",
            "Connections closed through the admin API.",
            c.closed_by_admin.load(Relaxed),
        );
        w.family(
            "bytes_total",
            "Bytes relayed by finished connections (up = LAN to destination).",
            MetricType::Counter,
        )
        .sample(&[("direction", "up")], c.bytes_up.load(Relaxed))
        .sample(&[("direction", "down")], c.bytes_down.load(Relaxed));
        let (up, down) = open
            .iter()
            .fold((0u64, 0u64), |(u, d), c| (u + c.counters.a_to_b.load(Relaxed), d + c.counters.b_to_a.load(Relaxed)));
        w.family("open_connection_bytes", "Bytes relayed so far by the connections still open.", MetricType::Gauge)
            .sample(&[("direction", "up")], up)
            .sample(&[("direction", "down")], down);

        self.write_uplinks(w);
    }
}

/// A family with one sample per uplink (label `uplink`), `None` for none.
fn per_uplink<V: MetricValue>(
    w: &mut MetricsWriter,
    ups: &[UplinkView],
    name: &str,
    help: &str,
    kind: MetricType,
    value: impl Fn(&UplinkView) -> Option<V>,
) {
    let mut f = w.family(name, help, kind);
    for u in ups {
        if let Some(v) = value(u) {
            f.sample(&[("uplink", &u.name)], v);
        }
    }
}

impl HcpeMetrics {
    fn write_uplinks(&self, w: &mut MetricsWriter) {
        let ups = uplinks_view(&self.state);
        per_uplink(
            w,
            &ups,
            "uplink_up",
            "Uplink health verdict: 1 up, 0 down or not known yet (see hcpe_uplink_state).",
            MetricType::Gauge,
            |u| Some(u8::from(u.state == HealthState::Up)),
        );
        {
            let mut f = w.family("uplink_state", "Uplink health verdict (1 for the current state).", MetricType::Gauge);
            for u in &ups {
                for s in ["up", "down", "unknown"] {
                    f.sample(&[("uplink", &u.name), ("state", s)], u8::from(u.state.as_str() == s));
                }
            }
        }
        {
            let mut f = w.family("uplink_mode", "Uplink mode in force (1 for the current mode).", MetricType::Gauge);
            for u in &ups {
                for m in ["active", "backup", "standby", "off"] {
                    f.sample(&[("uplink", &u.name), ("mode", m)], u8::from(u.mode.as_str() == m));
                }
            }
        }
        per_uplink(
            w,
            &ups,
            "uplink_mptcp_fallbacks_total",
            "Connections that started on the uplink and fell back to plain TCP (MPTCP option stripped on the way?).",
            MetricType::Counter,
            |u| Some(u.mptcp.fallbacks),
        );
        per_uplink(
            w,
            &ups,
            "uplink_mptcp_join_failures_total",
            "MPTCP joins over the uplink that failed.",
            MetricType::Counter,
            |u| Some(u.mptcp.join_failures),
        );
        {
            let mut f = w.family(
                "uplink_mptcp_stripped",
                "1 while MPTCP does not get through the uplink: `initial` (connections fall back, new ones start \
                 elsewhere) or `join` (joins fail, endpoint withdrawn).",
                MetricType::Gauge,
            );
            for u in &ups {
                f.sample(&[("uplink", &u.name), ("what", "initial")], u8::from(u.mptcp.stripped));
                f.sample(&[("uplink", &u.name), ("what", "join")], u8::from(u.mptcp.joins_fail));
            }
        }
        per_uplink(
            w,
            &ups,
            "uplink_subflow_fallbacks_total",
            "Times the uplink's probes went unanswered and its health switched to its MPTCP subflows.",
            MetricType::Counter,
            |u| Some(u.subflow_fallbacks),
        );
        per_uplink(
            w,
            &ups,
            "uplink_health_from_subflows",
            "1 while the uplink's verdict comes from its MPTCP subflows because its probes go unanswered.",
            MetricType::Gauge,
            |u| Some(u8::from(u.health_source == HealthSource::Subflows)),
        );
        per_uplink(
            w,
            &ups,
            "uplink_initial",
            "1 for the uplink new connections start on now.",
            MetricType::Gauge,
            |u| Some(u8::from(u.initial)),
        );
        per_uplink(w, &ups, "uplink_rtt_seconds", "Smoothed probe RTT towards hag.", MetricType::Gauge, |u| {
            u.rtt_ms.map(|ms| ms / 1000.0)
        });
        per_uplink(
            w,
            &ups,
            "uplink_loss_ratio",
            "Missed fraction of the recent probes while the uplink was up (0..1); an outage makes it down instead.",
            MetricType::Gauge,
            |u| u.loss,
        );
        for (key, name, help) in [
            ("sent", "uplink_probes_sent_total", "Health probes sent towards hag."),
            ("replies", "uplink_probe_replies_total", "Authentic probe replies received in time."),
            ("late_replies", "uplink_probe_late_replies_total", "Authentic probe replies after their timeout."),
            ("bad_replies", "uplink_probe_bad_replies_total", "Datagrams that were not a valid probe reply."),
            ("send_errors", "uplink_probe_send_errors_total", "Probes the socket refused to send."),
        ] {
            let mut f = w.family(name, help, MetricType::Counter);
            for u in &ups {
                if let Some(n) = u.probe.as_ref().and_then(|p| p.get(key)) {
                    f.sample(&[("uplink", &u.name)], *n);
                }
            }
        }
        {
            let mut f = w.family(
                "uplink_bytes_total",
                "Bytes through the uplink interface since counting began (persisted across restarts).",
                MetricType::Counter,
            );
            for u in &ups {
                if let Some(v) = &u.volume {
                    f.sample(&[("uplink", &u.name), ("direction", "rx")], v.rx_bytes);
                    f.sample(&[("uplink", &u.name), ("direction", "tx")], v.tx_bytes);
                }
            }
        }
        {
            let mut f =
                w.family("uplink_rate_bits_per_second", "Uplink throughput over the last second.", MetricType::Gauge);
            for u in &ups {
                if let Some(v) = &u.volume {
                    f.sample(&[("uplink", &u.name), ("direction", "rx")], v.rx_bps);
                    f.sample(&[("uplink", &u.name), ("direction", "tx")], v.tx_bps);
                }
            }
        }
        {
            let mut f = w.family(
                "uplink_period_bytes",
                "Bytes (rx + tx) in the uplink's current quota period.",
                MetricType::Gauge,
            );
            for u in &ups {
                if let Some(v) = &u.volume {
                    f.sample(&[("uplink", &u.name)], v.period_bytes);
                }
            }
        }
        {
            let mut f = w.family(
                "uplink_quota_bytes",
                "The uplink's quota per period (only uplinks with one).",
                MetricType::Gauge,
            );
            for u in &ups {
                if let Some(q) = u.volume.as_ref().and_then(|v| v.quota_bytes) {
                    f.sample(&[("uplink", &u.name)], q);
                }
            }
        }
        {
            let mut f = w.family("uplink_over_quota", "1 while the uplink is over its quota.", MetricType::Gauge);
            for u in &ups {
                if let Some(v) = &u.volume {
                    f.sample(&[("uplink", &u.name)], u8::from(v.over_quota));
                }
            }
        }
        {
            let mut f = w.family(
                "uplink_quota_exceeded_total",
                "Times the uplink crossed its quota since counting began.",
                MetricType::Counter,
            );
            for u in &ups {
                if let Some(v) = &u.volume {
                    f.sample(&[("uplink", &u.name)], v.quota_exceeded_total);
                }
            }
        }
        per_uplink(
            w,
            &ups,
            "uplink_path_carrying",
            "Adaptive and overflow uplinks: 1 while the path controller has the uplink carry traffic, 0 while it stands by as backup.",
            MetricType::Gauge,
            |u| u.path_control.as_ref().map(|p| u8::from(p.carry == Carry::Active)),
        );
        {
            let mut f = w.family(
                "uplink_path_decisions_total",
                "Decisions of the path controller since start, by uplink, the carry it set and the reason.",
                MetricType::Counter,
            );
            for u in &ups {
                for t in u.path_control.iter().flat_map(|p| &p.totals) {
                    f.sample(&[("uplink", &u.name), ("to", t.to.as_str()), ("reason", t.reason.as_str())], t.count);
                }
            }
        }
        if let Some(control) = &self.state.uplinks {
            let mut f = w.family(
                "uplink_mode_changes_total",
                "Uplink mode changes since start, by reason.",
                MetricType::Counter,
            );
            for (reason, n) in control.mode_changes() {
                f.sample(&[("reason", reason.as_str())], n);
            }
        }
    }
}
