//! The syslog sink for a SIEM: RFC 5424 messages whose MSG is a CEF
//! event, over UDP (one datagram each) or TCP (octet-counted framing,
//! RFC 6587). A TCP connection that the receiver closed is noticed before
//! the next batch is written to it, so that batch waits in the spool
//! instead of vanishing into a dead socket.

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

use super::sinks::Deliver;
use super::AuditRecord;
use crate::config::{SyslogTarget, SyslogTransport};

/// `log audit` (13).
const FACILITY: u8 = 13;

pub struct SyslogSink {
    target: SyslogTarget,
    hostname: String,
    tcp: Option<TcpStream>,
    udp: Option<UdpSocket>,
}

impl SyslogSink {
    pub fn new(target: SyslogTarget) -> Self {
        let hostname = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty() && h.is_ascii() && !h.contains(' '))
            .unwrap_or_else(|| "-".to_string());
        Self {
            target,
            hostname,
            tcp: None,
            udp: None,
        }
    }

    async fn send_tcp(&mut self, frames: &[u8]) -> std::io::Result<()> {
        if let Some(stream) = &self.tcp {
            if peer_closed(stream) {
                self.tcp = None;
            }
        }
        let stream = match &mut self.tcp {
            Some(s) => s,
            None => self
                .tcp
                .insert(TcpStream::connect(&self.target.address).await?),
        };
        let written = stream.write_all(frames).await;
        if written.is_err() {
            self.tcp = None;
        }
        written
    }

    async fn send_udp(&mut self, messages: &[Vec<u8>]) -> std::io::Result<()> {
        let socket = match &self.udp {
            Some(s) => s,
            None => {
                let bind = if self.target.address.starts_with('[') {
                    "[::]:0"
                } else {
                    "0.0.0.0:0"
                };
                let s = UdpSocket::bind(bind).await?;
                s.connect(&self.target.address).await?;
                self.udp.insert(s)
            }
        };
        for m in messages {
            socket.send(m).await?;
        }
        Ok(())
    }
}

/// Whether the receiver has closed (or reset) the connection: a read that
/// would block means it is still open (a syslog receiver sends nothing).
fn peer_closed(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match stream.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

impl Deliver for SyslogSink {
    fn deliver<'a>(&'a mut self, records: &'a [AuditRecord]) -> BoxFuture<'a, Result<(), String>> {
        async move {
            let messages: Vec<Vec<u8>> = records
                .iter()
                .map(|r| rfc5424(r, &self.hostname).into_bytes())
                .collect();
            let sent = match self.target.transport {
                SyslogTransport::Udp => self.send_udp(&messages).await,
                SyslogTransport::Tcp => {
                    let mut frames = Vec::new();
                    for m in &messages {
                        frames.extend_from_slice(format!("{} ", m.len()).as_bytes());
                        frames.extend_from_slice(m);
                    }
                    self.send_tcp(&frames).await
                }
            };
            sent.map_err(|e| format!("syslog {}: {e}", self.target.address))
        }
        .boxed()
    }
}

/// Denials and failures are warnings (4); the rest notices (5).
fn severity(record: &AuditRecord) -> (u8, u8) {
    match record.outcome.as_str() {
        "success" => (5, 3),
        "denied" => (4, 6),
        _ => (4, 7),
    }
}

/// `<PRI>1 TIMESTAMP HOST sluice PID MSGID - CEF:0|…`
pub fn rfc5424(record: &AuditRecord, hostname: &str) -> String {
    let (syslog_severity, _) = severity(record);
    let pri = u16::from(FACILITY) * 8 + u16::from(syslog_severity);
    let msgid: String = record
        .action
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect();
    let msgid = if msgid.is_empty() {
        "-".to_string()
    } else {
        msgid
    };
    format!(
        "<{pri}>1 {} {hostname} sluice {} {msgid} - {}",
        record.time(),
        std::process::id(),
        cef(record)
    )
}

/// The CEF event: header fields escape `|` and `\`; extension values
/// escape `=`, `\` and line breaks.
pub fn cef(record: &AuditRecord) -> String {
    let (_, cef_severity) = severity(record);
    let mut out = format!(
        "CEF:0|Sluice|sluice|{}|{}|{}|{cef_severity}|",
        env!("CARGO_PKG_VERSION"),
        header(&record.action),
        header(&record.action),
    );
    let mut ext = vec![
        ("rt", record.at_ms.to_string()),
        ("act", record.action.clone()),
        ("suser", record.actor.clone()),
        ("outcome", record.outcome.clone()),
    ];
    let optional = [
        ("cs1Label", "tenant", &record.tenant),
        ("cs2Label", "target", &record.target),
        ("cs3Label", "source", &record.source),
        ("cs4Label", "requestId", &record.request_id),
    ];
    for (i, (label_key, label, value)) in optional.into_iter().enumerate() {
        if let Some(value) = value {
            ext.push((label_key, label.to_string()));
            let key = ["cs1", "cs2", "cs3", "cs4"][i];
            ext.push((key, value.clone()));
        }
    }
    if let Some(detail) = &record.detail {
        ext.push(("msg", detail.clone()));
    }
    let ext: Vec<String> = ext
        .into_iter()
        .map(|(k, v)| format!("{k}={}", extension(&v)))
        .collect();
    out.push_str(&ext.join(" "));
    out
}

fn header(text: &str) -> String {
    text.replace('\\', "\\\\").replace('|', "\\|")
}

fn extension(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace('\r', "\\r")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::sample;

    #[test]
    fn a_record_is_rfc5424_with_an_escaped_cef_payload() {
        let mut r = sample(1);
        r.detail = Some("a=b|c\nd".into());
        let line = rfc5424(&r, "gw1");
        assert!(
            line.starts_with("<109>1 2023-11-14T22:13:20.001Z gw1 sluice "),
            "{line}"
        );
        assert!(
            line.contains(" key.created - CEF:0|Sluice|sluice|"),
            "{line}"
        );
        assert!(line.contains("|key.created|key.created|3|rt=1700000000001 act=key.created suser=key:k1 outcome=success"), "{line}");
        assert!(line.contains("cs1Label=tenant cs1=acme"), "{line}");
        assert!(line.ends_with("msg=a\\=b|c\\nd"), "{line}");
    }
}
