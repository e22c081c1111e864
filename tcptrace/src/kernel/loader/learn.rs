//! `tw_timer_handler`'s address where /proc/kallsyms hides it (no `CAP_SYSLOG`): the programs
//! learn it from the sockets themselves (`learn_timers` on the state tracepoint reads the TCP
//! protocols' addresses, then the first timer inside a TCP timewait socket gives the handler),
//! and the learner is detached once it is known.
use anyhow::{anyhow, Result};
use aya::maps::Array;
use tcptrace_common::{
    learn,
    names::{map, program},
};

use super::Tracer;

/// Set in the tests: learn the handler even where /proc/kallsyms shows it, and say it on
/// stderr, for the test to compare.
pub const TEST_ENV: &str = "TCPTRACE_TEST_LEARN_SYMBOLS";

impl Tracer {
    /// What `LEARNED` holds now for the timewait timer (0: not yet learnt).
    pub fn learned_time_wait_handler(&self) -> Result<u64> {
        let learned: Array<_, u64> = Array::try_from(
            self.ebpf
                .map(map::LEARNED)
                .ok_or_else(|| anyhow!("map {} missing", map::LEARNED))?,
        )?;
        Ok(learned.get(&learn::TW_FN, 0).unwrap_or(0))
    }

    /// At the end, in the tests: a learning that did not finish is said.
    pub fn learn_report(&self) {
        if std::env::var_os(TEST_ENV).is_some() && self.learning != 0 {
            eprintln!("tcptrace: test: learning unfinished");
        }
    }

    /// Once a second while learning: the learner goes once the handler is known (it runs on
    /// every transition until then).
    pub fn learn_upkeep(&mut self) -> Result<()> {
        if self.learning == 0 {
            return Ok(());
        }
        let time_wait = self.learned_time_wait_handler()?;
        if time_wait == 0 {
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
        log::info!("tw_timer_handler learnt: {time_wait:#x}");
        if std::env::var_os(TEST_ENV).is_some() {
            eprintln!("tcptrace: test: learnt tw_timer_handler {time_wait:#x}");
        }
        self.learning = 0;
        Ok(())
    }
}
