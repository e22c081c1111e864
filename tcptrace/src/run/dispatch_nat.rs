//! The dispatcher at the NAT boundary: flows and drops looked up in conntrack, and the
//! source NATs' port forecast fed from the connections they translated.
use crate::{
    host::{
        conntrack::Direction,
        nat_rules::{ports_for, NatPorts},
    },
    model::{
        events::FinishedFlow,
        tcp::{FlowAddrs, TcpState},
        vitals::PacketDrop,
        workload::Workload,
    },
    state::{
        nat::{NatAlert, NatProblem},
        snat::{Capacity, SnatKey},
    },
};

use super::{Dispatcher, NS_PER_S};

impl Dispatcher {
    /// A connection this host opened, through a NAT on this host (its own namespace's, or
    /// another's such as the node's): the addresses past it, from the entry conntrack holds
    /// for the flow's tuple while it lives (closed entries stay 10 to 120 s). A source NAT's
    /// connection counts toward its forecast: the alert, when that crosses its mark.
    pub(super) fn translate_flow(&mut self, f: &mut FinishedFlow) -> Option<NatAlert> {
        let opened = f.lifecycle.path.first().map(|s| s.state) == Some(TcpState::SynSent);
        if f.translated.is_some() || !opened {
            return None;
        }
        let now_s = f.ts_ns / NS_PER_S;
        let (netns, ct) = self
            .conntrack
            .find(&f.addrs, Direction::Original, now_s)
            .filter(|(_, ct)| ct.translates())?;
        f.translated = Some(ct.translated());
        if !ct.source_translated() {
            return None;
        }
        let open_s = f.life_ns().unwrap_or(0) as f64 / 1e9;
        let who = Workload::describe(&f.lifecycle.workload);
        let key = self.snat.ended(netns, &ct, now_s, open_s, who);
        // The forecast at each NATed flow's end only where it may become an alert (metrics
        // and `top` take theirs once a second).
        if !self.wants.alerts {
            return None;
        }
        let capacity = self.snat_capacity(&key, now_s);
        let forecast = self.snat.forecast(&key, now_s, capacity);
        self.snat
            .crosses(&forecast)
            .then(|| NatAlert::snat_forecast(f.ts_ns, forecast))
    }

    /// A SYN dropped past a NAT with no entry of its own (a TIME_WAIT's PAWS rejection at
    /// the server): the NAT's entry, whose replies go back to its source, names the client.
    pub(super) fn translate_drop(&mut self, d: &PacketDrop) {
        if d.conntrack.is_some() || d.skaddr != 0 || !d.is_first_syn() {
            return;
        }
        let replies = FlowAddrs {
            local: d.addrs.remote,
            remote: d.addrs.local,
        };
        // Looked up each time: a NAT gives a translated tuple to one client after another,
        // so a translation remembered from before may be another client's.
        let found = self
            .conntrack
            .find(&replies, Direction::Reply, d.ts_ns / NS_PER_S);
        match found {
            Some((_, ct)) if ct.translates() => {
                (self.packets).remember_translation(&ct.translated(), ct.original, d.ts_ns)
            }
            _ => self.packets.forget_translation(&d.addrs),
        }
    }

    /// A SYN the source NAT dropped: the alert says the NAT's ports toward the destination,
    /// how many are held and who is behind it.
    pub(super) fn follow_snat_drop(&mut self, d: &PacketDrop, alert: &mut NatAlert) {
        let Some(ct) = d
            .conntrack
            .filter(|_| alert.problem == NatProblem::SnatExhausted)
        else {
            return;
        };
        let now_s = d.ts_ns / NS_PER_S;
        let key = self.snat.dropped(d.netns, &ct, now_s);
        let capacity = self.snat_capacity(&key, now_s);
        alert.snat = Some(self.snat.forecast(&key, now_s, capacity));
    }

    /// Once a second: the spaces warned about are re-armed once they cooled down.
    pub(super) fn rearm_snat_forecasts(&mut self, now_s: u64) {
        for key in self.snat.warned() {
            let capacity = self.snat_capacity(&key, now_s);
            let forecast = self.snat.forecast(&key, now_s, capacity);
            self.snat.crosses(&forecast);
        }
    }

    /// The forecasts of the busiest source NAT destinations (metrics).
    pub fn snat_forecasts(&mut self, now_ns: u64) -> Vec<crate::state::snat::SnatForecast> {
        let now_s = now_ns / NS_PER_S;
        (self.snat.busiest(now_s, 10).into_iter())
            .map(|key| {
                let capacity = self.snat_capacity(&key, now_s);
                self.snat.forecast(&key, now_s, capacity)
            })
            .collect()
    }

    /// What a NAT gives toward a destination: its rule's ports (read from the NAT's
    /// namespace), its conntrack TIME_WAIT timeout, and whether the kernel evicts closed
    /// entries.
    fn snat_capacity(&mut self, key: &SnatKey, now_s: u64) -> Capacity {
        let (netns, nat, _) = *key;
        let seen = self.snat.last_port(key);
        let ports: NatPorts = ports_for(self.conntrack.source_nat_rules(netns, now_s), nat, seen);
        let hold_s = (self.namespaces.get(netns))
            .and_then(|ns| ns.conntrack)
            .map(|t| t.tcp_timeout_time_wait_s)
            .filter(|&s| s > 0)
            .map(|s| s as f64);
        Capacity {
            netns_label: self.namespaces.label(netns),
            ports,
            hold_s,
            evicts_closed: self.host().nat_evicts_closed_entries(),
        }
    }
}
