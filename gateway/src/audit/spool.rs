//! The disk spool in front of one sink: records are appended to
//! `<dir>/<sink>.jsonl` (fsync per batch) before the sink sees them, and
//! `<dir>/<sink>.offset` says how many of its bytes the sink has taken. A
//! sink outage, or a restart during one, loses nothing: the records after
//! the offset are delivered, in order, once the sink is back. When the sink
//! has taken everything the file is truncated.
//!
//! Plain blocking file I/O: the writer task runs it on the blocking pool.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::AuditRecord;

pub struct Spool {
    file: File,
    path: PathBuf,
    offset_path: PathBuf,
    /// Bytes in the file.
    len: u64,
}

/// A spooled record and the file offset just past it.
pub type Spooled = (AuditRecord, u64);

impl Spool {
    /// Opens (creating) the spool of sink `name` and returns the records
    /// a previous run left undelivered, oldest first.
    pub fn open(dir: &Path, name: &str) -> io::Result<(Self, Vec<Spooled>)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.jsonl"));
        let offset_path = dir.join(format!("{name}.offset"));
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let delivered = std::fs::read_to_string(&offset_path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let mut text = Vec::new();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_end(&mut text)?;
        // Past the end: the file was truncated after everything was taken
        // but the offset not yet reset.
        let start = if delivered > text.len() as u64 {
            0
        } else {
            delivered as usize
        };
        let mut pending = Vec::new();
        let mut at = start;
        let mut complete = start;
        for line in text[start..].split_inclusive(|b| *b == b'\n') {
            at += line.len();
            if line.last() != Some(&b'\n') {
                // A line cut short by a crash mid-write; it was never acknowledged
                // to anyone, so it is dropped.
                break;
            }
            complete = at;
            match serde_json::from_slice::<AuditRecord>(line) {
                Ok(record) => pending.push((record, at as u64)),
                Err(e) => {
                    metrics::counter!("sluice_audit_spool_corrupt_total").increment(1);
                    tracing::error!(spool = %path.display(), error = %e, "an unreadable audit spool line was skipped");
                }
            }
        }
        if complete < text.len() {
            file.set_len(complete as u64)?;
        }
        let mut spool = Self {
            file,
            path,
            offset_path,
            len: complete as u64,
        };
        if pending.is_empty() && spool.len > 0 {
            spool.reset()?;
        }
        Ok((spool, pending))
    }

    /// Appends records and makes them durable; returns each one's end offset.
    pub fn append(&mut self, records: &[AuditRecord]) -> io::Result<Vec<u64>> {
        let mut buf = Vec::new();
        let mut ends = Vec::with_capacity(records.len());
        for record in records {
            serde_json::to_writer(&mut buf, record).map_err(io::Error::other)?;
            buf.push(b'\n');
            ends.push(self.len + buf.len() as u64);
        }
        if let Err(e) = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data())
        {
            // Whatever part was written is cut off again, so the offsets stay true.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += buf.len() as u64;
        Ok(ends)
    }

    /// The sink took every record up to `end`.
    pub fn ack(&mut self, end: u64) -> io::Result<()> {
        if end >= self.len {
            return self.reset();
        }
        write_offset(&self.offset_path, end)
    }

    /// Everything was delivered: truncate first, then the offset (a crash
    /// between leaves an offset past the end, which [`Spool::open`] reads as 0).
    fn reset(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_data()?;
        self.len = 0;
        write_offset(&self.offset_path, 0)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn write_offset(path: &Path, offset: u64) -> io::Result<()> {
    let tmp = path.with_extension("offset.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(offset.to_string().as_bytes())?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::sample;

    #[test]
    fn undelivered_records_survive_a_restart_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, pending) = Spool::open(dir.path(), "syslog").unwrap();
        assert!(pending.is_empty());
        let ends = spool.append(&[sample(0), sample(1), sample(2)]).unwrap();
        spool.ack(ends[0]).unwrap();
        drop(spool);
        let (mut spool, pending) = Spool::open(dir.path(), "syslog").unwrap();
        let records: Vec<_> = pending.iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(records, [sample(1), sample(2)]);
        spool.ack(pending[1].1).unwrap();
        assert_eq!(std::fs::metadata(spool.path()).unwrap().len(), 0);
        drop(spool);
        let (_, pending) = Spool::open(dir.path(), "syslog").unwrap();
        assert!(pending.is_empty());
    }

    #[test]
    fn a_line_cut_short_by_a_crash_is_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), "file").unwrap();
        spool.append(&[sample(0)]).unwrap();
        let path = spool.path().to_path_buf();
        drop(spool);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"at_ms\":1,\"act").unwrap();
        drop(f);
        let (mut spool, pending) = Spool::open(dir.path(), "file").unwrap();
        assert_eq!(pending.len(), 1);
        let ends = spool.append(&[sample(1)]).unwrap();
        drop(spool);
        let (_, pending) = Spool::open(dir.path(), "file").unwrap();
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[1], (sample(1), ends[0]));
    }
}
