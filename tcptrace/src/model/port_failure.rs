//! A connect() or bind() that failed for want of a port: what the exhaustion
//! forecast predicts, seen happening (`syscalls:sys_exit_connect` / `sys_exit_bind`).
use serde::Serialize;

use crate::model::{
    tcp::{Endpoint, Process},
    workload::Workload,
};

/// The call that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    Connect,
    Bind,
}

impl Call {
    pub fn name(self) -> &'static str {
        match self {
            Call::Connect => "connect",
            Call::Bind => "bind",
        }
    }
}

/// The error it failed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Errno {
    #[serde(rename = "EADDRNOTAVAIL")]
    AddrNotAvail,
    #[serde(rename = "EADDRINUSE")]
    AddrInUse,
}

impl Errno {
    pub fn name(self) -> &'static str {
        match self {
            Errno::AddrNotAvail => "EADDRNOTAVAIL",
            Errno::AddrInUse => "EADDRINUSE",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortFailure {
    pub ts_ns: u64,
    pub call: Call,
    pub errno: Errno,
    pub owner: Process,
    /// The calling task's cgroup and who that is.
    pub workload: Workload,
    /// The calling task's network namespace (inode; 0: not read).
    pub netns: u32,
    /// connect()'s destination, or bind()'s local address; `None` when it could not be read.
    pub asked: Option<Endpoint>,
}
