//! The secret side of a virtual key: minting `sk-sl-<prefix>_<secret>`,
//! the server pepper, and the HMAC-SHA256 the store keeps instead of the
//! key.

use std::io::Write;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use rand::distr::{Alphanumeric, SampleString};
use sha2::Sha256;

use crate::config::{PepperSource, StoreLocation, StoreSettings};

use super::KeysError;

/// The public part: enough to find the row, too short to guess the key.
const PREFIX_LEN: usize = 8;
/// 40 alphanumerics: about 238 bits.
const SECRET_LEN: usize = 40;
/// A pepper shorter than this is refused (a typo, an empty file).
const MIN_PEPPER_BYTES: usize = 16;
/// The generated pepper's file, beside a SQLite database.
const PEPPER_FILE: &str = "sluice.pepper";

/// A newly minted key: shown to its owner once, then only its digest is kept.
pub struct NewKey {
    pub prefix: String,
    pub key: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NewKey({}, <redacted>)", self.prefix)
    }
}

pub fn mint() -> NewKey {
    let mut rng = rand::rng();
    let prefix = Alphanumeric.sample_string(&mut rng, PREFIX_LEN);
    let secret = Alphanumeric.sample_string(&mut rng, SECRET_LEN);
    NewKey {
        key: format!("sk-sl-{prefix}_{secret}"),
        prefix,
    }
}

/// A key's digest: HMAC-SHA256 under the pepper.
pub type Digest = [u8; 32];

/// The server-wide secret every key digest is keyed with: a dump of the
/// store alone cannot be used to test guessed keys.
#[derive(Clone)]
pub struct Pepper {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Pepper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pepper(<redacted>)")
    }
}

impl Pepper {
    pub fn new(secret: &[u8]) -> Result<Self, KeysError> {
        if secret.len() < MIN_PEPPER_BYTES {
            return Err(KeysError::Pepper(format!(
                "the pepper is {} bytes; use at least {MIN_PEPPER_BYTES} random bytes",
                secret.len()
            )));
        }
        let mac = Hmac::<Sha256>::new_from_slice(secret)
            .map_err(|e| KeysError::Pepper(format!("unusable pepper: {e}")))?;
        Ok(Self { mac })
    }

    /// The pepper the settings name; with none and a SQLite store, a random
    /// one made (mode 0600) beside the database on first start.
    pub fn load(source: &PepperSource, store: &StoreSettings) -> Result<Self, KeysError> {
        match source {
            PepperSource::Env(secret) => Self::new(secret.expose().trim().as_bytes()),
            PepperSource::File(path) => Self::new(read_pepper(path)?.as_bytes()),
            PepperSource::Unset => match &store.location {
                StoreLocation::Sqlite(db) => {
                    let path = db
                        .parent()
                        .filter(|d| !d.as_os_str().is_empty())
                        .unwrap_or(Path::new("."))
                        .join(PEPPER_FILE);
                    Self::new(read_or_create(&path)?.as_bytes())
                }
                StoreLocation::Postgres(_) => Err(KeysError::Pepper(
                    "a PostgreSQL store needs a pepper that every instance shares: set \
                     SLUICE_KEY_PEPPER or `[auth] pepper_file` (e.g. `openssl rand -hex 32 > \
                     /etc/sluice/pepper`)"
                        .into(),
                )),
            },
        }
    }

    pub fn digest(&self, key: &str) -> Digest {
        self.mac
            .clone()
            .chain_update(key.as_bytes())
            .finalize()
            .into_bytes()
            .into()
    }
}

fn read_pepper(path: &Path) -> Result<String, KeysError> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_string())
        .map_err(|e| {
            KeysError::Pepper(format!(
                "cannot read the pepper file {}: {e}",
                path.display()
            ))
        })
}

fn read_or_create(path: &PathBuf) -> Result<String, KeysError> {
    if path.exists() {
        return read_pepper(path);
    }
    let pepper = Alphanumeric.sample_string(&mut rand::rng(), 64);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let created = options.open(path).and_then(|mut file| {
        file.write_all(pepper.as_bytes())
            .and_then(|()| file.sync_all())
    });
    match created {
        Ok(()) => {
            tracing::info!(
                path = %path.display(),
                "created a random key pepper beside the store (keep it with the database: \
                 without it no virtual key can be checked)"
            );
            Ok(pepper)
        }
        // Another process (a CLI beside the server) made it first.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_pepper(path),
        Err(e) => Err(KeysError::Pepper(format!(
            "cannot create the pepper file {}: {e}",
            path.display()
        ))),
    }
}

/// Over all 32 bytes, no early exit: timing tells nothing of where two
/// digests differ.
pub fn digests_match(a: &Digest, b: &Digest) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

pub fn to_hex(digest: &Digest) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn from_hex(text: &str) -> Option<Digest> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_key_has_the_documented_shape() {
        let k = mint();
        assert_eq!(
            crate::auth::presented_prefix(&k.key),
            Some(k.prefix.as_str())
        );
        let secret = k.key.rsplit_once('_').unwrap().1;
        assert!(secret.len() >= 32 && secret.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(!format!("{k:?}").contains(secret));
        assert_ne!(mint().key, k.key);
    }

    #[test]
    fn the_digest_depends_on_the_pepper_and_round_trips_through_hex() {
        let a = Pepper::new(b"0123456789abcdef").unwrap();
        let b = Pepper::new(b"0123456789abcdeX").unwrap();
        let d = a.digest("sk-sl-x_y");
        assert!(digests_match(&d, &a.digest("sk-sl-x_y")));
        assert!(!digests_match(&d, &b.digest("sk-sl-x_y")));
        assert_eq!(from_hex(&to_hex(&d)), Some(d));
        assert_eq!(from_hex("zz"), None);
        assert!(Pepper::new(b"short").is_err());
    }

    #[test]
    fn a_sqlite_store_gets_a_private_pepper_and_postgres_refuses_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreSettings {
            location: StoreLocation::Sqlite(dir.path().join("sluice.db")),
        };
        let first = Pepper::load(&PepperSource::Unset, &store).unwrap();
        let again = Pepper::load(&PepperSource::Unset, &store).unwrap();
        assert!(digests_match(&first.digest("k"), &again.digest("k")));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(PEPPER_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let pg = StoreSettings {
            location: StoreLocation::Postgres(crate::config::Secret::new("postgres://x".into())),
        };
        let err = Pepper::load(&PepperSource::Unset, &pg).unwrap_err();
        assert!(err.to_string().contains("SLUICE_KEY_PEPPER"), "{err}");
    }
}
