//! The hcpe daemon's life: clean leftovers, bring up the TUN interception and the policy routing that feeds it,
//! accept LAN connections until told to stop, then remove everything it added.
//!
//! Invariants:
//! - every rule and route hcpe adds carries [`RT_PROTO_HCPE`]; start flushes those first (a crash leaves no
//!   duplicate) and stop flushes them again; the TUN device is not persistent, so the kernel deletes it (and
//!   its routes) when the process ends, however it ends;
//! - bypass rules (hag addresses, LAN subnets, configured prefixes) have lower priority numbers than the
//!   interception rule, so they are matched first;
//! - rules are removed before the TUN goes away, so LAN traffic falls back to normal routing, not a blackhole.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::Context as _;
use common::net::{DeviceRoute, Family, Netlink, Rule};
use ipnet::IpNet;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::admin;
use crate::config::Config;
use crate::conn::{self, ConnCounters, Shared};
use crate::intercept::{Interceptor, TunSettings};
use crate::nat::Timeouts;
use crate::uplink::UplinkManager;
use crate::uplink::volume::VolumeTracker;

/// rtnetlink protocol number marking hcpe's rules and routes (unassigned in iproute2's rt_protos).
pub const RT_PROTO_HCPE: u8 = 72;

/// Offset of the interception rule from `routing.rule_priority`; bypass rules use the priorities before it.
pub const INTERCEPT_OFFSET: u32 = 900;

fn tun_settings(cfg: &Config) -> TunSettings {
    TunSettings {
        name: cfg.tun.name.clone(),
        ipv4: cfg.tun.ipv4.map(|n| (n.addr(), n.prefix_len())),
        ipv6: cfg.tun.ipv6.map(|n| (n.addr(), n.prefix_len())),
        mtu: cfg.tun.mtu,
        listen_port: cfg.tun.listen_port,
        offload: cfg.tun.offload,
        queues: cfg.tun.queues,
        max_pool_addresses: cfg.limits.nat_pool_addresses,
        timeouts: Timeouts {
            syn: std::time::Duration::from_secs(30),
            // Outlive the relay's idle timeout so an entry never goes while its socket is open.
            idle: cfg.limits.idle_timeout + std::time::Duration::from_secs(60),
            closed: std::time::Duration::from_secs(10),
        },
    }
}

/// Prefixes never intercepted: configured bypass, the hag addresses, the LAN interfaces' subnets.
async fn bypass_prefixes(cfg: &Config, nl: &Netlink) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = cfg.bypass.clone();
    out.extend(cfg.hag_addresses.iter().map(|a| IpNet::from(a.ip())));
    for lan in &cfg.lan_interfaces {
        match common::net::ifindex(lan) {
            Ok(idx) => match nl.addresses(idx).await {
                Ok(addrs) => out.extend(addrs.into_iter().map(|n| n.trunc()).filter(|n| match n.addr() {
                    IpAddr::V6(a) => !a.is_unicast_link_local(),
                    IpAddr::V4(_) => true,
                })),
                Err(e) => warn!(lan, error = %e, "cannot list LAN addresses for bypass"),
            },
            Err(_) => warn!(lan, "LAN interface not present; its subnets are not bypassed"),
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|n| seen.insert(*n));
    out
}

/// Rules and routes hcpe wants, given the TUN's ifindex.
async fn install_routing(cfg: &Config, nl: &Netlink, ifindex: u32) -> anyhow::Result<(usize, usize)> {
    let table = cfg.routing.table;
    let base = cfg.routing.rule_priority;
    let mut families = Vec::new();
    if cfg.tun.ipv4.is_some() {
        families.push((Family::V4, "0.0.0.0/0".parse::<IpNet>().expect("valid")));
    }
    if cfg.tun.ipv6.is_some() {
        families.push((Family::V6, "::/0".parse::<IpNet>().expect("valid")));
    }
    let mut routes = 0;
    for (_, default) in &families {
        nl.add_route(&DeviceRoute { dst: *default, ifindex, table, protocol: RT_PROTO_HCPE })
            .await
            .context("adding the route into the TUN device")?;
        routes += 1;
    }
    let bypass = bypass_prefixes(cfg, nl).await;
    let mut rules = 0;
    for lan in &cfg.lan_interfaces {
        for (family, _) in &families {
            let same_family =
                |n: &&IpNet| matches!((family, n), (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_)));
            for (prio, net) in (base..).zip(bypass.iter().filter(same_family)) {
                if prio >= base + INTERCEPT_OFFSET {
                    anyhow::bail!("more than {INTERCEPT_OFFSET} bypass prefixes");
                }
                nl.add_rule(&Rule {
                    family: *family,
                    priority: prio,
                    iif: Some(lan.clone()),
                    tcp_only: true,
                    to: Some(*net),
                    table: 254,
                    protocol: RT_PROTO_HCPE,
                })
                .await
                .with_context(|| format!("adding bypass rule for {net}"))?;
                rules += 1;
            }
            nl.add_rule(&Rule {
                family: *family,
                priority: base + INTERCEPT_OFFSET,
                iif: Some(lan.clone()),
                tcp_only: true,
                to: None,
                table,
                protocol: RT_PROTO_HCPE,
            })
            .await
            .context("adding the interception rule")?;
            rules += 1;
        }
    }
    Ok((rules, routes))
}

/// What the daemon needs besides its config.
#[derive(Default)]
pub struct RunOptions {
    /// The file the config was read from; `POST /api/v1/reload` re-reads it (`None`: no reload).
    pub config_path: Option<std::path::PathBuf>,
    /// Changes the log filter at run time on a reload (`None`: a `log_level` change needs a restart).
    pub log_level: Option<crate::admin::LogLevelSetter>,
}

/// Runs the daemon until `shutdown` resolves, then removes everything it added.
pub async fn run(cfg: Config, opts: RunOptions, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if cfg.fastopen
        && let Err(missing) = common::mptcp::check_tfo_sysctl(common::mptcp::TfoRole::Client)
    {
        warn!("TCP Fast Open: {missing}; the Convert request will cost an extra round trip");
    }
    let cc = common::mptcp::CongestionControl::resolve(cfg.congestion_control.as_ref(), "hag.congestion_control")
        .context("hag.congestion_control")?;
    let nl = Netlink::new().context("rtnetlink")?;
    let flushed = nl.flush_marked(RT_PROTO_HCPE).await.context("removing leftovers")?;
    if flushed.rules + flushed.routes > 0 {
        info!(rules = flushed.rules, routes = flushed.routes, "removed leftovers of an earlier run");
    }
    let mut interceptor = Interceptor::start(&tun_settings(&cfg)).await?;
    let quic = crate::quic::QuicBlocker::start(cfg.block_quic, &cfg.lan_interfaces);
    let result = async {
        let (rules, routes) = install_routing(&cfg, &nl, interceptor.ifindex).await?;
        info!(rules, routes, tun = %cfg.tun.name, congestion_control = %cc, "hcpe ready");
        let uplinks = match UplinkManager::start(&cfg.uplink_settings()).await {
            Ok(m) => Some(m),
            Err(e) => {
                warn!(error = %e, "uplink manager not running: new connections start on the first uplink");
                None
            }
        };
        // Volume and quotas: after the manager (it switches modes through its control), stopped before it.
        let volume = uplinks.as_ref().map(|m| VolumeTracker::start(&cfg.volume, &cfg.uplinks, m.control()));
        let sources = uplinks.as_ref().map(UplinkManager::selector);
        let shared = Arc::new(Shared {
            config: cfg.clone(),
            counters: ConnCounters::default(),
            sources,
            connections: Arc::default(),
            pool: Arc::new(conn::pool::Pool::new(cfg.pool)),
            nat: Some(interceptor.nat()),
            congestion_control: cc.name().map(str::to_owned),
        });
        let admin_stop = tokio_util::sync::CancellationToken::new();
        let reload = admin::Reloader::new(opts.config_path, cfg.clone(), opts.log_level);
        let control = uplinks.as_ref().map(UplinkManager::control);
        let volume_handle = volume.as_ref().map(VolumeTracker::handle);
        let state = Arc::new(admin::ApiState::new(shared.clone(), control, volume_handle, reload));
        let admin = {
            let stop = admin_stop.clone();
            match admin::start(state.clone(), async move { stop.cancelled().await }) {
                Ok(a) => a,
                Err(e) => {
                    if let Some(m) = uplinks {
                        m.shutdown().await;
                    }
                    return Err(anyhow::Error::new(e));
                }
            }
        };
        let pool_stop = tokio_util::sync::CancellationToken::new();
        let pool_task = tokio::spawn(conn::pool::run(shared.pool.clone(), shared.clone(), pool_stop.clone()));
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let reloads = tokio::spawn(reload_on_hangup(hangup, state));
        common::process::notify_ready();
        serve(&mut interceptor, shared, shutdown).await;
        common::process::notify_stopping();
        reloads.abort();
        pool_stop.cancel();
        let _ = pool_task.await;
        admin_stop.cancel();
        if let Some(a) = admin {
            match a.task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "admin API failed"),
                Err(e) => warn!(error = %e, "admin API task failed"),
            }
        }
        if let Some(v) = volume {
            v.shutdown().await;
        }
        if let Some(m) = uplinks {
            m.shutdown().await;
        }
        anyhow::Ok(())
    }
    .await;
    // Rules first, so LAN traffic goes back to normal routing before the TUN disappears.
    match nl.flush_marked(RT_PROTO_HCPE).await {
        Ok(f) => info!(rules = f.rules, routes = f.routes, "removed hcpe rules and routes"),
        Err(e) => warn!(error = %e, "removing rules and routes"),
    }
    quic.stop();
    interceptor.shutdown().await;
    info!("hcpe stopped");
    result
}

/// Reloads the config on every SIGHUP (`systemctl reload hcpe`), as `POST /api/v1/reload` does, until aborted.
async fn reload_on_hangup(mut hangup: tokio::signal::unix::Signal, state: Arc<admin::ApiState>) {
    while hangup.recv().await.is_some() {
        common::process::notify_reloading();
        info!("SIGHUP: reloading the config");
        match state.reload_now().await {
            Ok(out) if !out.restart_required.is_empty() => {
                warn!(restart_required = ?out.restart_required, "some changes take effect only after a restart")
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e.message, "config reload refused: the running config stays"),
        }
        common::process::notify_ready();
    }
}

async fn serve(interceptor: &mut Interceptor, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = interceptor.accept() => match accepted {
                Ok((stream, Some(flow))) => {
                    shared.counters.accepted.fetch_add(1, Relaxed);
                    conns.spawn(conn::handle(stream, flow, shared.clone()));
                }
                Ok((stream, None)) => {
                    shared.counters.orphaned.fetch_add(1, Relaxed);
                    warn!("accepted a connection without a NAT entry; resetting it");
                    conn::reset(stream);
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
    info!(open = conns.len(), "stopping: closing open connections");
    conns.shutdown().await;
}
