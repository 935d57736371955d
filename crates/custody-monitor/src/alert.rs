//! Alerts: one JSON document per line on stdout, appended to the state directory, and posted
//! to a webhook when one is configured.

use serde::{Deserialize, Serialize};

use crate::state::StateDir;

/// How bad an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The log itself misbehaved: fork, rewrite, truncation, bad signature.
    Critical,
    /// A rule fired on what the log records.
    Warning,
    /// Worth knowing, e.g. the outcome of a policy replay.
    Info,
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// When the monitor raised it (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub time: time::OffsetDateTime,
    /// How bad.
    pub severity: Severity,
    /// A stable name: `fork`, `bulk-read`, `policy-replay`, ...
    pub alert: String,
    /// A sentence for people.
    pub message: String,
    /// The log entry it is about, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// The time of the entry or window it is about (RFC 3339), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// Structured details.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl Alert {
    /// An alert raised now.
    pub fn new(severity: Severity, alert: &str, message: impl Into<String>) -> Alert {
        Alert {
            time: time::OffsetDateTime::now_utc(),
            severity,
            alert: alert.to_owned(),
            message: message.into(),
            index: None,
            at: None,
            details: serde_json::Value::Null,
        }
    }

    /// The same alert about entry `index`.
    pub fn at_index(mut self, index: u64) -> Alert {
        self.index = Some(index);
        self
    }

    /// The same alert about the moment `at`.
    pub fn at_time(mut self, at: time::OffsetDateTime) -> Alert {
        self.at = at.format(&time::format_description::well_known::Rfc3339).ok();
        self
    }

    /// The same alert with structured details.
    pub fn with_details(mut self, details: serde_json::Value) -> Alert {
        self.details = details;
        self
    }
}

/// Where alerts go.
#[derive(Debug, Clone)]
pub struct AlertSink {
    state: Option<StateDir>,
    webhook: Option<String>,
    client: reqwest::Client,
}

impl AlertSink {
    /// Alerts to stdout, to `state`'s `alerts.jsonl` and, if given, POSTed as JSON to `webhook`.
    pub fn new(state: Option<StateDir>, webhook: Option<String>) -> AlertSink {
        AlertSink { state, webhook, client: reqwest::Client::new() }
    }

    /// Raises `alert`. A webhook or state failure is logged, never fatal: stdout still has it.
    pub async fn emit(&self, alert: &Alert) {
        match serde_json::to_string(alert) {
            Ok(line) => println!("{line}"),
            Err(e) => tracing::error!(error = %e, "alert not serialisable"),
        }
        if let Some(state) = &self.state
            && let Err(e) = state.append_alert(alert)
        {
            tracing::error!(error = %e, "alert not recorded in the state directory");
        }
        if let Some(url) = &self.webhook {
            match self.client.post(url).json(alert).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => tracing::warn!(status = %r.status(), url, "webhook refused the alert"),
                Err(e) => tracing::warn!(error = %e, url, "webhook unreachable"),
            }
        }
    }
}
