//! What the events add up to: flows and their close causes, TIME_WAIT, alerts, the
//! exhaustion forecast, keepalive timing, idle connections and flow-table eviction.
pub mod aggregate;
pub mod alert;
pub mod forecast;
pub mod idle;
pub mod listeners;
pub mod nat;
pub mod packets;
pub mod port_failures;
pub mod quantiles;
pub mod snat;
pub mod summary;
pub mod timewait;
