//! The memory budget: what `memory_limit` (or the cgroup's limit) is split
//! into, validated once at load. docs/broker.md ("Memory budget") explains
//! the split and docs/performance.md the per-connection figures behind it.

use super::*;

/// The broker's memory budget, derived once at load from `memory_limit` and the
/// settings that shape it. Everything that grows with what clients do is
/// bounded by one of these; docs/broker.md ("Memory budget") explains the
/// split and docs/performance.md the per-connection figure behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_limit: u64,
    /// Where `memory_limit` came from: "configured", "cgroup" or "default".
    pub memory_limit_source: &'static str,
    /// Most connections open at once, plain or TLS: configured, or what the
    /// connections' share holds of plaintext ones.
    pub max_connections: usize,
    /// The connections' share, bytes: each open connection holds
    /// [`PLAIN_CONNECTION_MEMORY`] or [`TLS_CONNECTION_MEMORY`] of it.
    pub connection_memory: u64,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    pub queue_qos0_messages: bool,
    /// All clients' outbound queues together.
    pub queued_bytes_total: usize,
    pub max_inflight_messages: usize,
    /// Topic aliases an MQTT 5 client may set: what the CONNACK announces.
    pub max_topic_alias: u16,
    pub queue_full: QueueFull,
    pub max_retained_bytes: usize,
    /// The subscription index and the sessions' tables: past it, new
    /// filters and new sessions are refused (docs/broker.md, "Memory
    /// budget").
    pub index_share: u64,
    /// The largest packet the budget allows (a sixteenth of the queues' share).
    pub max_packet_size: usize,
}

/// Without a configured limit or a cgroup: a budget, not a reservation.
const DEFAULT_MEMORY_LIMIT: u64 = 1 << 30;
/// The process before any client: runtime, code, TLS configuration, allocator
/// slack (an idle release build measures about 6 MiB; the rest is margin).
const BASE_MEMORY: u64 = 10 << 20;
/// The least `memory_limit`.
const MIN_MEMORY_LIMIT: u64 = 32 << 20;
/// One plaintext connection's own memory, budgeted: its task, session,
/// buffers' bookkeeping and the registry's records of it. An idle client
/// measures 2.4 to 2.6 KiB (docs/performance.md); what its buffers hold
/// while packets pass is counted in the queues' share as it is held
/// (`Session::account_buffers`), so it is not reserved here.
pub const PLAIN_CONNECTION_MEMORY: u64 = 3 << 10;
/// One TLS connection's: the plaintext one's and rustls' state (about 7 KiB
/// more, idle; 9.7 KiB in all measured).
pub const TLS_CONNECTION_MEMORY: u64 = 12 << 10;

/// The largest in-flight window: every packet id (Mosquitto's maximum too).
pub const MAX_INFLIGHT: usize = 65_535;

impl Limits {
    /// The budget: an eighth for outbound queues, a sixteenth for retained
    /// messages, a quarter for the subscription index and the sessions'
    /// tables, a fixed base for the process, and what is left for
    /// connections.
    pub(super) fn derive(
        file: &BrokerFile,
        max_packet_size: usize,
        cgroup: Option<u64>,
    ) -> Result<Self, (&'static str, String)> {
        let (memory_limit, memory_limit_source) = match (file.memory_limit, cgroup) {
            (Some(Size(limit)), _) => (limit, "configured"),
            (None, Some(limit)) => (limit, "cgroup"),
            (None, None) => (DEFAULT_MEMORY_LIMIT, "default"),
        };
        let too_small = |field, what: &str| {
            Err((
                field,
                format!("{what}: memory_limit ({} MiB) is too small for it", memory_limit >> 20),
            ))
        };
        if memory_limit < MIN_MEMORY_LIMIT {
            return Err((
                "memory_limit",
                format!(
                    "{memory_limit} bytes is too small: at least {} MiB",
                    MIN_MEMORY_LIMIT >> 20
                ),
            ));
        }
        let queued_bytes_total = memory_limit / 8;
        let max_retained_bytes = file.max_retained_bytes.map_or(memory_limit / 16, |s| s.0);
        let index_share = memory_limit / 4;
        let for_connections = memory_limit
            .saturating_sub(BASE_MEMORY)
            .saturating_sub(queued_bytes_total)
            .saturating_sub(max_retained_bytes)
            .saturating_sub(index_share);
        let affordable = usize::try_from(for_connections / PLAIN_CONNECTION_MEMORY).unwrap_or(usize::MAX);
        let max_connections = match file.max_connections {
            Some(0) => return Err(("max_connections", "must be at least 1".to_owned())),
            Some(n) if n > affordable => {
                return Err((
                    "max_connections",
                    format!(
                        "{n} clients need about {} MiB at {} KiB each (TLS: {} KiB); memory_limit ({} MiB) allows {affordable} plaintext or {} TLS: raise memory_limit",
                        (n as u64 * PLAIN_CONNECTION_MEMORY) >> 20,
                        PLAIN_CONNECTION_MEMORY >> 10,
                        TLS_CONNECTION_MEMORY >> 10,
                        memory_limit >> 20,
                        for_connections / TLS_CONNECTION_MEMORY,
                    ),
                ));
            }
            Some(n) => n,
            None => affordable,
        };
        if max_connections == 0 {
            return too_small("memory_limit", "one connection");
        }
        let max_queued_bytes = file.max_queued_bytes.map_or(1 << 20, |s| s.0);
        if max_queued_bytes == 0 {
            return Err((
                "max_queued_bytes",
                "must be more than 0: every queue needs a bound".to_owned(),
            ));
        }
        let max_inflight_messages = file.max_inflight_messages.unwrap_or(20);
        if max_inflight_messages == 0 {
            return Err(("max_inflight_messages", "must be at least 1".to_owned()));
        }
        // Packet ids are 1..=65535 (MQTT §2.3.1): a larger window would
        // look forever for a free id to give the next message.
        if max_inflight_messages > MAX_INFLIGHT {
            return Err((
                "max_inflight_messages",
                format!("must be at most {MAX_INFLIGHT}: a message in flight holds one of the 65,535 packet ids"),
            ));
        }
        let usize_of = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Ok(Self {
            memory_limit,
            memory_limit_source,
            max_connections,
            connection_memory: for_connections,
            max_queued_messages: file.max_queued_messages.unwrap_or(1000),
            max_queued_bytes: usize_of(max_queued_bytes),
            queue_qos0_messages: file.queue_qos0_messages.unwrap_or(false),
            queued_bytes_total: usize_of(queued_bytes_total),
            max_inflight_messages,
            max_topic_alias: file.max_topic_alias.unwrap_or(10),
            queue_full: file.queue_full.unwrap_or_default(),
            max_retained_bytes: usize_of(max_retained_bytes),
            index_share,
            max_packet_size: max_packet_size.min(usize_of(queued_bytes_total / 16)),
        })
    }
}

/// The memory limit of the cgroup this process runs in (v2, then v1), if it
/// has one: what a container's `--memory` or a pod's limit sets.
pub(super) fn read_cgroup_memory_limit() -> Option<u64> {
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok();
    let v1 = || std::fs::read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes").ok();
    let text = v2.or_else(v1)?;
    // "max" (v2) or a page-rounded i64::MAX (v1) mean no limit.
    text.trim().parse::<u64>().ok().filter(|&limit| limit < 1 << 60)
}
