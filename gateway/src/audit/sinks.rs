//! The places records are delivered to, each behind [`Deliver`]: the
//! store's hash chain, a JSON-lines file, and syslog ([`super::syslog`]).
//! A delivery either takes the whole batch or fails; the writer task keeps
//! the batch in the spool and tries again.

use std::path::PathBuf;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::io::AsyncWriteExt;

use super::{chain, AuditRecord};
use crate::store::Store;

pub trait Deliver: Send + 'static {
    fn deliver<'a>(&'a mut self, records: &'a [AuditRecord]) -> BoxFuture<'a, Result<(), String>>;
}

/// The store's `audit` table, appended to the hash chain.
pub struct StoreSink(pub Store);

impl Deliver for StoreSink {
    fn deliver<'a>(&'a mut self, records: &'a [AuditRecord]) -> BoxFuture<'a, Result<(), String>> {
        async move {
            chain::append(&self.0, records)
                .await
                .map_err(|e| e.to_string())
        }
        .boxed()
    }
}

/// JSON lines appended to a file (opened again after a failure, so a
/// rotated or recreated file is picked up).
pub struct FileSink {
    path: PathBuf,
    file: Option<tokio::fs::File>,
}

impl FileSink {
    pub fn new(path: PathBuf) -> Self {
        Self { path, file: None }
    }

    async fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    tokio::fs::create_dir_all(dir).await?;
                }
                let f = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .await?;
                self.file.insert(f)
            }
        };
        file.write_all(buf).await?;
        file.sync_data().await
    }
}

impl Deliver for FileSink {
    fn deliver<'a>(&'a mut self, records: &'a [AuditRecord]) -> BoxFuture<'a, Result<(), String>> {
        async move {
            let mut buf = Vec::new();
            for r in records {
                serde_json::to_writer(&mut buf, &FileLine::of(r)).map_err(|e| e.to_string())?;
                buf.push(b'\n');
            }
            let written = self.write(&buf).await;
            written.map_err(|e| {
                self.file = None;
                format!("cannot append to {}: {e}", self.path.display())
            })
        }
        .boxed()
    }
}

/// A record as the file shows it: its time also in RFC 3339.
#[derive(serde::Serialize)]
struct FileLine<'a> {
    time: String,
    #[serde(flatten)]
    record: &'a AuditRecord,
}

impl<'a> FileLine<'a> {
    fn of(record: &'a AuditRecord) -> Self {
        Self {
            time: record.time(),
            record,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::sample;

    #[tokio::test]
    async fn the_file_gets_one_json_line_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/audit.jsonl");
        let mut sink = FileSink::new(path.clone());
        sink.deliver(&[sample(0), sample(1)]).await.unwrap();
        sink.deliver(&[sample(2)]).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2]["target"], "t2");
        assert_eq!(lines[0]["action"], "key.created");
        assert!(lines[0]["time"]
            .as_str()
            .unwrap()
            .starts_with("2023-11-14T"));
    }
}
