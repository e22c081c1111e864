//! What a bench run measured: one row per mode, and the run's other figures (written as
//! JSON and printed as the table).
use serde::Serialize;

use super::{bulk, steady};

#[derive(Serialize, Debug)]
pub(super) struct ModeRow {
    pub(super) mode: String,
    pub(super) command: String,
    pub(super) pairs: usize,
    pub(super) off_conn_per_s: Vec<f64>,
    pub(super) on_conn_per_s: Vec<f64>,
    pub(super) ratio_median: f64,
    pub(super) ratio_min: f64,
    pub(super) ratio_max: f64,
    pub(super) state_events_per_s: f64,
    /// Records lost to a full ring buffer, and events the kernel skipped (None: not measured).
    pub(super) lost_ring: Option<u64>,
    pub(super) lost_skipped: Option<u64>,
    pub(super) user_cpu_ns_per_event: f64,
    pub(super) peak_rss_kib: u64,
    /// Kernel time of the tracer's own programs per connection (bpf_stats, one flat-out
    /// round of its own), its multiple of the empty hook's in the same run, and by program.
    pub(super) kernel_ns_per_connection: Option<f64>,
    pub(super) kernel_x_empty_hook: Option<f64>,
    /// Its multiple of the hash-state probe's in the same run (the floor a per-socket state
    /// costs: issue 25's finding).
    pub(super) kernel_x_hash_probe: Option<f64>,
    /// Each pair's multiple of the probe (its round and the probe's, seconds apart); the
    /// median is `kernel_x_hash_probe`. Empty for the floor and the probes.
    pub(super) kernel_x_probe_pairs: Vec<f64>,
    /// Each round's multiple of the probe attached beside the row in that same round (both
    /// programs on every transition of the same seconds). Empty as above.
    pub(super) kernel_x_probe_same_round: Vec<f64>,
    /// Program runs per connection (every hook of the mode), and what that many runs of the
    /// empty program would cost as a multiple of the empty hook's time: the part of the
    /// multiple that is the number of hooks run, before any of them does any work.
    pub(super) kernel_runs_per_connection: Option<f64>,
    pub(super) kernel_runs_x_empty_hook: Option<f64>,
    pub(super) kernel_by_program: Vec<steady::ProgramCost>,
    /// Connections made in that round.
    pub(super) kernel_round_connections: u64,
}

#[derive(Serialize, Debug, Default)]
pub(super) struct Results {
    pub(super) machine: String,
    pub(super) kernel: String,
    pub(super) modes: Vec<ModeRow>,
    pub(super) kernel_ns_per_event: Option<f64>,
    /// inet_sock_set_state's own cost per transition.
    pub(super) kernel_ns_per_transition: Option<f64>,
    /// The same with the flow table allocated on demand.
    pub(super) kernel_ns_per_transition_on_demand: Option<f64>,
    /// The same with flows in socket-local storage.
    pub(super) kernel_ns_per_transition_socket: Option<f64>,
    pub(super) kernel_programs: Vec<steady::ProgramCost>,
    /// ns per run of an empty hook and of the flow-state probes (sk_storage, hash).
    pub(super) flow_state_probes: Vec<steady::ProgramCost>,
    pub(super) cpu_percent_at_10k: Option<f64>,
    pub(super) steady_cpu: Vec<steady::SteadyCpu>,
    /// Each mode: the highest tried rate with nothing lost (ring or kernel-skipped).
    pub(super) lossless: Vec<steady::LosslessRate>,
    pub(super) bytes_per_tracked_flow: Option<f64>,
    /// The default table: preallocated kernel memory per slot of --max-flows.
    pub(super) bytes_per_preallocated_flow: Option<f64>,
    /// Flows in socket-local storage: kernel memory (slab and per-CPU) per live socket
    /// beyond what the same sockets take untraced.
    pub(super) bytes_per_socket_flow: Option<f64>,
    pub(super) replay_events_per_s: Option<f64>,
    pub(super) replay_render_all_events_per_s: Option<f64>,
    /// `tcptrace report` of the record row's files: records/s rendered as flows, and with
    /// every record printed (states), one core.
    pub(super) report_flows_records_per_s: Option<f64>,
    pub(super) report_states_records_per_s: Option<f64>,
    /// Bytes the record row wrote per record.
    pub(super) record_bytes_per_record: Option<f64>,
    /// Each mode's program runs a second under bulk transfer (no connection opens or closes).
    pub(super) bulk: Vec<bulk::BulkRow>,
}
