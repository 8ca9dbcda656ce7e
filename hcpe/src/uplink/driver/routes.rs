//! The driver's routing half: what each uplink learns from its interface (addresses, gateways), its policy
//! routing, and the main table's default route.

use std::net::IpAddr;

use tracing::{info, warn};

use super::Driver;
use crate::uplink::decide::{self, View};
use crate::uplink::{Addrs, links, now_std, routing};

impl Driver {
    /// Looks again at what uplink `i` learns from its interface (for `auto` families): its addresses, and
    /// for families without a configured gateway the system's default-route gateway through it or, on a
    /// point-to-point link, none needed. On a change, publishes the new addresses (new connections bind to
    /// them at once) and moves the uplink's policy routing. Whether anything changed (the caller then
    /// re-syncs probers, endpoints and the main default route).
    pub(super) async fn relearn(&mut self, i: usize) -> bool {
        let (auto4, auto6) = self.wiring[i].auto;
        if !auto4 && !auto6 {
            return false;
        }
        let name = self.shared.uplinks[i].name.clone();
        let ((v4, v6), p2p, gws) = match self.wiring[i].ifindex {
            Some(ix) => {
                let addrs = match links::addresses(&self.handle, ix).await {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(uplink = %name, error = %e, "listing the uplink's addresses");
                        return false;
                    }
                };
                let p2p = links::link_flags(&self.handle, ix).await.is_some_and(links::point_to_point);
                (addrs, p2p, self.learn_gateways(i, ix).await)
            }
            None => ((Vec::new(), Vec::new()), false, [None, None]),
        };
        let cur = self.shared.live()[i].addrs;
        let mut new = cur;
        if auto4 {
            new.v4 = links::choose(cur.v4, &v4);
        }
        if auto6 {
            new.v6 = links::choose(cur.v6, &v6);
        }
        let next_hop_changed = p2p != self.wiring[i].p2p || gws != self.wiring[i].learned_gw;
        if new == cur && !next_hop_changed {
            return false;
        }
        if new != cur {
            let show = |a: Addrs| a.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
            info!(uplink = %name, from = %show(cur), to = %show(new), "uplink address changed");
            self.shared.live_mut()[i].addrs = new;
        }
        if next_hop_changed {
            info!(uplink = %name, gateways = ?gws, point_to_point = p2p, "uplink next hop learned");
            self.wiring[i].p2p = p2p;
            self.wiring[i].learned_gw = gws;
        }
        let routes = self.routes_of(i);
        match routing::update(&self.nl, &self.handle, &self.wiring[i].installed, &routes).await {
            Ok(()) => self.wiring[i].installed = routes,
            Err(e) => warn!(uplink = %name, error = %e, "moving the uplink's policy routing"),
        }
        true
    }

    /// The gateways of the system's main-table default routes through `ifindex`, for the `auto` families
    /// of uplink `i` without a configured gateway.
    pub(super) async fn learn_gateways(&self, i: usize, ifindex: u32) -> [Option<IpAddr>; 2] {
        let u = &self.shared.uplinks[i];
        let (auto4, auto6) = self.wiring[i].auto;
        let wanted = [
            (auto4 && u.ipv4.is_some_and(|f| f.gateway.is_none()), common::net::Family::V4),
            (auto6 && u.ipv6.is_some_and(|f| f.gateway.is_none()), common::net::Family::V6),
        ];
        let mut out = [None, None];
        for (k, (want, family)) in wanted.into_iter().enumerate() {
            if want {
                match self.nl.routes(family).await {
                    Ok(routes) => out[k] = links::pick_gateway(&routes, ifindex),
                    Err(e) => warn!(uplink = %u.name, error = %e, "listing routes to learn the gateway"),
                }
            }
        }
        out
    }

    /// How uplink `i` reaches the internet in one family: `Some(Some(gw))` via a gateway (configured, or
    /// learned for an `auto` family), `Some(None)` straight out of a point-to-point interface (`auto`
    /// families only), `None` unknown (its routing is then left to the system).
    pub(super) fn next_hop(&self, i: usize, v4: bool) -> Option<Option<IpAddr>> {
        let u = &self.shared.uplinks[i];
        let (configured, auto, learned) = if v4 {
            (u.ipv4.and_then(|f| f.gateway).map(IpAddr::V4), self.wiring[i].auto.0, self.wiring[i].learned_gw[0])
        } else {
            (u.ipv6.and_then(|f| f.gateway).map(IpAddr::V6), self.wiring[i].auto.1, self.wiring[i].learned_gw[1])
        };
        match (configured, auto, learned) {
            (Some(g), _, _) => Some(Some(g)),
            (None, true, Some(g)) => Some(Some(g)),
            (None, true, None) if self.wiring[i].p2p => Some(None),
            _ => None,
        }
    }

    /// Re-adds uplink `i`'s default route in its table (gone with an interface that went down).
    pub(super) async fn reinstall_routes(&mut self, i: usize) {
        let routes = self.routes_of(i);
        let res = if routes == self.wiring[i].installed {
            routing::ensure_routes(&self.handle, &routes).await
        } else {
            routing::update(&self.nl, &self.handle, &self.wiring[i].installed, &routes).await
        };
        match res {
            Ok(()) => self.wiring[i].installed = routes,
            Err(e) => warn!(uplink = %self.shared.uplinks[i].name, error = %e, "re-adding the uplink's routes"),
        }
    }

    /// Re-adds uplink `i`'s table route and forgets the main default route through it (so the next sync
    /// sets it again). Quiet on failure: right after an address went, the gateway is unreachable, and the
    /// event of the address coming back tries again.
    pub(super) async fn refresh_routes(&mut self, i: usize) {
        if let Err(e) = routing::ensure_routes(&self.handle, &self.wiring[i].installed).await {
            tracing::debug!(uplink = %self.shared.uplinks[i].name, error = %e, "re-adding the uplink's routes");
        }
        for m in &mut self.main_default {
            if m.is_some_and(|(u, _, _)| u == i) {
                *m = None;
            }
        }
    }

    /// The policy routing of uplink `i` with its current addresses and next hops (none without a known next
    /// hop: then the uplink's routing is left as the system has it, as before the uplink manager, since a
    /// device route would be wrong on a broadcast link).
    pub(super) fn routes_of(&self, i: usize) -> Vec<routing::UplinkRoute> {
        let u = &self.shared.uplinks[i];
        let Some(ifindex) = self.wiring[i].ifindex else { return Vec::new() };
        let addrs = self.shared.live()[i].addrs;
        let fams = [
            addrs.v4.map(IpAddr::V4).zip(self.next_hop(i, true)),
            addrs.v6.map(IpAddr::V6).zip(self.next_hop(i, false)),
        ];
        fams.into_iter()
            .flatten()
            .map(|(source, gateway)| routing::UplinkRoute {
                source,
                gateway,
                ifindex,
                table: u.table,
                priority: self.rule_priority + routing::RULE_OFFSET + i as u32,
            })
            .collect()
    }

    /// Installs every uplink's policy routing (removing leftovers first).
    pub(super) async fn install_routes(&mut self) -> Result<usize, common::net::NetError> {
        let mut routes = Vec::new();
        for (i, u) in self.shared.uplinks.iter().enumerate() {
            let r = self.routes_of(i);
            if r.is_empty() {
                info!(uplink = %u.name, "no gateway, address or interface (yet): source routing left to the system");
            }
            routes.extend(r.iter().cloned());
            self.wiring[i].installed = r;
        }
        routing::install(&self.nl, &self.handle, &routes).await
    }

    /// Points the main table's default route of each family at the gateway of the uplink that new
    /// connections start on ([`decide::pick_initial`] among uplinks with a gateway of that family), so
    /// non-TCP traffic fails over with them. Failures are logged and retried on the next change.
    pub(super) async fn sync_main_default(&mut self) {
        if !self.default_route {
            return;
        }
        for (k, v4) in [(0usize, true), (1, false)] {
            let want = {
                let live = self.shared.live();
                let views: Vec<View> = self
                    .shared
                    .uplinks
                    .iter()
                    .zip(live.iter())
                    .enumerate()
                    .map(|(i, (u, l))| View {
                        role: u.role,
                        mode: l.mode,
                        health: l.health,
                        trial: l.trial,
                        stripped: l.path.stripped(now_std()),
                        joins_blocked: false,
                        has_source: self.next_hop(i, v4).is_some()
                            && self.wiring[i].ifindex.is_some()
                            && if v4 { l.addrs.v4.is_some() } else { l.addrs.v6.is_some() },
                    })
                    .collect();
                decide::pick_initial(&views).and_then(|i| Some((i, self.next_hop(i, v4)?, self.wiring[i].ifindex?)))
            };
            if want == self.main_default[k] {
                continue;
            }
            let res = match want {
                Some((_, gw, ix)) => routing::set_main_default(&self.handle, v4, gw, ix, self.main_owned[k]).await,
                None => routing::del_main_default(&self.nl, &self.handle, v4).await,
            };
            let family = if v4 { "ipv4" } else { "ipv6" };
            match res {
                Ok(()) => {
                    let uplink = want.map(|(i, _, _)| self.shared.uplinks[i].name.as_str()).unwrap_or("none");
                    info!(family, uplink, via = ?want.map(|(_, g, _)| g), "main default route");
                    self.main_default[k] = want;
                    self.main_owned[k] = want.is_some();
                }
                Err(e) => {
                    warn!(family, error = %e, "main default route (routing.default_route: false if the system manages it)")
                }
            }
        }
    }
}
