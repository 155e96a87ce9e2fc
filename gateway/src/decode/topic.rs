//! Device topics: `cs/v1/{zone}/{kind}/{device}/{up|status}` (DESIGN.md, MQTT).

/// Which stream of a device a topic belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// `.../up`: reports.
    Up,
    /// `.../status`: retained online/offline.
    Status,
}

/// The parts of a device topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceTopic<'a> {
    /// District code.
    pub zone: &'a str,
    /// Profile kind.
    pub kind: &'a str,
    /// Device id.
    pub device: &'a str,
    /// Which stream.
    pub stream: Stream,
}

/// Parses `cs/v1/{zone}/{kind}/{device}/{up|status}`.
pub fn parse_topic(topic: &str) -> Option<DeviceTopic<'_>> {
    let rest = topic.strip_prefix("cs/v1/")?;
    let (zone, rest) = rest.split_once('/')?;
    let (kind, rest) = rest.split_once('/')?;
    let (device, stream) = rest.split_once('/')?;
    let stream = match stream {
        "up" => Stream::Up,
        "status" => Stream::Status,
        _ => return None, // also a topic with more levels
    };
    Some(DeviceTopic {
        zone,
        kind,
        device,
        stream,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_parse_and_junk_does_not() {
        let t = parse_topic("cs/v1/360702/uhf-rfid-gate/gz-s4-g1/up").unwrap();
        assert_eq!(
            (t.zone, t.kind, t.device, t.stream),
            ("360702", "uhf-rfid-gate", "gz-s4-g1", Stream::Up)
        );
        assert!(parse_topic("cs/v1/360702/uhf-rfid-gate/gz-s4-g1/down").is_none());
        assert!(parse_topic("cs/v1/360702/uhf-rfid-gate/gz-s4-g1/up/extra").is_none());
        assert!(parse_topic("cs/v2/360702/k/d/up").is_none());
    }
}
