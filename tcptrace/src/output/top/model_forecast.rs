//! The table's exhaustion forecast (`FCST%`) and the header's busiest one: each 4-tuple
//! space toward a destination with the capacity of the namespace that holds it.
use super::{GroupKey, GroupKind, GroupStats, TopModel};
use crate::{
    host::netns::Namespaces,
    state::forecast::{forecast, Forecast},
};

impl TopModel {
    /// The namespaces the forecast's capacities come from.
    pub fn set_namespaces(&mut self, namespaces: &Namespaces) {
        if self.namespaces != *namespaces {
            self.namespaces = namespaces.clone();
        }
    }

    /// A destination's busiest 4-tuple space (namespace, local address) and its forecast,
    /// with that namespace's capacity. Local services have none: a server's TIME_WAITs are
    /// keyed by its clients' ephemeral ports, which are not its own to run out of.
    pub(super) fn busiest_space(
        &self,
        key: &GroupKey,
        g: &GroupStats,
        now_s: u64,
        window_s: f64,
    ) -> Option<Forecast> {
        if key.kind != GroupKind::Destination {
            return None;
        }
        g.time_wait_entries
            .iter()
            .map(|(&(netns, local), w)| {
                let ns = self.namespaces.get_or_unknown(netns);
                forecast(&ns, local, key.endpoint, w.per_second(now_s, window_s))
            })
            .filter(|f| f.rate_per_s > 0.0)
            .max_by(|a, b| a.utilization.total_cmp(&b.utilization))
    }

    /// The busiest 4-tuple space of all destinations, in words for the header.
    pub(super) fn busiest_forecast(&self, now_s: u64, window_s: f64) -> Option<String> {
        let f = self
            .groups
            .iter()
            .filter_map(|(k, g)| self.busiest_space(k, g, now_s, window_s))
            .max_by(|a, b| a.utilization.total_cmp(&b.utilization))?;
        Some(format!("busiest forecast {}", f.brief()))
    }
}
