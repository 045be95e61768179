//! The `[audit]` section: where audit records go and what happens when
//! they cannot be written.
//!
//! ```toml
//! [audit]
//! sinks = ["store", "file", "syslog"]   # default: ["store"]
//! file = "/var/log/sluice/audit.jsonl"  # JSON lines (the `file` sink)
//! syslog = "tcp://siem.example:6514"    # RFC 5424 + CEF (`udp://` or `tcp://`)
//! mode = "fail_open"                    # or "fail_closed": refuse requests while a record cannot be written
//! spool_dir = "/var/lib/sluice/audit-spool"  # default: `<data dir>/audit-spool`
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{invalid, ConfigError, EnvLookup};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    pub sinks: Option<Vec<String>>,
    pub file: Option<PathBuf>,
    pub syslog: Option<String>,
    pub mode: Option<AuditMode>,
    pub spool_dir: Option<PathBuf>,
}

/// What the gateway does while the audit log cannot be written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditMode {
    /// Serve on; records wait in the spool (or, past it, are counted lost).
    #[default]
    FailOpen,
    /// Refuse requests (503) until records can be written again.
    FailClosed,
}

/// One resolved sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSinkConfig {
    /// The store's `audit` table, with the hash chain.
    Store,
    /// JSON lines appended to a file.
    File(PathBuf),
    /// RFC 5424 syslog with a CEF payload.
    Syslog(SyslogTarget),
}

impl AuditSinkConfig {
    /// A short name: the spool file's and the metrics' label.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Store => "store",
            Self::File(_) => "file",
            Self::Syslog(_) => "syslog",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogTransport {
    Udp,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogTarget {
    pub transport: SyslogTransport,
    /// `host:port`.
    pub address: String,
}

/// The resolved `[audit]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    pub sinks: Vec<AuditSinkConfig>,
    pub mode: AuditMode,
    pub spool_dir: PathBuf,
}

impl AuditSection {
    pub fn resolve(
        self,
        base_dir: &Path,
        env: EnvLookup<'_>,
    ) -> Result<AuditSettings, ConfigError> {
        let names = self.sinks.unwrap_or_else(|| vec!["store".to_string()]);
        let mut sinks = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let sink = match name.as_str() {
                "store" => AuditSinkConfig::Store,
                "file" => {
                    let path = self.file.as_ref().ok_or_else(|| {
                        invalid("audit.file", "the `file` sink needs `file = \"<path>\"`")
                    })?;
                    AuditSinkConfig::File(base_dir.join(path))
                }
                "syslog" => {
                    let url = self.syslog.as_deref().ok_or_else(|| {
                        invalid(
                            "audit.syslog",
                            "the `syslog` sink needs `syslog = \"udp://host:port\"` or `tcp://host:port`",
                        )
                    })?;
                    AuditSinkConfig::Syslog(parse_syslog(url)?)
                }
                other => {
                    return Err(invalid(
                        format!("audit.sinks[{i}]"),
                        format!("unknown sink `{other}`: use \"store\", \"file\" or \"syslog\""),
                    ))
                }
            };
            if sinks.contains(&sink) {
                return Err(invalid(
                    format!("audit.sinks[{i}]"),
                    format!("`{name}` is listed twice"),
                ));
            }
            sinks.push(sink);
        }
        let spool_dir = match self.spool_dir {
            Some(dir) => base_dir.join(dir),
            None => super::default_data_dir(env).join("audit-spool"),
        };
        Ok(AuditSettings {
            sinks,
            mode: self.mode.unwrap_or_default(),
            spool_dir,
        })
    }
}

fn parse_syslog(url: &str) -> Result<SyslogTarget, ConfigError> {
    let (transport, address) = if let Some(rest) = url.strip_prefix("udp://") {
        (SyslogTransport::Udp, rest)
    } else if let Some(rest) = url.strip_prefix("tcp://") {
        (SyslogTransport::Tcp, rest)
    } else {
        return Err(invalid(
            "audit.syslog",
            format!("`{url}` must start with `udp://` or `tcp://`"),
        ));
    };
    let port_ok = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_ok {
        return Err(invalid(
            "audit.syslog",
            format!("`{url}` needs a host and a port, such as tcp://127.0.0.1:6514"),
        ));
    }
    Ok(SyslogTarget {
        transport,
        address: address.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SLUICE_DATA_DIR").then(|| "/data".to_string())
    }

    #[test]
    fn the_default_is_the_store_fail_open_spooled_in_the_data_dir() {
        let s = AuditSection::default()
            .resolve(Path::new("/etc"), &env)
            .unwrap();
        assert_eq!(s.sinks, [AuditSinkConfig::Store]);
        assert_eq!(s.mode, AuditMode::FailOpen);
        assert_eq!(s.spool_dir, PathBuf::from("/data/audit-spool"));
    }

    #[test]
    fn every_sink_resolves_and_a_missing_target_names_its_key() {
        let section: AuditSection = toml::from_str(
            r#"
            sinks = ["store", "file", "syslog"]
            file = "audit.jsonl"
            syslog = "tcp://127.0.0.1:6514"
            mode = "fail_closed"
            "#,
        )
        .unwrap();
        let s = section.resolve(Path::new("/etc/sluice"), &env).unwrap();
        assert_eq!(s.mode, AuditMode::FailClosed);
        assert_eq!(
            s.sinks[1],
            AuditSinkConfig::File("/etc/sluice/audit.jsonl".into())
        );
        assert_eq!(
            s.sinks[2],
            AuditSinkConfig::Syslog(SyslogTarget {
                transport: SyslogTransport::Tcp,
                address: "127.0.0.1:6514".into()
            })
        );
        let section: AuditSection = toml::from_str(r#"sinks = ["file"]"#).unwrap();
        let err = section
            .resolve(Path::new("."), &env)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("audit.file"), "{err}");
        let section: AuditSection = toml::from_str(
            r#"sinks = ["syslog"]
            syslog = "http://x:1""#,
        )
        .unwrap();
        let err = section
            .resolve(Path::new("."), &env)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("audit.syslog"), "{err}");
        let section: AuditSection = toml::from_str(r#"sinks = ["kafka"]"#).unwrap();
        let err = section
            .resolve(Path::new("."), &env)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("audit.sinks[0]"), "{err}");
        assert!(toml::from_str::<AuditSection>(r#"mode = "maybe""#).is_err());
    }
}
