//! The session's once-a-second work on workloads: the cgroup tree walked (cgroups named
//! while they live), and the workload filters (`--pod`, `--namespace`, `--container`)
//! following the pods as they come and go.
use anyhow::Result;

use crate::output::consumer::Consumer;

use super::Session;

impl Session<'_> {
    /// Once a second: the tree walked where due; `--pod`, `--namespace`, `--container`: the
    /// cgroups they name, read again (pods come and go, a restarted pod has a new UID and
    /// cgroup).
    pub(super) fn follow_workloads<C: Consumer>(&mut self, consumer: &mut C) -> Result<()> {
        let filter = &self.config.filter.workloads;
        let walked = match filter.is_empty() {
            // Cgroups named while they live: a pod gone before its records are read keeps
            // its name (they wait in the ring, and a busy drain lags).
            true => {
                self.dispatch.identities.walk_if_due();
                None
            }
            false => Some(self.dispatch.identities.walk()),
        };
        if let Some(said) = self.dispatch.identities.take_unsaid() {
            consumer.warning(&said);
        }
        let Some(walked) = walked else {
            return Ok(());
        };
        let now = filter.select(&walked);
        if now == self.workload_cgroups {
            return Ok(());
        }
        self.tracer
            .set_workload_cgroups(&self.workload_cgroups, &now)?;
        if now.is_empty() {
            consumer.warning(&format!(
                "no workload matches {} now: nothing is traced until one does",
                filter.describe()
            ));
        }
        self.workload_cgroups = now;
        Ok(())
    }
}
