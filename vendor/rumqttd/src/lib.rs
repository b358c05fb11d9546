// LinkError carries a whole router event; boxing it would change the public API
// that snigate-broker matches on, for an error path taken once per link.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use link::alerts;
pub use link::local;
pub use link::meters;
pub use router::{
    Alert, Forward, IncomingMeter, Meter, Notification, OutgoingMeter, Router, RouterStats,
};
use segments::Storage;

pub use self::router::shared_subs::Strategy;

mod link;
pub mod protocol;
mod router;
mod segments;

pub type ConnectionId = usize;
pub type RouterId = usize;
pub type NodeId = usize;
pub type Topic = String;
pub type Filter = String;
pub type TopicId = usize;
pub type Offset = (u64, u64);
pub type Cursor = (u64, u64);

pub type ClientId = String;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RouterConfig {
    pub max_connections: usize,
    pub max_outgoing_packet_count: u64,
    pub max_segment_size: usize,
    pub max_segment_count: usize,
    pub custom_segment: Option<HashMap<String, SegmentConfig>>,
    pub initialized_filters: Option<Vec<Filter>>,
    // defaults to Round Robin
    #[serde(default)]
    pub shared_subscriptions_strategy: Strategy,
    /// snigate: the most subscription filters with a log; a subscription to
    /// another is answered `QuotaExceeded`. `None`: no bound (upstream).
    #[serde(default)]
    pub max_filters: Option<usize>,
    /// snigate: the most bytes all logs hold together; beyond, the oldest
    /// messages are given up. `None`: no bound (upstream).
    #[serde(default)]
    pub max_log_bytes: Option<u64>,
    /// snigate: the most bytes of the topic match cache; at the bound it
    /// starts over. `None`: no bound (upstream).
    #[serde(default)]
    pub max_match_cache_bytes: Option<usize>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct SegmentConfig {
    pub max_segment_size: usize,
    pub max_segment_count: usize,
}
