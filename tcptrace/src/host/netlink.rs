//! Netlink to the kernel, as the conntrack lookups and the NAT rule dumps use it: a request
//! sent on a socket opened inside a namespace, and what a failed request left unread thrown
//! away.

/// Sends `request` to the kernel on the netlink socket `raw`.
pub fn send_to_kernel(raw: i32, request: &[u8]) -> std::io::Result<()> {
    // SAFETY: a send of our buffer on our socket (to the kernel: a zeroed sockaddr_nl).
    let sent = unsafe {
        let mut to: libc::sockaddr_nl = std::mem::zeroed();
        to.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            raw,
            request.as_ptr().cast(),
            request.len(),
            0,
            (&raw const to).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    match sent < 0 {
        true => Err(std::io::Error::last_os_error()),
        false => Ok(()),
    }
}

/// Throws away what an earlier request left unread on the socket.
pub fn drain_stale(raw: i32) {
    let mut buf = [0u8; 4096];
    for _ in 0..1_000 {
        // SAFETY: a receive into our buffer, never blocking.
        let got =
            unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if got <= 0 {
            return;
        }
    }
}
