//! What the session finds already there at start.
use crate::{
    cli::Config,
    host::{clock::Clock, sockdiag},
    state::timewait::TimeWaitTracker,
};

/// Sockets already in TIME_WAIT count until their remaining time runs out.
pub(super) fn seed_time_wait(config: &Config, tw: &mut TimeWaitTracker) {
    let now = Clock::ktime_now();
    match sockdiag::time_wait() {
        Ok(sockets) => {
            let netns = crate::host::netns::own_netns();
            tw.preexisting(
                netns.unwrap_or(0),
                sockets
                    .into_iter()
                    .filter(|s| config.filter.admits_diag(&s.addrs, netns, None))
                    .map(|s| (s.addrs, now + s.expires.as_nanos() as u64)),
            )
        }
        Err(e) => eprintln!("tcptrace: warning: TIME_WAIT sockets from before not counted: {e:#}"),
    }
}
