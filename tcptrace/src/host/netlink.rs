//! Netlink to the kernel, as the conntrack lookups and the NAT rule dumps use it: a netfilter
//! request built (header, attributes), sent on a socket opened inside a namespace, and what a
//! failed request left unread thrown away.

pub const NLM_F_REQUEST: u16 = 1;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLA_F_NESTED: u16 = 0x8000;

/// One attribute, padded to 4 bytes.
pub fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// A nested attribute: `inner` writes its members.
pub fn nested(buf: &mut Vec<u8>, kind: u16, inner: impl FnOnce(&mut Vec<u8>)) {
    let mut members = Vec::new();
    inner(&mut members);
    attr(buf, kind | NLA_F_NESTED, &members);
}

/// A netfilter request: the netlink header (message `subsys << 8 | kind`), `nfgenmsg` with
/// `family`, then `body`'s attributes.
pub fn netfilter_request(
    subsys: u16,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    body: &[u8],
) -> Vec<u8> {
    let len = 16 + 4 + body.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&(subsys << 8 | kind).to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&[family, 0, 0, 0]);
    msg.extend_from_slice(body);
    msg
}

/// The error an `NLMSG_ERROR` message's body holds (0: an acknowledgement), as a positive
/// errno.
pub fn error_of(body: &[u8]) -> i32 {
    body.get(..4)
        .map_or(0, |c| -i32::from_ne_bytes(c.try_into().expect("4 bytes")))
}

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
