//! `top`'s alerts pane: the newest alerts first, each as two lines (what and which flow,
//! then what was found).
use super::{TopModel, ALERTS_KEPT};
use crate::state::alert::Alert;

/// An alert as the pane shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertLine {
    pub ts_ns: u64,
    pub kind: &'static str,
    pub flow: String,
    pub detail: String,
}

impl TopModel {
    pub fn alert(&mut self, alert: &Alert) {
        let addrs = alert.addrs();
        let owner = alert
            .owner()
            .as_ref()
            .map_or(String::new(), |p| format!(" {} {}", p.comm, p.pid));
        // What was found first, the flow's history after it: on a narrow screen the
        // history is what gets cut.
        let detail = alert.detail();
        let detail = match alert {
            Alert::Closed(f) => {
                let history = crate::state::alert::path_text(&f.lifecycle);
                match detail.strip_prefix(history.as_str()) {
                    Some(rest) if !rest.is_empty() => {
                        format!("{} — {history}", rest.trim_start_matches("; "))
                    }
                    _ => detail,
                }
            }
            _ => detail,
        };
        self.alerts.push_front(AlertLine {
            ts_ns: alert.ts_ns(),
            kind: alert.kind(),
            flow: format!(
                "{} > {}{owner}",
                addrs.local.text().as_str(),
                addrs.remote.text().as_str()
            ),
            detail,
        });
        self.alerts.truncate(ALERTS_KEPT);
    }

    pub fn alerts(&self) -> impl Iterator<Item = &AlertLine> {
        self.alerts.iter()
    }
}
