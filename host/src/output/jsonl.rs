//! Palisade's own alert format: one JSON object per line with the alert, the plugin that raised
//! it, and the full triggering event in the replay schema (docs/events.md), so an alert file can
//! be fed back through `palisade replay` or diffed in golden tests. Owns only the serde view of
//! that line; framing and buffering live in `output`.

use std::fmt;
use std::sync::Arc;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{dedup_fields, Rfc3339Ns};
use crate::alert::{Alert, Origin, Priority};
use crate::event::Event;

/// The serialised shape. Key order here is the order on the line.
#[derive(Serialize)]
struct AlertLine<'a> {
    id: &'a str,
    time: Rfc3339Ns,
    ts_ns: u64,
    rule: &'a str,
    priority: Priority,
    message: &'a str,
    tags: &'a [String],
    fields: OrderedFields<'a>,
    plugin: &'a Origin,
    hostname: &'a str,
    event: Option<&'a Event>,
}

/// A plugin's key/value list as a JSON object in the plugin's order.
struct OrderedFields<'a>(Vec<(&'a str, &'a str)>);

impl Serialize for OrderedFields<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// Appends `alert` as one JSON object (no newline) to `buf`.
pub fn write_alert(buf: &mut Vec<u8>, alert: &Alert) -> Result<(), serde_json::Error> {
    let line = AlertLine {
        id: &alert.id,
        time: Rfc3339Ns(alert.ts_ns),
        ts_ns: alert.ts_ns,
        rule: &alert.rule,
        priority: alert.priority,
        message: &alert.message,
        tags: &alert.tags,
        fields: OrderedFields(dedup_fields(&alert.fields)),
        plugin: &alert.plugin,
        hostname: &alert.hostname,
        event: alert.event.as_deref(),
    };
    serde_json::to_writer(buf, &line)
}

/// The owned shape read back by [`parse_alert`]. `time` is derived from `ts_ns` and ignored.
#[derive(Deserialize)]
struct OwnedAlertLine {
    id: String,
    ts_ns: u64,
    rule: String,
    priority: Priority,
    message: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    fields: OwnedFields,
    plugin: Origin,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    event: Option<Event>,
}

/// Reads a JSON object into an ordered key/value list (serde_json's map would sort it).
#[derive(Default)]
struct OwnedFields(Vec<(String, String)>);

impl<'de> Deserialize<'de> for OwnedFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = OwnedFields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OwnedFields, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry::<String, String>()? {
                    fields.push(entry);
                }
                Ok(OwnedFields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// Parses one line written by [`write_alert`] back into an [`Alert`] (golden tests, tooling).
pub fn parse_alert(line: &str) -> Result<Alert, serde_json::Error> {
    let owned: OwnedAlertLine = serde_json::from_str(line)?;
    Ok(Alert {
        id: owned.id,
        ts_ns: owned.ts_ns,
        rule: owned.rule,
        priority: owned.priority,
        message: owned.message,
        tags: owned.tags,
        fields: owned.fields.0,
        plugin: owned.plugin,
        hostname: owned.hostname,
        event: owned.event.map(Arc::new),
    })
}
