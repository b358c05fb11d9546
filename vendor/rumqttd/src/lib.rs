//! rumqttd 0.20's MQTT codecs, as snigate-broker uses them (PATCHES.md): the
//! router, segments and links that were the rest of the crate are gone.

pub mod protocol;
