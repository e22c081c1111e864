//! The timer handlers' addresses where /proc/kallsyms hides them (no `CAP_SYSLOG`): the
//! programs learn them from the sockets themselves (`learn_timers` on the state tracepoint,
//! then the first TCP timewait socket's timer), and the learner is detached once they are
//! known.
use anyhow::{anyhow, Result};
use aya::maps::Array;
use tcptrace_common::{
    learn,
    names::{map, program},
};

use super::Tracer;

/// Set in the tests: learn the handlers even where /proc/kallsyms shows them, and say both
/// on stderr at the end, for the test to compare.
pub const TEST_ENV: &str = "TCPTRACE_TEST_LEARN_SYMBOLS";

impl Tracer {
    /// What `LEARNED` holds now: (keepalive timer, timewait timer), 0 where not yet learnt.
    pub fn learned_handlers(&self) -> Result<(u64, u64)> {
        let learned: Array<_, u64> = Array::try_from(
            self.ebpf
                .map(map::LEARNED)
                .ok_or_else(|| anyhow!("map {} missing", map::LEARNED))?,
        )?;
        Ok((
            learned.get(&learn::KEEPALIVE_FN, 0).unwrap_or(0),
            learned.get(&learn::TW_FN, 0).unwrap_or(0),
        ))
    }

    /// At the end, in the tests: what was learnt, said even where learning did not finish.
    pub fn learn_report(&self) {
        if std::env::var_os(TEST_ENV).is_none() || self.learning == 0 {
            return;
        }
        let (keepalive, time_wait) = self.learned_handlers().unwrap_or((0, 0));
        eprintln!(
            "tcptrace: test: learning unfinished: tcp_keepalive_timer {keepalive:#x} \
             tw_timer_handler {time_wait:#x}"
        );
    }

    /// Once a second while learning: the learner goes once every handler the plan needs is
    /// known (it runs on every transition until then).
    pub fn learn_upkeep(&mut self) -> Result<()> {
        if self.learning == 0 {
            return Ok(());
        }
        let (keepalive, time_wait) = self.learned_handlers()?;
        let done = (self.learning & learn::KEEPALIVE == 0 || keepalive != 0)
            && (self.learning & learn::TIME_WAIT == 0 || time_wait != 0);
        if !done {
            return Ok(());
        }
        if let Some(at) = self
            .links
            .iter()
            .position(|(p, _)| *p == program::LEARN_TIMERS)
        {
            let (name, link) = self.links.remove(at);
            self.detach_link(name, link)?;
        }
        log::info!("timer handlers learnt: keepalive {keepalive:#x}, TIME_WAIT {time_wait:#x}");
        if std::env::var_os(TEST_ENV).is_some() {
            eprintln!(
                "tcptrace: test: learnt tcp_keepalive_timer {keepalive:#x} tw_timer_handler \
                 {time_wait:#x}"
            );
        }
        self.learning = 0;
        Ok(())
    }
}
