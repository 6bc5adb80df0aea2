//! API request types.

use serde::Deserialize;

/// Default grace period of a shutdown request.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 5000;

/// One request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum ApiRequest {
    /// Stop all vCPUs.
    Pause {},
    /// Restart stopped vCPUs.
    Resume {},
    /// Ask the guest to shut down; stop the VM by force after `timeout_ms`.
    Shutdown {
        /// Grace period (default 5000 ms).
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Counters.
    Metrics {},
    /// Run state and boot-timer marks.
    Status {},
}

/// Parses one request line.
pub fn parse_request(line: &str) -> Result<ApiRequest, String> {
    serde_json::from_str(line.trim()).map_err(|e| format!("Invalid request: {e}"))
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        assert_eq!(
            parse_request(r#"{"action":"pause"}"#),
            Ok(ApiRequest::Pause {})
        );
        assert_eq!(
            parse_request(r#"{"action":"shutdown","timeout_ms":10}"#),
            Ok(ApiRequest::Shutdown {
                timeout_ms: Some(10)
            })
        );
        assert_eq!(
            parse_request("{\"action\":\"shutdown\"}\n"),
            Ok(ApiRequest::Shutdown { timeout_ms: None })
        );
        assert!(parse_request(r#"{"action":"reboot"}"#).is_err());
        assert!(parse_request(r#"{"action":"pause","x":1}"#).is_err());
        assert!(parse_request("not json").is_err());
    }
}
