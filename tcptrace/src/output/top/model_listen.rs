//! The local services' listeners: accept queue now and backlog, handshakes dropped per
//! second (the watch's samples, each tick), matched to the services' rows by port (a
//! listener on 0.0.0.0 or :: serves every address); a listener with no row gets one while it
//! queues or drops.
use std::net::IpAddr;

use super::{RateWindow, Row, TopModel};
use crate::{model::tcp::Endpoint, state::listeners::ListenerWatch};

/// What a service's row shows of its listener.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ListenCell {
    pub queue: u32,
    pub backlog: u32,
    pub drops_per_s: f64,
}

/// A listener as `top` keeps it.
#[derive(Clone, Debug, Default)]
pub struct ListenRow {
    queue: u32,
    backlog: u32,
    drops: RateWindow,
}

fn serves(listener: &Endpoint, local: &Endpoint) -> bool {
    listener.port == local.port
        && (listener.addr == local.addr
            || match listener.addr {
                IpAddr::V4(a) => a.is_unspecified(),
                IpAddr::V6(a) => a.is_unspecified(),
            })
}

impl TopModel {
    /// The listeners as last sampled (once a second).
    pub fn set_listeners(&mut self, watch: &ListenerWatch, now_ns: u64) {
        let now_s = now_ns / 1_000_000_000;
        let mut present = Vec::new();
        for l in watch.listeners() {
            present.push(l.endpoint);
            let row = self.listen.entry(l.endpoint).or_default();
            (row.queue, row.backlog) = (l.queue, l.backlog);
            row.drops
                .add_n(now_s, u32::try_from(l.dropped_last).unwrap_or(u32::MAX));
        }
        self.listen.retain(|e, _| present.contains(e));
    }

    pub(super) fn attach_listeners(&self, rows: &mut Vec<Row>, now_s: u64, window_s: f64) {
        let mut unmatched: Vec<&Endpoint> = self.listen.keys().collect();
        for row in rows.iter_mut() {
            let Some((endpoint, l)) = self.listen.iter().find(|(e, _)| serves(e, &row.endpoint))
            else {
                continue;
            };
            unmatched.retain(|e| *e != endpoint);
            row.listen = Some(l.cell(now_s, window_s));
        }
        // A listener with no traffic seen gets a row while it queues or drops.
        for endpoint in unmatched {
            let cell = self.listen[endpoint].cell(now_s, window_s);
            if cell.queue > 0 || cell.drops_per_s > 0.0 {
                rows.push(Row {
                    listen: Some(cell),
                    ..Row::empty(*endpoint)
                });
            }
        }
    }
}

impl ListenRow {
    fn cell(&self, now_s: u64, window_s: f64) -> ListenCell {
        ListenCell {
            queue: self.queue,
            backlog: self.backlog,
            drops_per_s: self.drops.per_second(now_s, window_s),
        }
    }
}
