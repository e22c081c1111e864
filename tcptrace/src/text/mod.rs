//! Leaf helpers every stage may use: numbers, times and short strings written into stack
//! buffers without `core::fmt` (the printers' hot path). They import nothing of the crate.
pub mod digits;
pub mod stackstr;
