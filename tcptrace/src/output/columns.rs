//! Column padding for the text printers without `core::fmt`'s fill, which writes padding one
//! character at a time (the larger part of the cost of a line at line rate).
use std::fmt;

use crate::{
    host::clock::HumanDuration, model::tcp::Process, text::digits::number, text::stackstr::StackStr,
};

const SPACES: &str = "                                                                ";

/// `text`, then spaces up to `width` characters (`{:<width}`).
pub fn left(line: &mut String, text: &str, width: usize) {
    line.push_str(text);
    spaces(line, width.saturating_sub(text.chars().count()));
}

/// Spaces up to `width` characters, then `text` (`{:>width}`).
pub fn right(line: &mut String, text: &str, width: usize) {
    spaces(line, width.saturating_sub(text.chars().count()));
    line.push_str(text);
}

fn spaces(line: &mut String, mut n: usize) {
    while n > 0 {
        let k = n.min(SPACES.len());
        line.push_str(&SPACES[..k]);
        n -= k;
    }
}

/// A pid or `-`, printed without allocating.
pub struct Pid(Option<u32>);

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(pid) => fmt::Display::fmt(&pid, f),
            None => f.pad("-"),
        }
    }
}

impl Pid {
    /// The text, built without `core::fmt`.
    pub fn text(&self) -> StackStr<12> {
        let mut text = StackStr::new();
        let _ = match self.0 {
            Some(pid) => number(&mut text, pid),
            None => fmt::Write::write_str(&mut text, "-"),
        };
        text
    }
}

pub fn pid(owner: &Option<Process>) -> Pid {
    Pid(owner.as_ref().map(|p| p.pid))
}

pub fn comm(owner: &Option<Process>) -> &str {
    owner.as_ref().map_or("-", |p| p.comm.as_str())
}

/// A duration or `?` when unknown, printed without allocating.
pub struct Held(Option<u64>);

impl fmt::Display for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(ns) => fmt::Display::fmt(&HumanDuration(ns), f),
            None => f.pad("?"),
        }
    }
}

impl Held {
    /// The text, built without `core::fmt`.
    pub fn text(&self) -> StackStr<24> {
        let mut text = StackStr::new();
        let _ = match self.0 {
            Some(ns) => HumanDuration(ns).write_to(&mut text),
            None => fmt::Write::write_str(&mut text, "?"),
        };
        text
    }
}

pub fn held(ns: Option<u64>) -> Held {
    Held(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_like_the_format_width() {
        let mut line = String::new();
        left(&mut line, "ab", 4);
        right(&mut line, "7", 3);
        left(&mut line, "héllo", 6);
        right(&mut line, "toolong", 3);
        left(&mut line, "", 70);
        assert_eq!(
            line,
            format!(
                "{:<4}{:>3}{:<6}{:>3}{:<70}",
                "ab", "7", "héllo", "toolong", ""
            )
        );
    }

    #[test]
    fn texts_built_by_hand_read_as_their_display() {
        for p in [Pid(None), Pid(Some(0)), Pid(Some(4_194_304))] {
            assert_eq!(p.text().as_str(), p.to_string());
        }
        for ns in [
            None,
            Some(0),
            Some(99_999),
            Some(1_250_000),
            Some(7_620_000_000_000),
        ] {
            assert_eq!(Held(ns).text().as_str(), Held(ns).to_string());
        }
    }
}
