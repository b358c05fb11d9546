"""MQTT 5 through snigate-broker with the Eclipse Paho Python client (paho-mqtt 2.x).

usage: paho_v5.py PORT USER PASSWORD
Prints one line per check; exits non-zero on the first failure. Bounded: every
wait has a timeout.
"""
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]


def client(client_id, username, secret):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.username_pw_set(username, secret)
    return c


# A refused login: reason code 0x87, Not authorized.
refused = {}
done = threading.Event()
bad = client("paho-bad", user, password + "-wrong")
bad.on_connect = lambda c, u, flags, reason, props: (refused.setdefault("reason", reason), done.set())
bad.connect("127.0.0.1", port)
bad.loop_start()
if not done.wait(10):
    sys.exit("no CONNACK for the refused login")
bad.loop_stop()
reason = refused["reason"]
if reason.value != 0x87:
    sys.exit(f"refused login: reason {reason.value:#x} {reason}, expected 0x87")
print(f"refused login: {reason.value:#x} {reason}")

# A subscriber and a publisher, MQTT 5, QoS 1.
got = []
received = threading.Event()
subscribed = threading.Event()
sub = client("paho-sub", user, password)
sub.on_connect = lambda c, u, flags, reason, props: c.subscribe("paho/#", qos=1)
sub.on_subscribe = lambda c, u, mid, reasons, props: subscribed.set()
sub.on_message = lambda c, u, msg: (got.append((msg.topic, msg.payload, msg.qos)), received.set())
sub.connect("127.0.0.1", port)
sub.loop_start()
if not subscribed.wait(10):
    sys.exit("no SUBACK")
pub = client("paho-pub", user, password)
pub.connect("127.0.0.1", port)
pub.loop_start()
info = pub.publish("paho/v5", b"hello v5", qos=1)
info.wait_for_publish(10)
if not info.is_published():
    sys.exit("the QoS 1 publish was not acknowledged")
if not received.wait(10):
    sys.exit("the subscriber received nothing")
print(f"received: {got[0]}")
if got[0] != ("paho/v5", b"hello v5", 1):
    sys.exit(f"unexpected message {got[0]}")

# UNSUBSCRIBE: a reason code per filter, 0x11 for one never subscribed.
unsubscribed = {}
unsubacked = threading.Event()
sub.on_unsubscribe = lambda c, u, mid, reasons, props: (unsubscribed.setdefault("reasons", reasons), unsubacked.set())
sub.unsubscribe(["paho/#", "never/subscribed"])
if not unsubacked.wait(10):
    sys.exit("no UNSUBACK")
codes = [r.value for r in unsubscribed["reasons"]]
if codes != [0x00, 0x11]:
    sys.exit(f"UNSUBACK reasons {codes}, expected [0, 0x11]")
print(f"unsubscribed: {codes}")
pub.disconnect()
sub.disconnect()
pub.loop_stop()
sub.loop_stop()
print("ok")
