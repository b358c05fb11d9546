//! How a session ends: the reason the log and the metrics give, and the
//! words an MQTT 5 client's DISCONNECT says it in.

use rumqttd::protocol::DisconnectReasonCode;

/// How a session ended, for the log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client sent DISCONNECT.
    Disconnected,
    /// An MQTT 5 client sent DISCONNECT 0x04, Disconnect with Will Message:
    /// its will is published.
    DisconnectedWithWill,
    /// The client closed the connection without DISCONNECT.
    Closed,
    /// Nothing from the client for 1.5 x its keepalive.
    KeepaliveTimeout,
    /// No CONNECT in time.
    ConnectTimeout,
    /// Not MQTT, a malformed packet, or one over the size limit.
    ProtocolError,
    /// The login was refused.
    NotAuthorized,
    /// The broker is stopping.
    Shutdown,
    /// The socket failed.
    NetworkError,
    /// The TLS handshake failed.
    TlsError,
    /// Another connection with the same client id took the session over.
    TakenOver,
    /// A reload removed the user or changed their password.
    Revoked,
    /// The client's queue was full with `queue_full = "disconnect"`.
    SlowConsumer,
    /// `max_connections` clients were connected already.
    ServerBusy,
    /// A PROXY protocol header was expected and not received.
    BadProxyHeader,
    /// A value MQTT does not allow ([`crate::validate`]).
    InvalidInput,
    /// More QoS 2 messages waiting for their PUBREL than the broker's
    /// Receive Maximum (MQTT 5 §3.3.4).
    ReceiveMaximumExceeded,
    /// What the client asked to be held (its topic aliases) did not fit in
    /// the memory budget: DISCONNECT 0x97.
    QuotaExceeded,
    /// A PUBLISH or will above `max_qos`, or retained without
    /// `retain_available` (MQTT 5: 0x9B or 0x9A).
    NotSupported,
}

impl End {
    pub fn label(&self) -> &'static str {
        match self {
            End::Disconnected => "disconnect",
            End::DisconnectedWithWill => "disconnect_with_will",
            End::Closed => "closed",
            End::KeepaliveTimeout => "keepalive_timeout",
            End::ConnectTimeout => "connect_timeout",
            End::ProtocolError => "protocol_error",
            End::NotAuthorized => "not_authorized",
            End::Shutdown => "shutdown",
            End::NetworkError => "network_error",
            End::TlsError => "tls_error",
            End::TakenOver => "taken_over",
            End::Revoked => "credentials_revoked",
            End::SlowConsumer => "slow_consumer",
            End::ServerBusy => "server_busy",
            End::BadProxyHeader => "bad_proxy_header",
            End::InvalidInput => "invalid_input",
            End::ReceiveMaximumExceeded => "receive_maximum_exceeded",
            End::QuotaExceeded => "quota_exceeded",
            End::NotSupported => "not_supported",
        }
    }
}

/// What a DISCONNECT's Reason String says: the reason code in words, for
/// the client's log (MQTT 5 §3.14.2.2.3). The broker's own log says more.
pub(super) fn reason_string(code: DisconnectReasonCode) -> &'static str {
    use DisconnectReasonCode as Code;
    match code {
        Code::MalformedPacket => "malformed packet: a packet or a string in it is not valid MQTT",
        Code::ProtocolError => "protocol error: the packet is valid, but MQTT does not allow it here",
        Code::NotAuthorized => "not authorized: the client's credentials were revoked",
        Code::ServerShuttingDown => "the broker is shutting down",
        Code::KeepAliveTimeout => "keep alive timeout: nothing from the client for 1.5 times its keepalive",
        Code::SessionTakenOver => "session taken over by another connection with the same client id",
        Code::ReceiveMaximumExceeded => {
            "receive maximum exceeded: more QoS 2 messages waiting for PUBREL than the CONNACK allowed"
        }
        Code::TopicAliasInvalid => "topic alias invalid: 0, or above the CONNACK's Topic Alias Maximum",
        Code::PacketTooLarge => "packet too large: over the CONNACK's Maximum Packet Size",
        Code::QuotaExceeded => {
            "quota exceeded: the client's queue or its topic aliases reached the broker's memory limits"
        }
        Code::RetainNotSupported => "retain not supported: the CONNACK said Retain Available 0",
        Code::QoSNotSupported => "QoS not supported: above the CONNACK's Maximum QoS",
        _ => "see the broker's log",
    }
}
