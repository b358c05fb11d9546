"""MQTT 5 checks with the Eclipse Paho Python client (paho-mqtt 2.x), run by
broker/tests/mqtt5.rs against snigate-broker and Mosquitto alike.

usage: mqtt5.py PORT CHECK
Prints what it saw and `ok CHECK` last; exits non-zero on the first failure.
Bounded: every wait has a timeout. Client ids carry the check's name, so the
checks can share a broker.
"""
import socket
import struct
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

PORT, CHECK = int(sys.argv[1]), sys.argv[2]
WAIT = 10


def fail(message):
    sys.exit(f"{CHECK}: {message}")


class Client:
    """A paho client that records what it receives."""

    def __init__(self, client_id, protocol=mqtt.MQTTv5, manual_ack=False):
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            manual_ack=manual_ack,
        )
        self.messages = []
        self.arrived = threading.Condition()
        self.connack = None
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda c, u, mid, reasons, props: self.subscribed.set()
        self.c.on_message = self._on_message

    def _on_connect(self, c, u, flags, reason, props):
        self.connack = (reason, props)
        self.connected.set()

    def _on_message(self, c, u, msg):
        with self.arrived:
            self.messages.append(msg)
            self.arrived.notify_all()

    def connect(self, properties=None, clean_start=True, keepalive=60):
        kwargs = {"properties": properties} if properties is not None else {}
        kwargs["keepalive"] = keepalive
        if self.c._protocol == mqtt.MQTTv5:
            kwargs["clean_start"] = clean_start
        self.c.connect("127.0.0.1", PORT, **kwargs)
        self.c.loop_start()
        if not self.connected.wait(WAIT):
            fail("no CONNACK")
        return self

    def connack_prop(self, name):
        """A property of the CONNACK, or None."""
        return getattr(self.connack[1], name, None) if self.connack else None

    def subscribe(self, topic, qos, identifier=None, **options):
        """Subscribe to `topic`; `options` are SubscribeOptions' (noLocal,
        retainAsPublished, retainHandling), `identifier` its Subscription
        Identifier."""
        self.subscribed.clear()
        props = None
        if identifier is not None:
            props = properties(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=identifier)
        if self.c._protocol == mqtt.MQTTv5:
            self.c.subscribe(topic, options=SubscribeOptions(qos=qos, **options), properties=props)
        else:
            self.c.subscribe(topic, qos=qos)
        if not self.subscribed.wait(WAIT):
            fail(f"no SUBACK for {topic}")

    def settle(self, count, seconds=WAIT):
        """What arrived once `count` have, and nothing more for half a second."""
        self.wait_for(count, seconds)
        time.sleep(0.5)
        with self.arrived:
            return list(self.messages)

    def clear(self):
        with self.arrived:
            self.messages.clear()

    def wait_for(self, count, seconds=WAIT):
        deadline = time.monotonic() + seconds
        with self.arrived:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.arrived.wait(left)
            return list(self.messages)

    def stop(self):
        self.c.disconnect()
        self.c.loop_stop()


def properties(kind, **values):
    p = Properties(kind)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def publish(client, topic, payload, qos=1, retain=False, props=None):
    info = client.c.publish(topic, payload, qos=qos, retain=retain, properties=props)
    if qos > 0:
        info.wait_for_publish(WAIT)
        if not info.is_published():
            fail(f"no acknowledgement for {topic}")


def prop(msg, name):
    return getattr(msg.properties, name, None) if msg.properties is not None else None


def check_properties():
    """[MQTT-3.3.2-4], [MQTT-3.3.2-15], [MQTT-3.3.2-16], [MQTT-3.3.2-17],
    [MQTT-3.3.2-18], [MQTT-3.3.2-20]: what a publisher sends is forwarded
    unchanged, user properties in their order; a 3.1.1 subscriber gets the
    message without them."""
    v5 = Client("properties-v5").connect()
    v5.subscribe("props/t", 1)
    v4 = Client("properties-v4", protocol=mqtt.MQTTv311).connect()
    v4.subscribe("props/t", 1)
    pub = Client("properties-pub").connect()
    users = [("b", "2"), ("a", "1"), ("b", "3")]
    sent = properties(
        PacketTypes.PUBLISH,
        PayloadFormatIndicator=1,
        ContentType="text/plain; charset=utf-8",
        ResponseTopic="props/reply",
        CorrelationData=b"\x00\x01\xff",
        UserProperty=users,
    )
    publish(pub, "props/t", "héllo".encode(), props=sent)
    got = v5.wait_for(1)
    if len(got) != 1:
        fail(f"the MQTT 5 subscriber got {len(got)} messages")
    m = got[0]
    seen = {
        "payload format": prop(m, "PayloadFormatIndicator"),
        "content type": prop(m, "ContentType"),
        "response topic": prop(m, "ResponseTopic"),
        "correlation data": prop(m, "CorrelationData"),
        "user properties": prop(m, "UserProperty"),
        "expiry": prop(m, "MessageExpiryInterval"),
        "subscription ids": prop(m, "SubscriptionIdentifier"),
    }
    print(f"forwarded: {seen}")
    expected = {
        "payload format": 1,
        "content type": "text/plain; charset=utf-8",
        "response topic": "props/reply",
        "correlation data": b"\x00\x01\xff",
        "user properties": users,
        "expiry": None,
        "subscription ids": None,
    }
    if seen != expected:
        fail(f"forwarded {seen}, expected {expected}")
    old = v4.wait_for(1)
    if [(x.topic, x.payload) for x in old] != [("props/t", "héllo".encode())]:
        fail(f"the 3.1.1 subscriber got {[(x.topic, x.payload) for x in old]}")
    print("3.1.1 subscriber: the message, without properties")
    for c in (v5, v4, pub):
        c.stop()


def check_expiry():
    """[MQTT-3.3.2-5]: a message whose expiry interval ran out while it was
    queued for an away client, or while it was retained, is not sent.
    [MQTT-3.3.2-6]: one that is sent carries the interval less the time it
    waited in the server."""
    session = properties(PacketTypes.CONNECT, SessionExpiryInterval=300)
    sub = Client("expiry-sub").connect(session)
    sub.subscribe("exp/#", 1)
    sub.stop()
    pub = Client("expiry-pub").connect()
    for topic, seconds in [("exp/short", 1), ("exp/long", 60), ("exp/none", None)]:
        props = None if seconds is None else properties(PacketTypes.PUBLISH, MessageExpiryInterval=seconds)
        publish(pub, topic, topic.encode(), props=props)
    for topic, seconds in [("expr/short", 1), ("expr/long", 60)]:
        props = properties(PacketTypes.PUBLISH, MessageExpiryInterval=seconds)
        publish(pub, topic, topic.encode(), retain=True, props=props)
    time.sleep(2.5)
    back = Client("expiry-sub").connect(session, clean_start=False)
    got = back.wait_for(2)
    # Nothing more comes.
    time.sleep(0.5)
    got = [(m.topic, prop(m, "MessageExpiryInterval")) for m in back.messages]
    print(f"queued while away: {got}")
    if [t for t, _ in got] != ["exp/long", "exp/none"]:
        fail(f"queued: {got}, expected exp/long then exp/none")
    if not 1 <= got[0][1] <= 58 or got[1][1] is not None:
        fail(f"expiry intervals {got}: 60 less the wait, and none")
    late = Client("expiry-late").connect()
    late.subscribe("expr/#", 1)
    late.wait_for(1)
    time.sleep(0.5)
    retained = [(m.topic, m.retain, prop(m, "MessageExpiryInterval")) for m in late.messages]
    print(f"retained: {retained}")
    if len(retained) != 1 or retained[0][:2] != ("expr/long", True) or not 1 <= retained[0][2] <= 58:
        fail(f"retained: {retained}, expected expr/long alone with its interval less the wait")
    # Clean up the retained message for later runs.
    publish(pub, "expr/long", b"", retain=True)
    for c in (back, late, pub):
        c.stop()


def check_receive_maximum():
    """[MQTT-3.3.4-9]: the server sends no more QoS 1 messages than the
    client's Receive Maximum before it acknowledges them; the rest follow
    as it does, in order."""
    sub = Client("rm-sub", manual_ack=True).connect(properties(PacketTypes.CONNECT, ReceiveMaximum=2))
    sub.subscribe("rm/t", 1)
    pub = Client("rm-pub").connect()
    for n in range(5):
        publish(pub, "rm/t", str(n).encode())
    # What had arrived before each round of acknowledgements: the caller
    # holds each broker to its own (Mosquitto 2.0.11 lets more through once
    # the first are acknowledged; its 2.0.13 ChangeLog: "Various fixes around
    # inflight quota management").
    windows, acked = [], 0
    while acked < 5 and len(windows) < 5:
        sub.wait_for(min(acked + 2, 5))
        time.sleep(0.5)
        got = [int(m.payload) for m in sub.messages]
        windows.append(got)
        if len(got) == acked:
            break
        for m in sub.messages[acked:]:
            sub.c.ack(m.mid, m.qos)
        acked = len(got)
    print(f"windows: {windows}")
    if windows[0] != [0, 1] or windows[-1] != [0, 1, 2, 3, 4]:
        fail(f"received {windows} with a Receive Maximum of 2")
    for c in (sub, pub):
        c.stop()


def check_packet_size():
    """[MQTT-3.1.2-25]: a message larger than the client's Maximum Packet
    Size is not sent to it; the connection stays, and what fits follows."""
    sub = Client("ps-sub").connect(properties(PacketTypes.CONNECT, MaximumPacketSize=128))
    sub.subscribe("ps/#", 1)
    pub = Client("ps-pub").connect()
    publish(pub, "ps/big", b"x" * 500)
    publish(pub, "ps/small", b"fits")
    publish(pub, "ps/big", b"y" * 500, qos=0)
    publish(pub, "ps/small", b"still connected", qos=0)
    sub.wait_for(2)
    time.sleep(0.5)
    got = [(m.topic, m.payload) for m in sub.messages]
    print(f"received: {got}")
    if got != [("ps/small", b"fits"), ("ps/small", b"still connected")]:
        fail(f"received {got}")
    for c in (sub, pub):
        c.stop()


def check_subscription_ids():
    """[MQTT-3.3.4-5]: a copy for each matching subscription, each with its
    own Subscription Identifier, and none for a subscription without one."""
    sub = Client("sid-sub").connect()
    sub.subscribe("sid/#", 1, identifier=1)
    sub.subscribe("sid/+", 1, identifier=268435455)
    sub.subscribe("sid/x", 1)
    pub = Client("sid-pub").connect()
    publish(pub, "sid/x", b"m")
    got = sorted(str(prop(m, "SubscriptionIdentifier")) for m in sub.settle(3))
    print(f"identifiers: {got}")
    if got != ["None", "[1]", "[268435455]"]:
        fail(f"identifiers {got}")
    for c in (sub, pub):
        c.stop()


def check_no_local():
    """[MQTT-3.8.3-3]: a No Local subscription gets nothing its own
    connection publishes, and what others publish as usual."""
    me = Client("nl-me").connect()
    me.subscribe("nl/t", 1, noLocal=True)
    other = Client("nl-other").connect()
    other.subscribe("nl/t", 1)
    publish(me, "nl/t", b"mine")
    publish(other, "nl/t", b"theirs")
    mine = [m.payload for m in me.settle(1)]
    theirs = sorted(m.payload for m in other.settle(2))
    print(f"no local: {mine}; the other: {theirs}")
    if mine != [b"theirs"] or theirs != [b"mine", b"theirs"]:
        fail(f"no local {mine}, other {theirs}")
    for c in (me, other):
        c.stop()


def check_retain_as_published():
    """[MQTT-3.3.1-12], [MQTT-3.3.1-13]: a live copy's retain flag is 0,
    or as published for a Retain As Published subscription."""
    plain = Client("rap-plain").connect()
    plain.subscribe("rap/t", 1)
    kept = Client("rap-kept").connect()
    kept.subscribe("rap/t", 1, retainAsPublished=True)
    pub = Client("rap-pub").connect()
    publish(pub, "rap/t", b"r", retain=True)
    publish(pub, "rap/t", b"", retain=True)
    flags = ([m.retain for m in plain.settle(2)], [m.retain for m in kept.settle(2)])
    print(f"retain flags: {flags}")
    if flags != ([False, False], [True, True]):
        fail(f"retain flags {flags}")
    for c in (plain, kept, pub):
        c.stop()


def check_retain_handling():
    """[MQTT-3.3.1-9], [MQTT-3.3.1-10], [MQTT-3.3.1-11]: retained messages on
    every subscribe (0), only on a new subscription (1), or never (2)."""
    pub = Client("rh-pub").connect()
    publish(pub, "rh/t", b"kept", retain=True)
    sub = Client("rh-sub").connect()
    seen = []
    for handling in (1, 1, 2, 0):
        sub.clear()
        sub.subscribe("rh/t", 1, retainHandling=handling)
        got = sub.settle(1, seconds=1)
        seen.append((handling, [(m.payload, m.retain) for m in got]))
    print(f"retain handling: {seen}")
    expected = [(1, [(b"kept", True)]), (1, []), (2, []), (0, [(b"kept", True)])]
    if seen != expected:
        fail(f"retain handling {seen}")
    publish(pub, "rh/t", b"", retain=True)
    for c in (sub, pub):
        c.stop()


def check_will():
    """[MQTT-3.14.4-3]: DISCONNECT 0x04 publishes the will; 0x00 does not
    ([MQTT-3.1.2-10]). The will's properties go out with it (MQTT 5
    §3.1.3.2; [MQTT-3.1.3-10] for the user properties, in order)."""
    sub = Client("will-sub").connect()
    sub.subscribe("will/#", 1)
    wprops = properties(
        PacketTypes.WILLMESSAGE,
        PayloadFormatIndicator=1,
        MessageExpiryInterval=60,
        ContentType="text/plain",
        ResponseTopic="will/reply",
        CorrelationData=b"\x01",
        UserProperty=[("k", "v"), ("a", "b")],
    )
    reason = mqtt.ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
    for name, code in [("with", reason), ("without", None)]:
        c = Client(f"will-{name}")
        c.c.will_set(f"will/{name}", b"gone", qos=1, properties=wprops)
        c.connect()
        if code is None:
            c.c.disconnect()
        else:
            c.c.disconnect(reasoncode=code)
        c.c.loop_stop()
    got = sub.settle(1)
    seen = [
        (
            m.topic,
            m.payload,
            prop(m, "PayloadFormatIndicator"),
            prop(m, "ContentType"),
            prop(m, "ResponseTopic"),
            prop(m, "CorrelationData"),
            prop(m, "UserProperty"),
            prop(m, "MessageExpiryInterval") is not None and prop(m, "MessageExpiryInterval") <= 60,
        )
        for m in got
    ]
    print(f"wills: {seen}")
    expected = [("will/with", b"gone", 1, "text/plain", "will/reply", b"\x01", [("k", "v"), ("a", "b")], True)]
    if seen != expected:
        fail(f"wills {seen}")
    sub.stop()


# Raw MQTT 5 for what paho will not send: more QoS 2 messages than the
# server's Receive Maximum.
def varint(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def s(text):
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


def varint_at(buf, at):
    """A variable byte integer of `buf` at `at`: its value, and where what
    follows it starts."""
    value, shift = 0, 0
    while True:
        byte = buf[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def read_packet(sock):
    first = sock.recv(1)
    if not first:
        return None
    length, shift = 0, 0
    while True:
        byte = sock.recv(1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            return None
        body += chunk
    return first[0], body


def check_server_receive_maximum():
    """MQTT 5 §3.3.4: the CONNACK's Receive Maximum, and what the server does
    with one QoS 2 message more than it waiting for its PUBREL."""
    sock, body = raw_connect("srm-raw")
    maximum = connack_property(body, 0x21)
    print(f"receive maximum: {maximum}")
    if maximum is None:
        fail("no Receive Maximum in the CONNACK")
    for pkid in range(1, maximum + 2):
        sock.sendall(packet(0x34, s("srm/t") + struct.pack(">H", pkid) + b"\x00" + b"m"))
    answers = []
    sock.settimeout(2)
    try:
        while len(answers) < maximum + 1:
            got = read_packet(sock)
            if got is None:
                answers.append("closed")
                break
            kind, body = got
            name = {0x50: "pubrec", 0xE0: "disconnect"}.get(kind & 0xF0, hex(kind))
            code = body[2] if name == "pubrec" and len(body) > 2 else (body[0] if name == "disconnect" and body else 0)
            answers.append(f"{name} {code:#04x}")
    except socket.timeout:
        answers.append("silence")
    print(f"answers: {answers}")
    sock.close()


def raw_connect(client_id, props=b"", flags=0x02):
    """A raw MQTT 5 connection (clean start unless `flags` says otherwise):
    the socket and the CONNACK's body."""
    sock = socket.create_connection(("127.0.0.1", PORT), timeout=WAIT)
    body = s("MQTT") + bytes([5, flags]) + struct.pack(">H", 60) + varint(len(props)) + props + s(client_id)
    sock.sendall(packet(0x10, body))
    kind, ack = read_packet(sock)
    if kind != 0x20 or ack[1] != 0:
        fail(f"CONNACK {kind:#x} {ack!r}")
    return sock, ack


def connack_property(body, wanted):
    """A two-byte property of a CONNACK body (Receive Maximum 0x21, Topic
    Alias Maximum 0x22), if present."""
    length, at = varint_at(body, 2)
    props, i = body[at : at + length], 0
    sizes = {0x11: 4, 0x13: 2, 0x21: 2, 0x22: 2, 0x24: 1, 0x25: 1, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1}
    while i < len(props):
        ident = props[i]
        i += 1
        if ident == wanted:
            return struct.unpack(">H", props[i : i + 2])[0]
        size = sizes.get(ident)
        if size is None:
            (n,) = struct.unpack(">H", props[i : i + 2])
            i += 2 + n
            if ident == 0x26:
                (n,) = struct.unpack(">H", props[i : i + 2])
                i += 2 + n
        else:
            i += size
    return None


def raw_publish(sock, topic, alias, payload):
    props = b"\x23" + struct.pack(">H", alias)
    sock.sendall(packet(0x30, s(topic) + varint(len(props)) + props + payload))


def answer(sock):
    """What the broker sent next: `disconnect 0x..`, `closed` or `silence`."""
    sock.settimeout(2)
    try:
        got = read_packet(sock)
    except (socket.timeout, ConnectionResetError):
        return "silence"
    if got is None:
        return "closed"
    kind, body = got
    if kind & 0xF0 == 0xE0:
        return f"disconnect {body[0] if body else 0:#04x}"
    return f"{kind:#x}"


def check_topic_alias():
    """MQTT 5 §3.3.2.3.4: a client's alias stands for the topic it was set
    with; one above the CONNACK's Topic Alias Maximum is 0x94
    ([MQTT-3.3.2-9]); an empty topic with an alias never set is a Protocol
    Error (0x82)."""
    sub = Client("ta-sub").connect()
    sub.subscribe("ta/#", 1)
    sock, ack = raw_connect("ta-raw")
    maximum = connack_property(ack, 0x22)
    print(f"topic alias maximum: {maximum}")
    raw_publish(sock, "ta/x", 1, b"set")
    raw_publish(sock, "", 1, b"used")
    raw_publish(sock, "ta/y", 1, b"moved")
    raw_publish(sock, "", 1, b"again")
    got = [(m.topic, m.payload) for m in sub.settle(4)]
    print(f"aliased: {got}")
    raw_publish(sock, "", 2, b"never set")
    print(f"unknown alias: {answer(sock)}")
    sock.close()
    sock, _ = raw_connect("ta-raw2")
    raw_publish(sock, "ta/x", (maximum or 0) + 1, b"over")
    print(f"over the maximum: {answer(sock)}")
    sock.close()
    sub.stop()


def check_topic_alias_out():
    """MQTT 5 §3.3.2.3.4: toward a client with a Topic Alias Maximum, a
    server may send an alias: with the topic the first time, alone after.
    Prints what the client read: (topic, alias) for each PUBLISH."""
    props = b"\x22" + struct.pack(">H", 5)
    sock, _ = raw_connect("tao-raw", props)
    sock.sendall(packet(0x82, struct.pack(">H", 1) + b"\x00" + s("tao/#") + b"\x00"))
    kind, _ = read_packet(sock)
    if kind != 0x90:
        fail(f"no SUBACK: {kind:#x}")
    pub = Client("tao-pub").connect()
    for topic in ["tao/a", "tao/a", "tao/b", "tao/a"]:
        publish(pub, topic, b"m", qos=0)
    seen = []
    for _ in range(4):
        got = read_packet(sock)
        if got is None:
            fail(f"closed after {seen}")
        kind, body = got
        (n,) = struct.unpack(">H", body[:2])
        topic = body[2 : 2 + n].decode()
        length, at = varint_at(body, 2 + n)
        props = body[at : at + length]
        alias = struct.unpack(">H", props[1:3])[0] if props[:1] == b"\x23" else None
        seen.append((topic, alias))
    print(f"read: {seen}")
    sock.close()
    pub.stop()


def raw_connack(client_id, flags=0x02, props=b"", will=b""):
    """A raw MQTT 5 CONNECT: the CONNACK's reason code and body, or
    `closed`."""
    sock = socket.create_connection(("127.0.0.1", PORT), timeout=WAIT)
    body = s("MQTT") + bytes([5, flags]) + struct.pack(">H", 60) + varint(len(props)) + props + s(client_id) + will
    sock.sendall(packet(0x10, body))
    try:
        got = read_packet(sock)
    except (socket.timeout, ConnectionResetError):
        got = None
    sock.close()
    if got is None:
        return "closed", b""
    kind, ack = got
    return f"{ack[1]:#04x}", ack


def will_flags(qos, retain):
    return 0x02 | 0x04 | (qos << 3) | (0x20 if retain else 0)


WILL = b"\x00" + s("w/t") + s("gone")


def check_keepalive():
    """[MQTT-3.2.2-21]: a client that asks for a keepalive above
    `max_keepalive` (100 here), or for none, is given that one in the
    CONNACK's Server Keep Alive; one within it is told nothing."""
    seen = []
    for asked in (0, 60, 200):
        c = Client(f"ka-{asked}").connect(keepalive=asked)
        seen.append((asked, c.connack_prop("ServerKeepAlive")))
        c.stop()
    print(f"server keep alive: {seen}")


def check_max_qos():
    """`max_qos` 1: the CONNACK's Maximum QoS; a SUBSCRIBE at QoS 2 is
    granted 1; a PUBLISH at QoS 2 ends the connection with 0x9B
    ([MQTT-3.2.2-11]); a will at QoS 2 is refused with CONNACK 0x9B
    ([MQTT-3.2.2-12])."""
    c = Client("mq-sub").connect()
    maximum = c.connack_prop("MaximumQoS")
    granted = {}
    done = threading.Event()
    c.c.on_subscribe = lambda cl, u, mid, reasons, props: (granted.setdefault("codes", [r.value for r in reasons]), done.set())
    c.c.subscribe("mq/t", qos=2)
    done.wait(WAIT)
    c.stop()
    sock, _ = raw_connect("mq-raw")
    sock.sendall(packet(0x34, s("mq/t") + struct.pack(">H", 1) + b"\x00" + b"m"))
    publish_answer = answer(sock)
    sock.close()
    will, _ = raw_connack("mq-will", will_flags(2, False), will=WILL)
    print(f"max qos: {maximum}; granted: {granted.get('codes')}; qos 2 publish: {publish_answer}; qos 2 will: {will}")


def check_retain_unavailable():
    """`retain_available` false: the CONNACK's Retain Available 0; a
    retained PUBLISH ends the connection with 0x9A ([MQTT-3.2.2-14]); a
    retained will is refused with CONNACK 0x9A ([MQTT-3.2.2-13])."""
    c = Client("ru-sub").connect()
    available = c.connack_prop("RetainAvailable")
    c.stop()
    sock, _ = raw_connect("ru-raw")
    sock.sendall(packet(0x31, s("ru/t") + b"\x00" + b"m"))
    publish_answer = answer(sock)
    sock.close()
    will, _ = raw_connack("ru-will", will_flags(0, True), will=WILL)
    print(f"retain available: {available}; retained publish: {publish_answer}; retained will: {will}")


def check_auth_method():
    """MQTT 5 §4.12: a CONNECT with an Authentication Method the server
    does not support is refused with CONNACK 0x8C."""
    props = b"\x15" + s("SCRAM-SHA-1")
    code, _ = raw_connack("am-raw", props=props)
    print(f"authentication method: {code}")


def disconnect_reason(sock):
    """The next packet, a DISCONNECT: its code and Reason String (0x1F)."""
    sock.settimeout(2)
    got = read_packet(sock)
    if got is None or got[0] & 0xF0 != 0xE0:
        return f"not a DISCONNECT: {got}"
    body = got[1]
    code, reason = body[0], None
    if len(body) > 1:
        length, i = varint_at(body, 1)
        props = body[i : i + length]
        if props[:1] == b"\x1f":
            (n,) = struct.unpack(">H", props[1:3])
            reason = props[3 : 3 + n].decode()
    return f"{code:#04x} {reason!r}"


def check_reason_string():
    """MQTT 5 §3.14.2.2.3: a DISCONNECT from the server carries a Reason
    String, unless the client's Request Problem Information is 0."""
    for name, props in [("asked", b""), ("not asked", b"\x17\x00")]:
        sock, _ = raw_connect(f"rs-{len(props)}", props)
        raw_publish(sock, "rs/t", 0, b"alias 0")
        print(f"{name}: {disconnect_reason(sock)}")
        sock.close()


def check_will_delay():
    """MQTT 5 §3.1.3.2.2, [MQTT-3.1.3-9]: a will waits for its delay or for
    its session's end, whichever is first, and is not sent when a connection
    takes the session up first. Five clients end uncleanly at once; what
    each will did, by when it arrived: `soon` (under 1.5 s), `late` (1.5 to
    5 s) or `none`."""
    sub = Client("wd-sub").connect()
    sub.subscribe("wd/#", 0)
    cases = {
        # name: (will delay, session expiry, what follows the unclean end)
        "a": (2, 60, None),  # the delay runs out
        "b": (2, 60, "resume"),  # taken up again before the delay
        "c": (30, 2, None),  # the session ends first
        "d": (30, 60, "clean"),  # a new session in its place ends the old one
        "e": (2, 0, None),  # no session kept: it ends with the connection
    }
    socks = {}
    for name, (delay, expiry, _) in cases.items():
        props = b"\x11" + struct.pack(">I", expiry)
        will = b"\x05\x18" + struct.pack(">I", delay) + s(f"wd/{name}") + s("gone")
        sock = socket.create_connection(("127.0.0.1", PORT), timeout=WAIT)
        body = s("MQTT") + bytes([5, 0x02 | 0x04]) + struct.pack(">H", 60) + varint(len(props)) + props
        sock.sendall(packet(0x10, body + s(f"wd-{name}") + will))
        kind, ack = read_packet(sock)
        if kind != 0x20 or ack[1] != 0:
            fail(f"CONNACK for {name}: {ack!r}")
        socks[name] = sock
    start = time.monotonic()
    for sock in socks.values():
        sock.close()
    time.sleep(0.5)
    kept = []
    for name, (_, _, then) in cases.items():
        if then is not None:
            sock, _ = raw_connect(f"wd-{name}") if then == "clean" else raw_connect_resume(f"wd-{name}")
            kept.append(sock)
    arrivals = {}
    while time.monotonic() - start < 5.5:
        with sub.arrived:
            for m in sub.messages:
                arrivals.setdefault(m.topic[3:], time.monotonic() - start)
            sub.arrived.wait(0.1)
    seen = {}
    for name in cases:
        at = arrivals.get(name)
        seen[name] = "none" if at is None else ("soon" if at < 1.5 else "late")
    print(f"will delays: {seen}")
    for sock in kept:
        sock.close()
    sub.stop()


def raw_connect_resume(client_id):
    """A raw MQTT 5 connection that takes its session up (clean start 0),
    asking to keep it a minute."""
    return raw_connect(client_id, b"\x11" + struct.pack(">I", 60), flags=0x00)


CHECKS = {
    "properties": check_properties,
    "expiry": check_expiry,
    "receive-maximum": check_receive_maximum,
    "packet-size": check_packet_size,
    "server-receive-maximum": check_server_receive_maximum,
    "subscription-ids": check_subscription_ids,
    "no-local": check_no_local,
    "retain-as-published": check_retain_as_published,
    "retain-handling": check_retain_handling,
    "topic-alias": check_topic_alias,
    "topic-alias-out": check_topic_alias_out,
    "will": check_will,
    "keepalive": check_keepalive,
    "max-qos": check_max_qos,
    "retain-unavailable": check_retain_unavailable,
    "auth-method": check_auth_method,
    "reason-string": check_reason_string,
    "will-delay": check_will_delay,
}
CHECKS[CHECK]()
print(f"ok {CHECK}")
