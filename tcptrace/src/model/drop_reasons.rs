//! What the kernel's drop reasons an operator meets mean, in a few words (the names are the
//! kernel's `enum skb_drop_reason`, read from its BTF).

/// A few words on what `reason` means and where to look; `None` for a reason without one.
pub fn meaning(reason: &str) -> Option<&'static str> {
    Some(match reason {
        "NETFILTER_DROP" => "a netfilter rule or conntrack (firewall, NAT) dropped it",
        "IP_RPFILTER" => "reverse-path filter: the source is not routed back via that interface",
        "TCP_RFC7323_PAWS" => "PAWS: its timestamp is older than the connection's last",
        "TCP_RFC7323_TW_PAWS" => {
            "PAWS in TIME_WAIT: a SYN whose timestamp is older than the old connection's"
        }
        "TCP_LISTEN_OVERFLOW" => "the listener's accept queue was full",
        "TCP_REQQFULLDROP" => "the listener's SYN queue was full (no SYN cookies)",
        "NO_SOCKET" => "no socket for it (a closed port: answered with a reset)",
        "SOCKET_BACKLOG" => "the socket's backlog was full while its owner held it",
        "TCP_OLD_DATA" | "TCP_OLD_SEQUENCE" => "a duplicate of data already received",
        "TCP_INVALID_ACK_SEQUENCE" => "it acknowledged data never sent (another connection's)",
        "TCP_OFOMERGE" | "TCP_OFO_DROP" | "TCP_OFO_QUEUE_PRUNE" => {
            "out of order with the receive queue full"
        }
        "TCP_ZEROWINDOW" => "the receive window was zero",
        "TCP_CSUM" => "a bad TCP checksum",
        "TCP_MD5NOTFOUND" | "TCP_MD5UNEXPECTED" | "TCP_MD5FAILURE" => "TCP-MD5 signature mismatch",
        "QDISC_DROP" | "TC_DROP" | "QDISC_CONGESTED" => {
            "traffic control (a queueing discipline) dropped it"
        }
        "NEIGH_FAILED" | "NEIGH_QUEUEFULL" | "NEIGH_DEAD" | "NEIGH_CREATEFAIL" => {
            "the next hop's address did not resolve (ARP/ND)"
        }
        "IP_NOROUTE" | "IP_INNOROUTESINCE" => "no route to the destination",
        "IP_INADDRERRORS" | "IP_INHDR" | "IP_CSUM" => "a bad IP header or address",
        "CPU_BACKLOG" => "the CPU's input backlog was full (netdev_max_backlog)",
        "SOCKET_RCVBUFF" | "PROTO_MEM" => "the socket or TCP was out of receive memory",
        "XDP" => "an XDP program dropped it",
        "TCP_CLOSE" => "the socket was already closed",
        "TCP_FLAGS" => "flags not valid in the connection's state",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::meaning;

    #[test]
    fn the_reasons_operators_meet_are_explained() {
        for reason in [
            "NETFILTER_DROP",
            "IP_RPFILTER",
            "TCP_RFC7323_TW_PAWS",
            "TCP_LISTEN_OVERFLOW",
            "NO_SOCKET",
            "QDISC_DROP",
            "NEIGH_FAILED",
        ] {
            assert!(meaning(reason).is_some(), "{reason} has no meaning");
        }
        assert_eq!(meaning("SOMETHING_NEW"), None);
    }
}
