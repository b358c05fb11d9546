use crate::protocol::{
    Filter, LastWill, LastWillProperties, Packet, Publish, QoS, RetainForwardRule, Subscribe,
    Unsubscribe,
};
use crate::router::Ack;
use crate::router::{
    iobufs::{Incoming, Outgoing},
    Connection, Event, Notification, ShadowRequest,
};
use crate::ConnectionId;
use bytes::Bytes;
use flume::r#async::SendFut;
use flume::{Receiver, RecvError, RecvTimeoutError, SendError, Sender, TrySendError};
use parking_lot::lock_api::MutexGuard;
use parking_lot::{Mutex, RawMutex};
use std::pin::Pin;

use std::collections::VecDeque;
use std::mem;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("Unexpected router message")]
    NotConnectionAck,
    #[error("ConnAck error {0}")]
    ConnectionAck(String),
    #[error("Channel try send error")]
    TrySend(#[from] TrySendError<(ConnectionId, Event)>),
    #[error("Channel send error")]
    Send(#[from] SendError<(ConnectionId, Event)>),
    #[error("Channel recv error")]
    Recv(#[from] RecvError),
    #[error("Channel timeout recv error")]
    RecvTimeout(#[from] RecvTimeoutError),
    #[error("Timeout = {0}")]
    Elapsed(#[from] tokio::time::error::Elapsed),
}

// used to build LinkTx and LinkRx
pub struct LinkBuilder<'a> {
    tenant_id: Option<String>,
    client_id: &'a str,
    router_tx: Sender<(ConnectionId, Event)>,
    // true by default
    clean_session: bool,
    last_will: Option<LastWill>,
    last_will_properties: Option<LastWillProperties>,
    // false by default
    dynamic_filters: bool,
    // default to 0, indicating to not use topic alias
    topic_alias_max: u16,
    // snigate: !clean_session by default
    persistent: Option<bool>,
}

impl<'a> LinkBuilder<'a> {
    pub fn new(client_id: &'a str, router_tx: Sender<(ConnectionId, Event)>) -> Self {
        LinkBuilder {
            client_id,
            router_tx,
            tenant_id: None,
            clean_session: true,
            last_will: None,
            last_will_properties: None,
            dynamic_filters: false,
            topic_alias_max: 0,
            persistent: None,
        }
    }

    /// snigate: keep the session when the connection ends, whatever the clean
    /// flag (which then only says whether a saved one is taken up): MQTT 5's
    /// clean start with a session expiry interval, or a session that expires
    /// at disconnect without clean start.
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.persistent = Some(persistent);
        self
    }

    pub fn tenant_id(mut self, tenant_id: Option<String>) -> Self {
        self.tenant_id = tenant_id;
        self
    }

    pub fn last_will(mut self, last_will: Option<LastWill>) -> Self {
        self.last_will = last_will;
        self
    }

    pub fn last_will_properties(
        mut self,
        last_will_properties: Option<LastWillProperties>,
    ) -> Self {
        self.last_will_properties = last_will_properties;
        self
    }

    pub fn topic_alias_max(mut self, max: u16) -> Self {
        self.topic_alias_max = max;
        self
    }

    pub fn clean_session(mut self, clean: bool) -> Self {
        self.clean_session = clean;
        self
    }

    pub fn dynamic_filters(mut self, dynamic_filters: bool) -> Self {
        self.dynamic_filters = dynamic_filters;
        self
    }

    pub fn build(self) -> Result<(LinkTx, LinkRx, Notification), LinkError> {
        // Connect to router
        // Local connections to the router shall have access to all subscriptions
        let mut connection = Connection::new(
            self.tenant_id,
            self.client_id.to_owned(),
            self.clean_session,
            self.dynamic_filters,
        );

        connection
            .last_will(self.last_will, self.last_will_properties)
            .topic_alias_max(self.topic_alias_max);
        connection.persist = self.persistent.unwrap_or(!self.clean_session);
        let incoming = Incoming::new(connection.client_id.to_owned());
        let (outgoing, link_rx) = Outgoing::new(connection.client_id.to_owned());
        let outgoing_data_buffer = outgoing.buffer();
        let incoming_data_buffer = incoming.buffer();

        let event = Event::Connect {
            connection,
            incoming,
            outgoing,
        };

        self.router_tx.send((0, event))?;

        link_rx.recv()?;
        let notification = outgoing_data_buffer.lock().pop_front().unwrap();

        // Right now link identifies failure with dropped rx in router,
        // which is probably ok. We need this here to get id assigned by router
        let id = match notification {
            Notification::DeviceAck(Ack::ConnAck(id, ..)) => id,
            _message => return Err(LinkError::NotConnectionAck),
        };

        let tx = LinkTx::new(id, self.router_tx.clone(), incoming_data_buffer);
        let rx = LinkRx::new(id, self.router_tx, link_rx, outgoing_data_buffer);
        Ok((tx, rx, notification))
    }
}

pub struct LinkTx {
    pub(crate) connection_id: ConnectionId,
    router_tx: Sender<(ConnectionId, Event)>,
    recv_buffer: Arc<Mutex<VecDeque<Packet>>>,
}

impl LinkTx {
    pub fn new(
        connection_id: ConnectionId,
        router_tx: Sender<(ConnectionId, Event)>,
        recv_buffer: Arc<Mutex<VecDeque<Packet>>>,
    ) -> LinkTx {
        LinkTx {
            connection_id,
            router_tx,
            recv_buffer,
        }
    }

    pub fn buffer(&self) -> MutexGuard<'_, RawMutex, VecDeque<Packet>> {
        self.recv_buffer.lock()
    }

    /// Send raw device data
    fn push(&mut self, data: Packet) -> Result<usize, LinkError> {
        let len = {
            let mut buffer = self.recv_buffer.lock();
            buffer.push_back(data);
            buffer.len()
        };

        self.router_tx
            .send((self.connection_id, Event::DeviceData))?;

        Ok(len)
    }

    /// Send raw device data
    pub async fn send(&mut self, data: Packet) -> Result<usize, LinkError> {
        let len = {
            let mut buffer = self.recv_buffer.lock();
            buffer.push_back(data);
            buffer.len()
        };

        // snigate: waits without blocking the thread. Upstream's blocking
        // `send` here stalled an async runtime's worker (all of a 2-core
        // broker's clients, with two such waits) while the router's queue
        // was full.
        // Bound first: the scrutinee of an `if let` (a `Result` whose error
        // holds an `Event`) would live across the await.
        let wait = self.wake_router()?;
        if let Some(wait) = wait {
            wait.await?;
        }

        Ok(len)
    }

    /// snigate: tell the router this link has data; when its queue is full,
    /// the wait for room, boxed. Made here, outside the async `send`: flume's
    /// send future holds a whole `Event` (over 1 KB), which would otherwise
    /// take room in every caller's future for its life.
    #[allow(clippy::type_complexity)]
    fn wake_router(
        &self,
    ) -> Result<Option<Pin<Box<SendFut<'static, (ConnectionId, Event)>>>>, LinkError> {
        notify_router(&self.router_tx, self.connection_id, Event::DeviceData)
    }

    /// snigate: `send` that never waits: fails when the router's queue is
    /// full. For a session's last words from a drop guard, which cannot wait.
    pub fn try_send(&mut self, data: Packet) -> Result<usize, LinkError> {
        self.try_push(data)
    }

    fn try_push(&mut self, data: Packet) -> Result<usize, LinkError> {
        let len = {
            let mut buffer = self.recv_buffer.lock();
            buffer.push_back(data);
            buffer.len()
        };

        self.router_tx
            .try_send((self.connection_id, Event::DeviceData))?;
        Ok(len)
    }

    /// Sends a MQTT Publish to the router
    pub fn publish<S, V>(&mut self, topic: S, payload: V) -> Result<usize, LinkError>
    where
        S: Into<Bytes>,
        V: Into<Bytes>,
    {
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            pkid: 0,
            payload: payload.into(),
        };

        let len = self.push(Packet::Publish(publish, None))?;
        Ok(len)
    }

    /// Sends a MQTT Publish to the router
    pub fn try_publish<S, V>(&mut self, topic: S, payload: V) -> Result<usize, LinkError>
    where
        S: Into<Bytes>,
        V: Into<Bytes>,
    {
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            pkid: 0,
            payload: payload.into(),
        };

        let len = self.try_push(Packet::Publish(publish, None))?;
        // TODO: Remote item in buffer after failure and write unittest
        Ok(len)
    }

    /// Sends a MQTT Subscribe to the eventloop
    pub fn subscribe<S: Into<String>>(&mut self, filter: S) -> Result<usize, LinkError> {
        let filters = vec![Filter {
            path: filter.into(),
            qos: QoS::AtMostOnce,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::Never,
        }];

        let subscribe = Subscribe { pkid: 0, filters };

        let len = self.push(Packet::Subscribe(subscribe, None))?;
        Ok(len)
    }

    /// Sends a MQTT Subscribe to the eventloop
    pub fn try_subscribe<S: Into<String>>(&mut self, filter: S) -> Result<usize, LinkError> {
        let filters = vec![Filter {
            path: filter.into(),
            qos: QoS::AtMostOnce,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::Never,
        }];

        let subscribe = Subscribe { pkid: 0, filters };

        let len = self.try_push(Packet::Subscribe(subscribe, None))?;
        Ok(len)
    }

    /// Sends a MQTT Unsubscribe to the eventloop
    pub fn unsubscribe<S: Into<String>>(&mut self, filter: S) -> Result<usize, LinkError> {
        let unsubscribe = Unsubscribe {
            pkid: 0,
            filters: vec![filter.into()],
        };

        let len = self.push(Packet::Unsubscribe(unsubscribe, None))?;
        Ok(len)
    }

    /// Sends a MQTT Unsubscribe to the eventloop
    pub fn try_unsubscribe<S: Into<String>>(&mut self, filter: S) -> Result<usize, LinkError> {
        let unsubscribe = Unsubscribe {
            pkid: 0,
            filters: vec![filter.into()],
        };

        let len = self.try_push(Packet::Unsubscribe(unsubscribe, None))?;
        Ok(len)
    }

    /// Request to get device shadow
    pub fn shadow<S: Into<String>>(&mut self, filter: S) -> Result<(), LinkError> {
        let message = Event::Shadow(ShadowRequest {
            filter: filter.into(),
        });

        self.router_tx.try_send((self.connection_id, message))?;
        Ok(())
    }
}

#[derive(Debug)]
pub struct LinkRx {
    connection_id: ConnectionId,
    router_tx: Sender<(ConnectionId, Event)>,
    router_rx: Receiver<()>,
    send_buffer: Arc<Mutex<VecDeque<Notification>>>,
    cache: VecDeque<Notification>,
}

impl LinkRx {
    pub fn new(
        connection_id: ConnectionId,
        router_tx: Sender<(ConnectionId, Event)>,
        router_rx: Receiver<()>,
        outgoing_data_buffer: Arc<Mutex<VecDeque<Notification>>>,
    ) -> LinkRx {
        LinkRx {
            connection_id,
            router_tx,
            router_rx,
            send_buffer: outgoing_data_buffer,
            cache: VecDeque::new(),
        }
    }

    pub fn id(&self) -> ConnectionId {
        self.connection_id
    }

    pub fn recv(&mut self) -> Result<Option<Notification>, LinkError> {
        // Read from cache first
        // One router_rx trigger signifies a bunch of notifications. So we
        // should always check cache first
        match self.take_cached() {
            Some(v) => Ok(Some(v)),
            None => {
                // If cache is empty, check for router trigger and get fresh notifications
                self.router_rx.recv()?;
                // Collect 'all' the data in the buffer after a notification.
                // Notification means fresh data which isn't previously collected
                mem::swap(&mut *self.send_buffer.lock(), &mut self.cache);
                Ok(self.take_cached())
            }
        }
    }

    pub fn recv_deadline(&mut self, deadline: Instant) -> Result<Option<Notification>, LinkError> {
        // Read from cache first
        // One router_rx trigger signifies a bunch of notifications. So we
        // should always check cache first
        match self.take_cached() {
            Some(v) => Ok(Some(v)),
            None => {
                // If cache is empty, check for router trigger and get fresh notifications
                self.router_rx.recv_deadline(deadline)?;
                mem::swap(&mut *self.send_buffer.lock(), &mut self.cache);
                Ok(self.take_cached())
            }
        }
    }

    pub async fn next(&mut self) -> Result<Option<Notification>, LinkError> {
        // Read from cache first
        // One router_rx trigger signifies a bunch of notifications. So we
        // should always check cache first
        match self.take_cached() {
            Some(v) => Ok(Some(v)),
            None => {
                // If cache is empty, check for router trigger and get fresh notifications
                self.router_rx.recv_async().await?;
                // Collect 'all' the data in the buffer after a notification.
                // Notification means fresh data which isn't previously collected
                mem::swap(&mut *self.send_buffer.lock(), &mut self.cache);
                Ok(self.take_cached())
            }
        }
    }

    /// snigate: the next cached notification. An idle link keeps no queue:
    /// the one its CONNACK or an occasional message grew (about 1 KB) is freed
    /// once emptied; a busy link's larger one is kept, swapped back and forth
    /// with the router's.
    fn take_cached(&mut self) -> Option<Notification> {
        let next = self.cache.pop_front();
        if self.cache.is_empty() && self.cache.capacity() <= crate::router::SMALL_QUEUE {
            self.cache = VecDeque::new();
        }
        next
    }

    pub fn ready(&self) -> Result<(), LinkError> {
        self.router_tx.send((self.connection_id, Event::Ready))?;
        Ok(())
    }

    pub async fn wake(&self) -> Result<(), LinkError> {
        // snigate: as `LinkTx::send`: flume's send future, with its `Event`,
        // is made only when the router's queue is full, and boxed; awaited
        // inline it took room in every session's future for its life.
        let wait = notify_router(&self.router_tx, self.connection_id, Event::Ready)?;
        if let Some(wait) = wait {
            wait.await?;
        }
        Ok(())
    }
}

/// snigate: send `event` to the router for link `id`; when its queue is full,
/// the wait for room, boxed (see `LinkTx::wake_router`).
#[allow(clippy::type_complexity)]
fn notify_router(
    router_tx: &Sender<(ConnectionId, Event)>,
    id: ConnectionId,
    event: Event,
) -> Result<Option<Pin<Box<SendFut<'static, (ConnectionId, Event)>>>>, LinkError> {
    match router_tx.try_send((id, event)) {
        Ok(()) => Ok(None),
        Err(TrySendError::Full(event)) => {
            Ok(Some(Box::pin(router_tx.clone().into_send_async(event))))
        }
        Err(TrySendError::Disconnected(event)) => Err(SendError(event).into()),
    }
}

/// snigate: end the saved session of `client_id` unless it is connected: a
/// persistent session whose client stayed away past its expiry. Events reach
/// the router in order, so a client that connects after this was sent starts
/// afresh. Never blocks: with the router's queue full it fails, to be tried
/// again.
pub fn discard_session(
    router_tx: &Sender<(ConnectionId, Event)>,
    client_id: &str,
) -> Result<(), LinkError> {
    router_tx.try_send((0, Event::DiscardSession(client_id.to_owned())))?;
    Ok(())
}

/// snigate: panic the router's thread (see `Event::InjectPanic`).
#[cfg(feature = "fault-injection")]
pub fn inject_panic(router_tx: &Sender<(ConnectionId, Event)>) -> Result<(), LinkError> {
    router_tx.try_send((0, Event::InjectPanic))?;
    Ok(())
}

#[cfg(test)]
mod test {
    use super::LinkTx;
    use flume::bounded;
    use parking_lot::Mutex;
    use std::{collections::VecDeque, sync::Arc, thread};

    #[test]
    fn push_sends_all_data_and_notifications_to_router() {
        let (router_tx, router_rx) = bounded(10);
        let mut buffers = Vec::new();
        const CONNECTIONS: usize = 1000;
        const MESSAGES_PER_CONNECTION: usize = 100;

        for i in 0..CONNECTIONS {
            let buffer = Arc::new(Mutex::new(VecDeque::new()));
            let mut link_tx = LinkTx::new(i, router_tx.clone(), buffer.clone());
            buffers.push(buffer);
            thread::spawn(move || {
                for _ in 0..MESSAGES_PER_CONNECTION {
                    link_tx.publish("hello/world", vec![1, 2, 3]).unwrap();
                }
            });
        }

        // Router should receive notifications from all the connections
        for _ in 0..CONNECTIONS * MESSAGES_PER_CONNECTION {
            let _v = router_rx.recv().unwrap();
        }

        // Every connection has expected number of messages
        for item in buffers.iter().take(CONNECTIONS) {
            assert_eq!(item.lock().len(), MESSAGES_PER_CONNECTION);
        }

        // TODO: Write a similar test to benchmark buffer vs channels
    }
}
#[cfg(test)]
mod snigate_tests {
    use crate::protocol::{Packet, PingReq};

    /// Every client's session holds this future inside its own for its life
    /// (its largest await): waiting for the router must not add an `Event`
    /// (over 1 KB) to it, as an unbound temporary did (1,248 bytes).
    #[test]
    fn the_send_future_holds_little_beyond_its_packet() {
        let (tx, _rx) = flume::bounded(10);
        let mut link = super::LinkTx::new(0, tx, Default::default());
        let send = link.send(Packet::PingReq(PingReq));
        let size = std::mem::size_of_val(&send);
        assert!(size <= std::mem::size_of::<Packet>() + 64, "{size} bytes");
    }

    /// Every session waits on this inside its relay: it must not hold an
    /// `Event` (840 bytes) while the router's queue has room.
    #[test]
    fn the_wake_future_is_small() {
        let (router_tx, _router_rx) = flume::bounded(10);
        let (_wake_tx, wake_rx) = flume::bounded(10);
        let link = super::LinkRx::new(0, router_tx, wake_rx, Default::default());
        let wake = link.wake();
        let size = std::mem::size_of_val(&wake);
        assert!(size <= 128, "{size} bytes");
    }

    /// An idle link keeps no notification queue once it has taken what came;
    /// a busy one keeps the queue it grew.
    #[test]
    fn an_emptied_small_cache_is_freed_and_a_large_one_kept() {
        use crate::protocol::PingResp;
        use crate::router::Ack;
        use crate::Notification;
        let (router_tx, _router_rx) = flume::bounded(10);
        let (wake_tx, wake_rx) = flume::bounded(10);
        let buffer: std::sync::Arc<parking_lot::Mutex<std::collections::VecDeque<Notification>>> =
            Default::default();
        let mut link = super::LinkRx::new(0, router_tx, wake_rx, buffer.clone());
        let ping = || Notification::DeviceAck(Ack::PingResp(PingResp));

        buffer.lock().push_back(ping());
        wake_tx.send(()).unwrap();
        assert!(link.recv().unwrap().is_some());
        assert_eq!(link.cache.capacity(), 0, "the CONNACK's queue is gone");

        buffer.lock().extend((0..32).map(|_| ping()));
        wake_tx.send(()).unwrap();
        for _ in 0..32 {
            assert!(link.recv().unwrap().is_some());
        }
        assert!(link.cache.capacity() >= 32, "a busy link keeps its queue");
    }
}
