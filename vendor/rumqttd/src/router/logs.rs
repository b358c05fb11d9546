use super::Ack;
use slab::Slab;
use tracing::{debug, info, trace};

use crate::protocol::{
    matches, ConnAck, ConnAckProperties, PingResp, PubAck, PubComp, PubRec, PubRel, Publish,
    PublishProperties, SubAck, UnsubAck,
};
use crate::router::{DataRequest, FilterIdx, SubscriptionMeter, Waiters};
use crate::{ConnectionId, Filter, Offset, RouterConfig, Topic};

use crate::segments::{CommitLog, Position};
use crate::Storage;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

type PubWithProp = (Publish, Option<PublishProperties>);

#[derive(Clone)]
pub struct PublishData {
    pub publish: Publish,
    // snigate: boxed. Most messages have none, and inline they made every
    // entry of every log about 150 bytes larger.
    pub properties: Option<Box<PublishProperties>>,
    pub timestamp: Instant,
}

impl From<PubWithProp> for PublishData {
    fn from((publish, properties): PubWithProp) -> Self {
        PublishData {
            publish,
            properties: properties.map(Box::new),
            timestamp: Instant::now(),
        }
    }
}

// TODO: remove this from here
impl Storage for PublishData {
    // snigate: what the entry costs, not only its topic and payload (upstream
    // counted 4 + topic + payload, so a log of small messages held several
    // times the bytes it counted): the record itself, the topic and payload,
    // and the properties with what they point to.
    fn size(&self) -> usize {
        let publish = &self.publish;
        std::mem::size_of::<Self>()
            + publish.topic.len()
            + publish.payload.len()
            + self.properties.as_deref().map_or(0, properties_size)
    }
}

fn properties_size(p: &PublishProperties) -> usize {
    std::mem::size_of::<PublishProperties>()
        + p.response_topic.as_ref().map_or(0, String::len)
        + p.correlation_data.as_ref().map_or(0, |d| d.len())
        + p.content_type.as_ref().map_or(0, String::len)
        + p.user_properties
            .iter()
            .map(|(k, v)| std::mem::size_of::<(String, String)>() + k.len() + v.len())
            .sum::<usize>()
        + p.subscription_identifiers.len() * std::mem::size_of::<usize>()
}

/// snigate: what the router holds, for the embedding broker's metrics.
/// Written by the router's thread only; read by anyone.
#[derive(Debug, Default)]
pub struct RouterStats {
    /// Subscription filters that have a log.
    pub filters: AtomicUsize,
    /// Bytes held by all logs, as [`Storage::size`] counts them.
    pub log_bytes: AtomicU64,
    /// Messages given up to keep the logs within `max_log_bytes`.
    pub evicted_messages: AtomicU64,
    /// Bytes of the topic match cache, as [`cache_entry_size`] counts them.
    pub match_cache_bytes: AtomicUsize,
}

/// What one entry of the topic match cache costs: the topic, its list of
/// filter indexes, and the map's slot with the two headers.
fn cache_entry_size(topic: &str, filters: usize) -> usize {
    64 + topic.len() + filters * std::mem::size_of::<FilterIdx>()
}

/// The filter whose log a subscription reads: `$share/group/filter` reads
/// `filter`'s.
pub fn log_filter(path: &str) -> &str {
    path.strip_prefix("$share/")
        .and_then(|s| s.split_once('/'))
        .map_or(path, |(_group, filter)| filter)
}

/// Stores 'device' data and 'actions' data in native commitlog
/// organized by subscription filter. Device data is replicated
/// while actions data is not
pub struct DataLog {
    pub config: RouterConfig,
    /// Native commitlog data organized by subscription. Contains
    /// device data and actions data logs.
    ///
    /// Device data is replicated while actions data is not.
    /// Also has waiters used to wake connections/replicator tracker
    /// which are caught up with all the data on 'Filter' and waiting
    /// for new data
    pub native: Slab<Data<PublishData>>,
    /// Map of subscription filter name to filter index
    filter_indexes: HashMap<Filter, FilterIdx>,
    retained_publishes: HashMap<Topic, PublishData>,
    /// List of filters associated with a topic
    publish_filters: HashMap<Topic, Vec<FilterIdx>>,
    /// snigate: bytes of `publish_filters`, bounded by
    /// `config.max_match_cache_bytes`.
    match_cache_bytes: usize,
    /// snigate: bytes of all logs, bounded by `config.max_log_bytes`.
    log_bytes: u64,
    stats: Arc<RouterStats>,
}

impl DataLog {
    pub fn new(config: RouterConfig) -> io::Result<DataLog> {
        let mut native = Slab::new();
        let mut filter_indexes = HashMap::new();
        let retained_publishes = HashMap::new();
        let publish_filters = HashMap::new();

        if let Some(warmup_filters) = config.initialized_filters.clone() {
            for filter in warmup_filters {
                let data = Data::new(&filter, &config);

                // Add commitlog to datalog and add datalog index to filter to
                // datalog index map
                let idx = native.insert(data);
                filter_indexes.insert(filter, idx);
            }
        }

        let stats = Arc::new(RouterStats::default());
        stats.filters.store(filter_indexes.len(), Ordering::Relaxed);
        Ok(DataLog {
            config,
            native,
            publish_filters,
            filter_indexes,
            retained_publishes,
            match_cache_bytes: 0,
            log_bytes: 0,
            stats,
        })
    }

    pub fn stats(&self) -> Arc<RouterStats> {
        self.stats.clone()
    }

    /// snigate: the log a new subscription to `filter` reads, made if there is
    /// none and `max_filters` allows another. `None`: refused.
    pub fn subscription_offset(&mut self, filter: &str) -> Option<(FilterIdx, Offset)> {
        let full = self
            .config
            .max_filters
            .is_some_and(|max| self.filter_indexes.len() >= max);
        if full && !self.filter_indexes.contains_key(filter) {
            return None;
        }
        Some(self.next_native_offset(filter))
    }

    /// snigate: the slot of `filter`'s log, if it has one.
    pub fn filter_idx(&self, filter: &str) -> Option<FilterIdx> {
        self.filter_indexes.get(filter).copied()
    }

    /// snigate: one more session (connected, or persistent and away) reads
    /// this log.
    pub fn add_subscriber(&mut self, filter_idx: FilterIdx) {
        if let Some(data) = self.native.get_mut(filter_idx) {
            data.subscribers += 1;
        }
    }

    /// snigate: a subscription that reads `filter`'s log ended: an
    /// UNSUBSCRIBE, a clean session's end, or a persistent session discarded.
    /// With its last subscriber gone, the log is freed (upstream kept every
    /// filter's log until the broker stopped), with its match cache entries.
    pub fn remove_subscriber(&mut self, filter: &str) {
        let Some(&filter_idx) = self.filter_indexes.get(filter) else {
            return;
        };
        let Some(data) = self.native.get_mut(filter_idx) else {
            return;
        };
        data.subscribers = data.subscribers.saturating_sub(1);
        if data.subscribers > 0 {
            return;
        }
        let data = self.native.remove(filter_idx);
        self.filter_indexes.remove(filter);
        self.log_bytes = self.log_bytes.saturating_sub(data.log.size());
        let mut freed = 0;
        self.publish_filters.retain(|topic, filters| {
            let before = filters.len();
            filters.retain(|idx| *idx != filter_idx);
            if filters.is_empty() {
                freed += cache_entry_size(topic, before);
                false
            } else {
                freed += (before - filters.len()) * std::mem::size_of::<FilterIdx>();
                true
            }
        });
        self.match_cache_bytes = self.match_cache_bytes.saturating_sub(freed);
        debug!(filter, "Freed the log of a filter with no subscriber left");
        self.publish_stats();
    }

    /// snigate: whether a read request still names the log it was made for.
    /// A log is freed with its last subscriber and its slot may be reused, so
    /// a request left behind (a notification made earlier in the same batch)
    /// must not read another filter's log.
    pub fn is_live(&self, request: &DataRequest) -> bool {
        self.native
            .get(request.filter_idx)
            .is_some_and(|data| data.filter == log_filter(&request.filter))
    }

    /// Append a publish to the logs of the filters it matched, then keep all
    /// logs within `max_log_bytes`.
    pub fn append_to_filters(
        &mut self,
        filter_idxs: &[FilterIdx],
        publish: &Publish,
        properties: &Option<PublishProperties>,
        notifications: &mut VecDeque<(ConnectionId, DataRequest)>,
    ) -> Offset {
        let mut o = (0, 0);
        for &filter_idx in filter_idxs {
            let Some(data) = self.native.get_mut(filter_idx) else {
                continue;
            };
            let before = data.log.size();
            let publish_data = (publish.clone(), properties.clone());
            let (offset, filter) = data.append(publish_data.into(), notifications);
            debug!(
                pkid = publish.pkid,
                "Appended to commitlog: {}[{}, {})", filter, offset.0, offset.1,
            );
            self.log_bytes = (self.log_bytes + data.log.size()).saturating_sub(before);
            o = offset;
        }
        if let Some(&written) = filter_idxs.last() {
            self.keep_log_budget(written);
        }
        self.publish_stats();
        o
    }

    /// snigate: while all logs together hold more than `max_log_bytes`, give
    /// up the oldest messages: first those of the log just written, if it has
    /// older segments than the one written to (a flood on one filter pays for
    /// itself, at no search), then the largest other log's. The segment just
    /// written to goes last, only when nothing else is left: its newest
    /// message has not reached its subscribers yet.
    fn keep_log_budget(&mut self, written: FilterIdx) {
        let Some(max) = self.config.max_log_bytes else {
            return;
        };
        while self.log_bytes > max {
            let largest_other = self
                .native
                .iter()
                .filter(|(idx, data)| *idx != written && data.log.size() > 0)
                .max_by_key(|(_, data)| data.log.size())
                .map(|(idx, _)| idx);
            let victim = match self.native.get(written) {
                Some(data) if data.log.len() > 1 => written,
                _ => largest_other.unwrap_or(written),
            };
            let (bytes, messages) = self.native[victim].log.drop_oldest();
            if messages == 0 {
                return;
            }
            self.log_bytes = self.log_bytes.saturating_sub(bytes);
            self.stats
                .evicted_messages
                .fetch_add(messages, Ordering::Relaxed);
        }
    }

    fn publish_stats(&self) {
        let stats = &self.stats;
        stats
            .filters
            .store(self.filter_indexes.len(), Ordering::Relaxed);
        stats.log_bytes.store(self.log_bytes, Ordering::Relaxed);
        stats
            .match_cache_bytes
            .store(self.match_cache_bytes, Ordering::Relaxed);
    }

    pub fn meter(&mut self, filter: &str) -> Option<&mut SubscriptionMeter> {
        let data = self.native.get_mut(*self.filter_indexes.get(filter)?)?;
        Some(&mut data.meter)
    }

    pub fn waiters(&self, filter: &Filter) -> Option<&Waiters<DataRequest>> {
        self.native
            .get(*self.filter_indexes.get(filter)?)
            .map(|data| &data.waiters)
    }

    pub fn remove_waiters_for_id(
        &mut self,
        id: ConnectionId,
        filter: &Filter,
    ) -> Option<DataRequest> {
        // snigate: a `$share/group/filter` subscription waits on `filter`'s
        // log, and the same client may wait there for `filter` itself too.
        let data = self
            .native
            .get_mut(*self.filter_indexes.get(log_filter(filter))?)?;
        let waiters = data.waiters.get_mut();

        waiters
            .iter()
            .position(|(conn_id, request)| *conn_id == id && request.filter == *filter)
            .and_then(|index| {
                waiters
                    .swap_remove_back(index)
                    .map(|(_, data_req)| data_req)
            })
    }

    // TODO: Currently returning a Option<Vec> instead of Option<&Vec> due to Rust borrow checker
    // limitation
    pub fn matches(&mut self, topic: &str) -> Option<Vec<usize>> {
        match &self.publish_filters.get(topic) {
            Some(v) => Some(v.to_vec()),
            None => {
                let v: Vec<usize> = self
                    .filter_indexes
                    .iter()
                    .filter(|(filter, _)| matches(topic, filter))
                    .map(|(_, filter_idx)| *filter_idx)
                    .collect();

                if !v.is_empty() {
                    // snigate: a bounded cache. Publishers that keep inventing
                    // topics under a subscribed wildcard grew upstream's until
                    // the broker stopped; at the bound it starts over, and the
                    // topics in use come back into it as they are published.
                    let entry = cache_entry_size(topic, v.len());
                    let max = self.config.max_match_cache_bytes.unwrap_or(usize::MAX);
                    if self.match_cache_bytes + entry > max {
                        self.publish_filters.clear();
                        self.match_cache_bytes = 0;
                    }
                    if entry <= max {
                        self.publish_filters.insert(topic.to_owned(), v.clone());
                        self.match_cache_bytes += entry;
                    }
                    self.stats
                        .match_cache_bytes
                        .store(self.match_cache_bytes, Ordering::Relaxed);
                }

                Some(v)
            }
        }
    }

    pub fn next_native_offset(&mut self, filter: &str) -> (FilterIdx, Offset) {
        let publish_filters = &mut self.publish_filters;
        let filter_indexes = &mut self.filter_indexes;

        let (filter_idx, data) = match filter_indexes.get(filter) {
            Some(idx) => (*idx, self.native.get(*idx).unwrap()),
            None => {
                let data = Data::new(filter, &self.config);

                // Add commitlog to datalog and add datalog index to filter to
                // datalog index map
                let idx = self.native.insert(data);
                self.filter_indexes.insert(filter.to_owned(), idx);

                // Match new filter to existing topics and add to publish_filters if it matches
                for (topic, filters) in publish_filters.iter_mut() {
                    if matches(topic, filter) {
                        filters.push(idx);
                        self.match_cache_bytes += std::mem::size_of::<FilterIdx>();
                    }
                }
                self.publish_stats();

                (idx, self.native.get(idx).unwrap())
            }
        };

        (filter_idx, data.log.next_offset())
    }

    pub fn native_readv(
        &self,
        filter_idx: FilterIdx,
        offset: Offset,
        len: u64,
    ) -> io::Result<(Position, Vec<(PubWithProp, Offset)>)> {
        // unwrap to get index of `self.native` is fine here, because when a new subscribe packet
        // arrives in `Router::handle_device_payload`, it first calls the function
        // `next_native_offset` which creates a new commitlog if one doesn't exist. So any new
        // reads will definitely happen on a valid filter.
        let data = self.native.get(filter_idx).unwrap();
        let mut o = Vec::new();
        // TODO: `readv` is infallible but its current return type does not
        // reflect that. Consequently, this method is also infallible.
        // Encoding this information is important so that calling function
        // has more information on how this method behaves.
        let next = data.log.readv(offset, len, &mut o)?;

        let now = Instant::now();
        o.retain_mut(|(pubdata, _)| {
            // Keep data if no properties exists, which implies no message expiry!
            let Some(properties) = pubdata.properties.as_mut() else {
                return true;
            };

            // Keep data if there is no message_expiry_interval
            let Some(message_expiry_interval) = properties.message_expiry_interval.as_mut() else {
                return true;
            };

            let time_spent = (now - pubdata.timestamp).as_secs() as u32;

            let is_valid = time_spent < *message_expiry_interval;

            // ignore expired messages
            if is_valid {
                // set message_expiry_interval to (original value - time spent waiting in server)
                // ref: https://docs.oasis-open.org/mqtt/mqtt/v5.0/os/mqtt-v5.0-os.html#_Toc3901112
                *message_expiry_interval -= time_spent;
            }

            is_valid
        });

        // no need to include timestamp when returning
        let o = o
            .into_iter()
            .map(|(pubdata, offset)| ((pubdata.publish, pubdata.properties.map(|p| *p)), offset))
            .collect();

        Ok((next, o))
    }

    pub fn shadow(&mut self, filter: &str) -> Option<PubWithProp> {
        let data = self.native.get_mut(*self.filter_indexes.get(filter)?)?;
        data.log
            .last()
            .map(|p| (p.publish, p.properties.map(|p| *p)))
    }

    /// This method is called when the subscriber has caught up with the commit log. In which case,
    /// instead of actively checking for commits in each `Router::run_inner` iteration, we instead
    /// wait and only try reading again when new messages have been added to the commit log. This
    /// methods converts a `DataRequest` (which actively reads the commit log in `Router::consume`)
    /// to a `Waiter` (which only reads when notified).
    pub fn park(&mut self, id: ConnectionId, request: DataRequest) {
        // calling unwrap on index here is fine, because only place this function is called is in
        // `Router::consume` method, when the status after reading from commit log of the same
        // filter as `request` is "done", that is, the subscriber has caught up. In other words,
        // there has been atleast 1 call to `native_readv` for the same filter, which means if
        // `native_readv` hasn't paniced, so this won't panic either.
        let data = self.native.get_mut(request.filter_idx).unwrap();
        data.waiters.register(id, request);
    }

    /// Cleanup a connection from all the waiters
    pub fn clean(&mut self, id: ConnectionId) -> Vec<DataRequest> {
        let mut inflight = Vec::new();
        for (_, data) in self.native.iter_mut() {
            inflight.append(&mut data.waiters.remove(id));
        }

        inflight
    }

    pub fn insert_to_retained_publishes(
        &mut self,
        publish: Publish,
        publish_properties: Option<PublishProperties>,
        topic: Topic,
    ) {
        let pub_with_props = (publish, publish_properties);
        self.retained_publishes.insert(topic, pub_with_props.into());
    }

    pub fn remove_from_retained_publishes(&mut self, topic: Topic) {
        self.retained_publishes.remove(&topic);
    }

    pub fn read_retained_messages(&mut self, filter: &str) -> Vec<PubWithProp> {
        trace!(info = "reading retain msg", filter = &filter);
        let now = Instant::now();

        // discard expired retained messages
        self.retained_publishes.retain(|_, pubdata| {
            // Keep data if no properties exists, which implies no message expiry!
            let Some(properties) = pubdata.properties.as_mut() else {
                return true;
            };

            // Keep data if there is no message_expiry_interval
            let Some(message_expiry_interval) = properties.message_expiry_interval.as_mut() else {
                return true;
            };

            let time_spent = (now - pubdata.timestamp).as_secs() as u32;

            let is_valid = time_spent < *message_expiry_interval;

            // ignore expired messages
            if is_valid {
                // set message_expiry_interval to (original value - time spent waiting in server)
                // ref: https://docs.oasis-open.org/mqtt/mqtt/v5.0/os/mqtt-v5.0-os.html#_Toc3901112
                *message_expiry_interval -= time_spent;
            }

            is_valid
        });

        // no need to include timestamp when returning
        self.retained_publishes
            .iter()
            .filter(|(topic, _)| matches(topic, filter))
            .map(|(_, p)| (p.publish.clone(), p.properties.as_deref().cloned()))
            .collect()
    }
}

pub struct Data<T> {
    filter: Filter,
    pub log: CommitLog<T>,
    pub waiters: Waiters<DataRequest>,
    meter: SubscriptionMeter,
    /// snigate: sessions subscribed to this filter, connected or saved.
    subscribers: usize,
}

impl<T> Data<T>
where
    T: Storage + Clone,
{
    pub fn new(filter: &str, router_config: &RouterConfig) -> Data<T> {
        let mut max_segment_size = router_config.max_segment_size;
        let mut max_mem_segments = router_config.max_segment_count;

        // Override segment config for selected filter
        if let Some(config) = &router_config.custom_segment {
            for (f, segment_config) in config {
                if matches(filter, f) {
                    info!("Overriding segment config for filter: {}", filter);
                    max_segment_size = segment_config.max_segment_size;
                    max_mem_segments = segment_config.max_segment_count;
                }
            }
        }

        // max_segment_size: usize, max_mem_segments: usize
        let log = CommitLog::new(max_segment_size, max_mem_segments).unwrap();

        let waiters = Waiters::with_capacity(10);
        let metrics = SubscriptionMeter::default();
        Data {
            filter: filter.to_owned(),
            log,
            waiters,
            meter: metrics,
            subscribers: 0,
        }
    }

    /// Writes to all the filters that are mapped to this publish topic
    /// and wakes up consumers that are matching this topic (if they exist)
    pub fn append(
        &mut self,
        item: T,
        notifications: &mut VecDeque<(ConnectionId, DataRequest)>,
    ) -> (Offset, &Filter) {
        let size = item.size();
        let offset = self.log.append(item);
        if let Some(mut parked) = self.waiters.take() {
            notifications.append(&mut parked);
        }

        self.meter.count += 1;
        self.meter.total_size += size;

        (offset, &self.filter)
    }
}

/// Acks log for a subscription
#[derive(Debug)]
pub struct AckLog {
    // Committed acks per connection. First pkid, last pkid, data
    committed: VecDeque<Ack>,
    // Recorded qos 2 publishes
    recorded: VecDeque<(Publish, Option<PublishProperties>)>,
}

impl AckLog {
    /// New log
    pub fn new() -> AckLog {
        AckLog {
            // snigate: grown as used, not reserved per link.
            committed: VecDeque::new(),
            recorded: VecDeque::new(),
        }
    }

    pub fn connack(&mut self, id: ConnectionId, ack: ConnAck, props: Option<ConnAckProperties>) {
        let ack = Ack::ConnAck(id, ack, props);
        self.committed.push_back(ack);
    }

    pub fn suback(&mut self, ack: SubAck) {
        let ack = Ack::SubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn puback(&mut self, ack: PubAck) {
        let ack = Ack::PubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn pubrec(&mut self, publish: Publish, props: Option<PublishProperties>, ack: PubRec) {
        let ack = Ack::PubRec(ack);
        self.recorded.push_back((publish, props));
        self.committed.push_back(ack);
    }

    pub fn pubrel(&mut self, ack: PubRel) {
        let ack = Ack::PubRel(ack);
        self.committed.push_back(ack);
    }

    pub fn pubcomp(&mut self, ack: PubComp) -> Option<(Publish, Option<PublishProperties>)> {
        let ack = Ack::PubComp(ack);
        self.committed.push_back(ack);
        self.recorded.pop_front()
    }

    pub fn pingresp(&mut self, ack: PingResp) {
        let ack = Ack::PingResp(ack);
        self.committed.push_back(ack);
    }

    pub fn unsuback(&mut self, ack: UnsubAck) {
        let ack = Ack::UnsubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn readv(&mut self) -> &mut VecDeque<Ack> {
        &mut self.committed
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::router::shared_subs::Strategy;

    #[test]
    fn publish_filters_updating_correctly_on_new_topic_subscription() {
        let config = RouterConfig {
            max_segment_size: 1024,
            max_connections: 10,
            max_segment_count: 10,
            max_outgoing_packet_count: 1024,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Strategy::RoundRobin,
            ..Default::default()
        };
        let mut data = DataLog::new(config).unwrap();
        data.next_native_offset("topic/a");
        data.matches("topic/a");

        data.next_native_offset("topic/+");

        assert_eq!(data.publish_filters.get("topic/a").unwrap().len(), 2);
    }

    #[test]
    fn publish_filters_updating_correctly_on_new_publish() {
        let config = RouterConfig {
            max_segment_size: 1024,
            max_connections: 10,
            max_segment_count: 10,
            max_outgoing_packet_count: 1024,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Strategy::RoundRobin,
            ..Default::default()
        };
        let mut data = DataLog::new(config).unwrap();
        data.next_native_offset("+/+");

        data.matches("topic/a");

        assert_eq!(data.publish_filters.get("topic/a").unwrap().len(), 1);
    }

    // snigate's changes (PATCHES.md).

    fn bounded(max_filters: Option<usize>, max_log_bytes: Option<u64>) -> DataLog {
        DataLog::new(RouterConfig {
            max_segment_size: 1024,
            max_segment_count: 4,
            max_filters,
            max_log_bytes,
            ..Default::default()
        })
        .unwrap()
    }

    fn publish(datalog: &mut DataLog, topic: &str, payload: usize) {
        let publish = Publish::new(topic.to_owned(), "x".repeat(payload), false);
        let filters = datalog.matches(topic).unwrap();
        datalog.append_to_filters(&filters, &publish, &None, &mut VecDeque::new());
    }

    fn request(filter: &str, filter_idx: usize) -> DataRequest {
        DataRequest {
            filter: filter.to_owned(),
            filter_idx,
            qos: 0,
            cursor: (0, 0),
            read_count: 0,
            max_count: 100,
            forward_retained: false,
            group: None,
        }
    }

    #[test]
    fn a_filter_log_is_freed_with_its_last_subscriber() {
        let mut data = bounded(None, None);
        let (a, _) = data.subscription_offset("a/+").unwrap();
        data.add_subscriber(a);
        data.add_subscriber(a);
        publish(&mut data, "a/1", 100);
        assert!(data.log_bytes > 100);
        data.remove_subscriber("a/+");
        assert!(
            data.filter_indexes.contains_key("a/+"),
            "one subscriber left"
        );
        data.remove_subscriber("a/+");
        assert!(data.native.is_empty());
        assert!(data.filter_indexes.is_empty());
        assert!(
            data.publish_filters.is_empty(),
            "its match cache entries go too"
        );
        assert_eq!((data.log_bytes, data.match_cache_bytes), (0, 0));
        assert_eq!(data.stats().filters.load(Ordering::Relaxed), 0);
        // A request left behind does not read the filter that takes the slot.
        let (b, _) = data.subscription_offset("b").unwrap();
        assert_eq!(a, b, "the slab reuses the slot");
        assert!(!data.is_live(&request("a/+", a)));
        assert!(data.is_live(&request("b", b)));
        assert!(data.is_live(&request("$share/group/b", b)));
    }

    #[test]
    fn max_filters_refuses_a_new_filter_and_takes_a_known_one() {
        let mut data = bounded(Some(1), None);
        let (a, _) = data.subscription_offset("a").unwrap();
        data.add_subscriber(a);
        assert!(data.subscription_offset("b").is_none());
        assert!(data.subscription_offset("a").is_some());
        data.remove_subscriber("a");
        assert!(data.subscription_offset("b").is_some(), "room again");
    }

    #[test]
    fn all_logs_together_stay_within_max_log_bytes() {
        let mut data = bounded(None, Some(8 * 1024));
        for filter in ["a", "b", "c"] {
            let (idx, _) = data.subscription_offset(filter).unwrap();
            data.add_subscriber(idx);
        }
        for i in 0..200 {
            publish(&mut data, ["a", "b", "c"][i % 3], 300);
            assert!(data.log_bytes <= 8 * 1024, "{} bytes", data.log_bytes);
            let counted: u64 = data.native.iter().map(|(_, d)| d.log.size()).sum();
            assert_eq!(data.log_bytes, counted);
        }
        assert!(data.stats().evicted_messages.load(Ordering::Relaxed) > 0);
        // Every log keeps its newest messages.
        for (_, log) in data.native.iter() {
            assert!(log.log.last().is_some());
        }
    }

    #[test]
    fn the_message_just_written_is_the_last_to_go() {
        let mut data = bounded(None, Some(4096));
        for filter in ["old", "new"] {
            let (idx, _) = data.subscription_offset(filter).unwrap();
            data.add_subscriber(idx);
        }
        // "old" holds more than "new" will, in one segment each.
        publish(&mut data, "old", 900);
        publish(&mut data, "old", 900);
        publish(&mut data, "new", 1500);
        publish(&mut data, "new", 1500);
        assert!(data.log_bytes <= 4096);
        let new = data.filter_idx("new").unwrap();
        assert!(
            data.native[new].log.last().is_some(),
            "the newest message is kept"
        );
        assert!(data.stats().evicted_messages.load(Ordering::Relaxed) > 0);
        // With nothing else left, the written log gives up its own.
        let mut alone = bounded(None, Some(1024));
        let (idx, _) = alone.subscription_offset("alone").unwrap();
        alone.add_subscriber(idx);
        publish(&mut alone, "alone", 2000);
        assert_eq!(alone.log_bytes, 0);
    }

    #[test]
    fn an_entry_counts_its_record_and_properties() {
        let mut data = bounded(None, None);
        let (a, _) = data.subscription_offset("a").unwrap();
        data.add_subscriber(a);
        publish(&mut data, "a", 10);
        let plain = data.log_bytes;
        assert!(plain as usize >= std::mem::size_of::<PublishData>() + 11);
        let properties = PublishProperties {
            user_properties: vec![("k".repeat(100), "v".repeat(100))],
            ..Default::default()
        };
        let publish = Publish::new("a".to_owned(), "x".repeat(10), false);
        data.append_to_filters(&[a], &publish, &Some(properties), &mut VecDeque::new());
        assert!(data.log_bytes - plain > plain + 200);
    }

    #[test]
    fn the_match_cache_starts_over_at_its_bound() {
        let mut data = DataLog::new(RouterConfig {
            max_segment_size: 1024,
            max_segment_count: 4,
            max_match_cache_bytes: Some(4096),
            ..Default::default()
        })
        .unwrap();
        let (idx, _) = data.subscription_offset("sensors/#").unwrap();
        data.add_subscriber(idx);
        for i in 0..1000 {
            assert_eq!(data.matches(&format!("sensors/{i}")).unwrap(), vec![idx]);
            assert!(data.match_cache_bytes <= 4096);
        }
        assert!(!data.publish_filters.is_empty());
        assert!(data.publish_filters.len() < 1000);
    }

    //     #[test]
    //     fn appends_are_written_to_correct_commitlog() {
    //         pretty_env_logger::init();
    //         let config = RouterConfig {
    //             instant_ack: true,
    //             max_segment_size: 1024,
    //             max_connections: 10,
    //             max_mem_segments: 10,
    //             max_disk_segments: 0,
    //             max_read_len: 1024,
    //             log_dir: None,
    //             dynamic_log: true,
    //         };

    //         let mut data = DataLog::new(config).unwrap();
    //         data.next_native_offset("/devices/2321/actions");
    //         for i in 0..2 {
    //             let publish = Publish::new("/devices/2321/events/imu/jsonarray", QoS::AtLeastOnce, vec![1, 2, 3]);
    //             let v = data.native_append(publish);
    //             dbg!(v);
    //         }

    //         for i in 0..2 {
    //             let publish = Publish::new("/devices/2321/actions", QoS::AtLeastOnce, vec![1, 2, 3]);
    //             let v = data.native_append(publish);
    //             dbg!(v);
    //         }
    //     }
}
