//! Decimal numbers written straight into a line with `itoa`, without `core::fmt`'s
//! machinery: the printers' hot path (a flow line holds a dozen numbers; formatting them
//! through `write!` was most of the flows mode's CPU).
use std::fmt::{self, Write};

/// `n` in decimal.
pub fn number<W: Write + ?Sized>(w: &mut W, n: impl itoa::Integer) -> fmt::Result {
    w.write_str(itoa::Buffer::new().format(n))
}

/// An IPv4 address, `a.b.c.d`.
pub fn ipv4<W: Write + ?Sized>(w: &mut W, addr: std::net::Ipv4Addr) -> fmt::Result {
    for (i, octet) in addr.octets().into_iter().enumerate() {
        if i > 0 {
            w.write_char('.')?;
        }
        number(w, octet)?;
    }
    Ok(())
}

/// `n` in decimal, zero-padded to `width` digits (`{:0width$}`, `width` at most 9).
pub fn zero_padded<W: Write + ?Sized>(w: &mut W, n: u32, width: usize) -> fmt::Result {
    const ZEROS: &str = "000000000";
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n);
    w.write_str(&ZEROS[..width.saturating_sub(digits.len()).min(ZEROS.len())])?;
    w.write_str(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_format_writes_them() {
        for n in [0u64, 7, 10, 99, 65_535, 4_294_967_296, u64::MAX] {
            let mut s = String::new();
            number(&mut s, n).expect("a String takes any text");
            assert_eq!(s, format!("{n}"));
        }
        for (n, width) in [
            (0u32, 2),
            (5, 2),
            (59, 2),
            (123, 6),
            (999_999, 6),
            (1_234, 2),
        ] {
            let mut s = String::new();
            zero_padded(&mut s, n, width).expect("a String takes any text");
            assert_eq!(s, format!("{n:0width$}"));
        }
        for addr in ["0.0.0.0", "127.0.0.1", "10.20.30.40", "255.255.255.255"] {
            let addr: std::net::Ipv4Addr = addr.parse().expect("an address");
            let mut s = String::new();
            ipv4(&mut s, addr).expect("a String takes any text");
            assert_eq!(s, addr.to_string());
        }
    }
}
