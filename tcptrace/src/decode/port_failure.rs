//! A port-failure record → [`PortFailure`].
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Result};
use tcptrace_common::{family, port_failure, PortFailureEvent};

use crate::model::{
    port_failure::{Call, Errno, PortFailure},
    tcp::{comm_to_string, Endpoint, Process},
    workload::Workload,
};

impl TryFrom<&PortFailureEvent> for PortFailure {
    type Error = anyhow::Error;

    fn try_from(raw: &PortFailureEvent) -> Result<PortFailure> {
        let call = match raw.call {
            port_failure::CONNECT => Call::Connect,
            port_failure::BIND => Call::Bind,
            other => bail!("unknown port-failure call {other}"),
        };
        let errno = match raw.errno {
            port_failure::EADDRNOTAVAIL => Errno::AddrNotAvail,
            port_failure::EADDRINUSE => Errno::AddrInUse,
            other => bail!("unexpected port-failure errno {other}"),
        };
        if raw.flags & !port_failure::NO_ADDRESS != 0 {
            bail!("unknown port-failure flags {:#x}", raw.flags);
        }
        let addr = match raw.family {
            _ if raw.flags & port_failure::NO_ADDRESS != 0 => None,
            family::INET => Some(IpAddr::V4(Ipv4Addr::new(
                raw.addr[0],
                raw.addr[1],
                raw.addr[2],
                raw.addr[3],
            ))),
            family::INET6 => Some(IpAddr::V6(Ipv6Addr::from(raw.addr))),
            other => bail!("unknown address family {other} in a port failure"),
        };
        Ok(PortFailure {
            ts_ns: raw.ts_ns,
            call,
            errno,
            owner: Process {
                pid: raw.pid,
                comm: comm_to_string(&raw.comm),
            },
            workload: Workload::unresolved(raw.cgroup),
            netns: raw.netns,
            asked: addr.map(|a| Endpoint::new(a, raw.port)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn raw(call: u8, errno: u32) -> PortFailureEvent {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[10, 231, 0, 1]);
        let mut comm = [0u8; tcptrace_common::COMM_LEN];
        comm[..7].copy_from_slice(b"python3");
        PortFailureEvent {
            kind: tcptrace_common::record_kind::PORT_FAILURE,
            call,
            flags: 0,
            family: family::INET,
            ts_ns: 5,
            errno,
            pid: 42,
            comm,
            netns: 4026532239,
            port: 8888,
            _pad0: 0,
            addr,
            cgroup: 0,
        }
    }

    #[test]
    fn failures_decode_with_their_address_or_without() {
        let f = PortFailure::try_from(&raw(port_failure::CONNECT, 99)).expect("valid");
        assert_eq!((f.call, f.errno), (Call::Connect, Errno::AddrNotAvail));
        assert_eq!(
            f.asked.map(|e| e.to_string()).as_deref(),
            Some("10.231.0.1:8888")
        );
        assert_eq!((f.owner.pid, f.owner.comm.as_str()), (42, "python3"));
        let mut bare = raw(port_failure::BIND, 98);
        bare.flags = port_failure::NO_ADDRESS;
        bare.family = 0;
        let f = PortFailure::try_from(&bare).expect("valid");
        assert_eq!(
            (f.call, f.errno, f.asked),
            (Call::Bind, Errno::AddrInUse, None)
        );
        assert!(PortFailure::try_from(&raw(3, 99)).is_err());
        assert!(PortFailure::try_from(&raw(port_failure::CONNECT, 11)).is_err());
        let mut v6 = raw(port_failure::CONNECT, 99);
        v6.family = family::INET6;
        v6.addr = std::net::Ipv6Addr::LOCALHOST.octets();
        let f = PortFailure::try_from(&v6).expect("valid");
        assert_eq!(
            f.asked.map(|e| e.to_string()).as_deref(),
            Some("[::1]:8888")
        );
    }
}
