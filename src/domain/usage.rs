//! A usage event as the core sees it: already validated at the edge and attributed to a
//! customer. Property values keep their exact text (numbers included), so SUM and MAX read them
//! without floats.

use serde::{Deserialize, Serialize};

use super::ids::Timestamp;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    pub transaction_id: String,
    pub event_type: String,
    pub timestamp: Timestamp,
    /// Property name and its value as text (a JSON number keeps its exact digits).
    pub properties: Vec<(String, String)>,
}

impl UsageEvent {
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}
