//! Key slots: `keys/<id>` objects. Each holds the repository's master key wrapped
//! (XChaCha20-Poly1305) under a key derived from one passphrase with Argon2id (RFC 9106), so
//! passphrases can be added, changed and removed without re-encrypting any data.
//!
//! ```text
//! key object  header (b"MBKK", version 2, envelope 0, 0, 0) ‖ JSON:
//!   { "created", "hostname",
//!     "kdf": { "algorithm": "argon2id", "version": 19, "memory_kib", "iterations",
//!              "parallelism", "salt": "<32 hex: 16 random bytes>" },
//!     "cipher": "xchacha20-poly1305",
//!     "master_key": "<144 hex: nonce 24 ‖ sealed 32-byte master key ‖ tag 16>" }
//! ```
//! The wrapped master key's associated data is the object's header ‖ `"key slot"`. A key
//! slot's id (its name) is the BLAKE3 hash of the object's bytes.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{self, Label, SealingKey, KEY_LEN, SEAL_OVERHEAD};
use crate::error::{Error, Result};
use crate::format::{self, ObjectKind, ENVELOPE_PLAIN, HEADER_LEN};
use crate::id::KeyId;
use crate::repository::Repository;
use crate::snapshot;

/// Prefix of key slot objects.
pub(crate) const KEYS_PREFIX: &str = "keys";
const KDF_ALGORITHM: &str = "argon2id";
/// Argon2 version 1.3 (0x13), the one RFC 9106 specifies.
const ARGON2_VERSION: u32 = 0x13;
const CIPHER: &str = "xchacha20-poly1305";
/// Salt bytes (RFC 9106 recommends 128 bits).
const SALT_LEN: usize = 16;
/// Header version of key slots: their format has not changed since format version 2, so they
/// stay readable by the builds that wrote version-2 repositories.
const KEY_SLOT_VERSION: u8 = 2;

/// Upper bounds on what a key slot may ask for, so a planted slot cannot make `open` allocate
/// without limit or spin for hours.
const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
const MAX_ITERATIONS: u32 = 100;
const MAX_PARALLELISM: u32 = 64;

/// Argon2id cost of deriving a key slot's key from its passphrase (RFC 9106: m, t, p).
///
/// Stored in each key slot, so a repository opens with whatever parameters its slots were
/// made with. [`KdfParams::RECOMMENDED`] (the default) is RFC 9106's second recommended
/// option. Cheaper parameters are for tests only: they must be asked for explicitly, and m365bk
/// logs a warning whenever it makes or opens a slot with them
/// ([`KdfParams::is_below_recommended`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory, in KiB (Argon2 `m`); at least 8 × `parallelism`.
    pub memory_kib: u32,
    /// Passes over the memory (Argon2 `t`); at least 1.
    pub iterations: u32,
    /// Lanes (Argon2 `p`); at least 1. Computed in parallel, on one thread per core.
    pub parallelism: u32,
}

impl KdfParams {
    /// 64 MiB, 3 iterations, 4 lanes: RFC 9106 §4, second recommended option (for machines
    /// where 2 GiB per derivation is too much). About 0.2 s per derivation on one core here.
    pub const RECOMMENDED: KdfParams = KdfParams {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 4,
    };

    /// True if these parameters cost less memory or fewer passes than
    /// [`KdfParams::RECOMMENDED`]: acceptable for tests, not for real passphrases.
    pub fn is_below_recommended(&self) -> bool {
        self.memory_kib < Self::RECOMMENDED.memory_kib
            || self.iterations < Self::RECOMMENDED.iterations
    }

    /// Argon2's parameters, if these are valid and within m365bk's bounds.
    fn argon2(&self) -> std::result::Result<argon2::Params, String> {
        if self.memory_kib > MAX_MEMORY_KIB
            || self.iterations > MAX_ITERATIONS
            || self.parallelism > MAX_PARALLELISM
        {
            return Err(format!(
                "{self} is beyond m365bk's bounds (at most {} MiB, {MAX_ITERATIONS} iterations, \
                 {MAX_PARALLELISM} lanes)",
                MAX_MEMORY_KIB / 1024
            ));
        }
        argon2::Params::new(
            self.memory_kib,
            self.iterations,
            self.parallelism,
            Some(KEY_LEN),
        )
        .map_err(|e| {
            format!("{self} is not valid for Argon2id ({e}): memory must be at least 8 KiB per lane, iterations and lanes at least 1")
        })
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::RECOMMENDED
    }
}

impl std::fmt::Display for KdfParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "argon2id m={} KiB t={} p={}",
            self.memory_kib, self.iterations, self.parallelism
        )
    }
}

/// One key slot, as [`Repository::list_keys`] describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The slot's id (the hash of its object).
    pub id: KeyId,
    /// When it was made (UTC).
    pub created: DateTime<Utc>,
    /// The host that made it.
    pub hostname: String,
    /// Its Argon2id parameters.
    pub kdf: KdfParams,
    /// True for the slot the passphrase given to [`Repository::open`] opened.
    pub current: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySlotFile {
    created: DateTime<Utc>,
    hostname: String,
    kdf: KdfFile,
    cipher: String,
    /// nonce ‖ sealed master key ‖ tag, hex.
    master_key: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KdfFile {
    algorithm: String,
    version: u32,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    /// Hex.
    salt: String,
}

/// A parsed key slot (holds nothing secret: the master key in it is wrapped).
#[derive(Debug)]
pub(crate) struct KeySlot {
    pub id: KeyId,
    header: [u8; HEADER_LEN],
    created: DateTime<Utc>,
    hostname: String,
    kdf: KdfParams,
    salt: Vec<u8>,
    wrapped: Vec<u8>,
}

/// Object path of a key slot: `keys/<64 hex>`.
pub(crate) fn key_path(id: &KeyId) -> Path {
    Path::from(format!("{KEYS_PREFIX}/{id}"))
}

/// Argon2id(passphrase, salt) → a 32-byte key-encryption key. CPU and memory heavy: call off
/// the async threads.
///
/// The memory (`params.block_count()` blocks of 1 KiB: `m_cost` KiB rounded down to a multiple
/// of 4 × lanes; 64 MiB by default) is allocated and first touched on
/// rayon's pool, a share per thread, rather than zeroed by one thread: faulting in fresh pages
/// is most of the cost of zeroing them (on a virtual machine the host may back each page only
/// when it is first touched), and it was half of a derivation's time on one thread. The memory
/// is wiped before it is freed.
fn derive(
    passphrase: &SecretString,
    salt: &[u8],
    params: argon2::Params,
) -> std::result::Result<Zeroizing<[u8; KEY_LEN]>, argon2::Error> {
    use rayon::prelude::*;
    use zeroize::Zeroize;

    let blocks = params.block_count();
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut memory = Vec::new();
    memory
        .try_reserve_exact(blocks)
        .map_err(|_| argon2::Error::OutOfMemory)?;
    (0..blocks)
        .into_par_iter()
        .map(|_| argon2::Block::new())
        .collect_into_vec(&mut memory);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    let result = argon.hash_password_into_with_memory(
        passphrase.expose_secret().as_bytes(),
        salt,
        out.as_mut(),
        &mut memory,
    );
    memory.par_iter_mut().for_each(Zeroize::zeroize);
    result?;
    Ok(out)
}

/// Makes a key slot wrapping `master` under `passphrase`. Returns its id and bytes. CPU and
/// memory heavy (one Argon2id derivation).
///
/// # Errors
/// [`Error::InvalidKdfParams`], [`Error::EmptyPassphrase`].
pub(crate) fn create_slot(
    master: &[u8; KEY_LEN],
    passphrase: &SecretString,
    kdf: KdfParams,
) -> Result<(KeyId, Vec<u8>)> {
    if passphrase.expose_secret().is_empty() {
        return Err(Error::EmptyPassphrase);
    }
    let params = kdf
        .argon2()
        .map_err(|detail| Error::InvalidKdfParams { detail })?;
    let salt: [u8; SALT_LEN] = rand::random();
    let kek = derive(passphrase, &salt, params).map_err(|e| Error::InvalidKdfParams {
        detail: format!("{kdf}: {e}"),
    })?;
    let header = format::header(ObjectKind::Key, KEY_SLOT_VERSION, ENVELOPE_PLAIN);
    let mut wrapped = Vec::with_capacity(SEAL_OVERHEAD + KEY_LEN);
    SealingKey::xchacha(&kek).seal_append(&header, Label::KeySlot, master, &mut wrapped);
    let file = KeySlotFile {
        created: Utc::now(),
        hostname: snapshot::hostname(),
        kdf: KdfFile {
            algorithm: KDF_ALGORITHM.to_owned(),
            version: ARGON2_VERSION,
            memory_kib: kdf.memory_kib,
            iterations: kdf.iterations,
            parallelism: kdf.parallelism,
            salt: hex::encode(salt),
        },
        cipher: CIPHER.to_owned(),
        master_key: hex::encode(&wrapped),
    };
    let mut bytes = header.to_vec();
    serde_json::to_writer_pretty(&mut bytes, &file).map_err(|e| Error::Internal {
        detail: format!("cannot encode a key slot: {e}"),
    })?;
    bytes.push(b'\n');
    let id = KeyId::from_bytes(*blake3::hash(&bytes).as_bytes());
    Ok((id, bytes))
}

/// Parses and checks a key slot object.
///
/// # Errors
/// [`Error::CorruptObject`] if it does not hash to its name or does not parse,
/// [`Error::UnsupportedVersion`] / [`Error::UnsupportedEncoding`] if it is from a newer m365bk.
pub(crate) fn parse_slot(id: KeyId, bytes: &[u8]) -> Result<KeySlot> {
    let name = key_path(&id).to_string();
    let corrupt = |detail: String| Error::CorruptObject {
        kind: "key",
        name: name.clone(),
        detail,
    };
    let header = format::read_header(ObjectKind::Key, &name, bytes)?;
    if blake3::hash(bytes).as_bytes() != id.as_bytes() {
        return Err(corrupt("content does not hash to its name".to_owned()));
    }
    if header[5] != ENVELOPE_PLAIN {
        return Err(corrupt(format!("envelope {}, expected 0", header[5])));
    }
    let file: KeySlotFile = serde_json::from_slice(&bytes[HEADER_LEN..])
        .map_err(|e| corrupt(format!("invalid JSON: {e}")))?;
    let unsupported = |detail: String| Error::UnsupportedEncoding {
        kind: "key",
        name: name.clone(),
        detail,
    };
    if file.kdf.algorithm != KDF_ALGORITHM || file.kdf.version != ARGON2_VERSION {
        return Err(unsupported(format!(
            "key derivation {:?} version {}",
            file.kdf.algorithm, file.kdf.version
        )));
    }
    if file.cipher != CIPHER {
        return Err(unsupported(format!(
            "key wrapping cipher {:?}",
            file.cipher
        )));
    }
    let salt = hex::decode(&file.kdf.salt).map_err(|e| corrupt(format!("salt: {e}")))?;
    if salt.len() < argon2::MIN_SALT_LEN {
        return Err(corrupt(format!(
            "salt of {} bytes is too short",
            salt.len()
        )));
    }
    let wrapped = hex::decode(&file.master_key).map_err(|e| corrupt(format!("master_key: {e}")))?;
    if wrapped.len() != SEAL_OVERHEAD + KEY_LEN {
        return Err(corrupt(format!(
            "wrapped master key is {} bytes, expected {}",
            wrapped.len(),
            SEAL_OVERHEAD + KEY_LEN
        )));
    }
    let kdf = KdfParams {
        memory_kib: file.kdf.memory_kib,
        iterations: file.kdf.iterations,
        parallelism: file.kdf.parallelism,
    };
    kdf.argon2().map_err(corrupt)?;
    Ok(KeySlot {
        id,
        header,
        created: file.created,
        hostname: file.hostname,
        kdf,
        salt,
        wrapped,
    })
}

impl KeySlot {
    /// The master key, if `passphrase` opens this slot. CPU and memory heavy (one Argon2id
    /// derivation).
    pub(crate) fn unlock(&self, passphrase: &SecretString) -> Option<Zeroizing<[u8; KEY_LEN]>> {
        let params = self.kdf.argon2().ok()?;
        let kek = derive(passphrase, &self.salt, params).ok()?;
        let master = SealingKey::xchacha(&kek)
            .open(&self.header, Label::KeySlot, &self.wrapped)
            .ok()?;
        let master = Zeroizing::new(master);
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        out.copy_from_slice(&master);
        if self.kdf.is_below_recommended() {
            tracing::warn!(key = %self.id.short(), kdf = %self.kdf, "this key slot uses key derivation parameters below the recommended ones (test settings?): add a key with the defaults (`m365bk key passwd`) to replace it");
        }
        Some(out)
    }

    pub(crate) fn info(&self, current: Option<KeyId>) -> KeyInfo {
        KeyInfo {
            id: self.id,
            created: self.created,
            hostname: self.hostname.clone(),
            kdf: self.kdf,
            current: current == Some(self.id),
        }
    }
}

/// The ids of every object under `keys/` with an id-shaped name.
pub(crate) async fn slot_ids(store: &dyn ObjectStore) -> Result<Vec<KeyId>> {
    let prefix = Path::from(KEYS_PREFIX);
    let metas: Vec<_> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(Error::backend("list", format!("{KEYS_PREFIX}/")))?;
    let mut ids: Vec<KeyId> = metas
        .iter()
        .filter_map(|m| m.location.filename().and_then(|n| n.parse().ok()))
        .collect();
    ids.sort();
    Ok(ids)
}

/// Reads every key slot; damaged ones are logged and left out.
///
/// # Errors
/// [`Error::Backend`].
pub(crate) async fn load_slots(store: &dyn ObjectStore) -> Result<Vec<KeySlot>> {
    let mut slots = Vec::new();
    for id in slot_ids(store).await? {
        let path = key_path(&id);
        let bytes = match store.get(&path).await {
            Ok(r) => r
                .bytes()
                .await
                .map_err(Error::backend("read", path.to_string()))?,
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(Error::backend("read", path.to_string())(e)),
        };
        match parse_slot(id, &bytes) {
            Ok(slot) => slots.push(slot),
            Err(e) => tracing::warn!(error = %e, "ignoring an unreadable key slot"),
        }
    }
    Ok(slots)
}

/// Writes a new key slot object (create-only).
async fn put_slot(store: &dyn ObjectStore, id: &KeyId, bytes: Vec<u8>) -> Result<()> {
    let path = key_path(id);
    store
        .put_opts(
            &path,
            object_store::PutPayload::from(bytes),
            object_store::PutMode::Create.into(),
        )
        .await
        .map(|_| ())
        .map_err(Error::backend("write", path.to_string()))
}

/// Makes a key slot for `master` and `passphrase` and stores it.
pub(crate) async fn add_slot(
    store: &dyn ObjectStore,
    master: Zeroizing<[u8; KEY_LEN]>,
    passphrase: SecretString,
    kdf: KdfParams,
) -> Result<KeyId> {
    if kdf.is_below_recommended() {
        tracing::warn!(%kdf, "making a key slot with key derivation parameters below the recommended {}: use these for tests only", KdfParams::RECOMMENDED);
    }
    let (id, bytes) = tokio::task::spawn_blocking(move || create_slot(&master, &passphrase, kdf))
        .await
        .map_err(Error::join)??;
    put_slot(store, &id, bytes).await?;
    tracing::info!(key = %id.short(), %kdf, "key slot added");
    Ok(id)
}

impl Repository {
    /// True if the repository's objects are encrypted (it has key slots).
    pub fn is_encrypted(&self) -> bool {
        self.inner.codec.is_sealed()
    }

    /// The key slot the passphrase given to [`Repository::open`] (or [`Repository::init`],
    /// or the last [`Repository::change_passphrase`]) opened; `None` if not encrypted.
    pub fn current_key(&self) -> Option<KeyId> {
        *self.inner.current_key.lock().expect("current key lock")
    }

    fn master_key(&self) -> Result<Zeroizing<[u8; KEY_LEN]>> {
        self.inner
            .master
            .clone()
            .ok_or_else(|| Error::NotEncrypted {
                location: self.inner.location.clone(),
            })
    }

    /// Adds a key slot: `passphrase` opens the repository too from now on.
    ///
    /// # Errors
    /// [`Error::NotEncrypted`], [`Error::InvalidKdfParams`], [`Error::EmptyPassphrase`],
    /// [`Error::Backend`].
    pub async fn add_key(&self, passphrase: SecretString, kdf: KdfParams) -> Result<KeyId> {
        let master = self.master_key()?;
        add_slot(&*self.inner.store, master, passphrase, kdf).await
    }

    /// Every readable key slot, oldest first.
    ///
    /// # Errors
    /// [`Error::NotEncrypted`], [`Error::Backend`].
    pub async fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        self.master_key()?;
        let current = self.current_key();
        let mut keys: Vec<KeyInfo> = load_slots(&*self.inner.store)
            .await?
            .iter()
            .map(|s| s.info(current))
            .collect();
        keys.sort_by_key(|k| (k.created, k.id));
        Ok(keys)
    }

    /// Resolves a key id or unique prefix (at least 4 hex digits).
    async fn find_key(&self, id_or_prefix: &str) -> Result<(KeyId, Vec<KeyId>)> {
        let wanted = id_or_prefix.trim().to_ascii_lowercase();
        if wanted.len() < 4 || wanted.len() > 64 || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidId {
                kind: "key",
                input: id_or_prefix.to_owned(),
                expected: "a key id or a prefix of it with at least 4 hex digits (`m365bk key list` shows them)",
            });
        }
        let all = slot_ids(&*self.inner.store).await?;
        let matches: Vec<KeyId> = all
            .iter()
            .filter(|id| id.to_hex().starts_with(&wanted))
            .copied()
            .collect();
        match matches.as_slice() {
            [] => Err(Error::KeyNotFound { id: wanted }),
            [id] => Ok((*id, all)),
            _ => Err(Error::AmbiguousKeyId {
                prefix: wanted,
                matches: matches.len(),
            }),
        }
    }

    /// Removes a key slot: its passphrase no longer opens the repository.
    ///
    /// Refuses to remove the last slot, and the slot this handle was opened with (open the
    /// repository with another slot's passphrase to remove it, or use
    /// [`Repository::change_passphrase`]). Without a lock, two concurrent removals of the last
    /// two slots could both succeed; run key commands one at a time.
    ///
    /// # Errors
    /// [`Error::NotEncrypted`], [`Error::InvalidId`], [`Error::KeyNotFound`],
    /// [`Error::AmbiguousKeyId`], [`Error::LastKey`], [`Error::KeyInUse`], [`Error::Backend`].
    pub async fn remove_key(&self, id_or_prefix: &str) -> Result<KeyId> {
        self.master_key()?;
        let (id, all) = self.find_key(id_or_prefix).await?;
        if all.len() <= 1 {
            return Err(Error::LastKey { id });
        }
        if self.current_key() == Some(id) {
            return Err(Error::KeyInUse { id });
        }
        let path = key_path(&id);
        self.inner
            .store
            .delete(&path)
            .await
            .map_err(Error::backend("delete", path.to_string()))?;
        tracing::info!(key = %id.short(), "key slot removed");
        Ok(id)
    }

    /// Replaces the current key slot's passphrase: writes a new slot for `passphrase`, then
    /// removes the current one. Between the two steps both passphrases work, so a crash loses
    /// nothing. Returns the new slot's id.
    ///
    /// # Errors
    /// As [`Repository::add_key`]; if removing the old slot fails, [`Error::Backend`] (the new
    /// passphrase works already; remove the old slot with [`Repository::remove_key`]).
    pub async fn change_passphrase(
        &self,
        passphrase: SecretString,
        kdf: KdfParams,
    ) -> Result<KeyId> {
        let old = self.current_key();
        let new = self.add_key(passphrase, kdf).await?;
        *self.inner.current_key.lock().expect("current key lock") = Some(new);
        if let Some(old) = old {
            let path = key_path(&old);
            match self.inner.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::backend("delete", path.to_string())(e)),
            }
            tracing::info!(old = %old.short(), new = %new.short(), "passphrase changed");
        }
        Ok(new)
    }
}

/// A fresh random master key.
pub(crate) fn generate_master_key() -> Zeroizing<[u8; KEY_LEN]> {
    crypto::random_key()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn slot_round_trip_wrong_passphrase_and_damage() {
        let master = generate_master_key();
        let pass = SecretString::from("correct horse battery staple");
        let (id, bytes) = create_slot(&master, &pass, CHEAP).unwrap();
        assert_eq!(&bytes[..6], b"MBKK\x02\x00");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("\"memory_kib\": 64"), "{text}");
        assert!(!text.contains(&hex::encode(*master)));

        let slot = parse_slot(id, &bytes).unwrap();
        assert_eq!(*slot.unlock(&pass).unwrap(), *master);
        assert!(slot
            .unlock(&SecretString::from("Correct horse battery staple"))
            .is_none());
        assert_eq!(slot.info(Some(id)).kdf, CHEAP);
        assert!(slot.info(Some(id)).current);

        // Raising the cost in the file makes the derived key differ: no unlock.
        let tampered = String::from_utf8(bytes[HEADER_LEN..].to_vec())
            .unwrap()
            .replace("\"iterations\": 1", "\"iterations\": 2");
        let mut tampered_bytes = bytes[..HEADER_LEN].to_vec();
        tampered_bytes.extend_from_slice(tampered.as_bytes());
        let tampered_id = KeyId::from_bytes(*blake3::hash(&tampered_bytes).as_bytes());
        let slot = parse_slot(tampered_id, &tampered_bytes).unwrap();
        assert!(slot.unlock(&pass).is_none());

        let err = parse_slot(tampered_id, &bytes).unwrap_err();
        assert!(
            err.to_string().contains("does not hash to its name"),
            "{err}"
        );
    }

    #[test]
    fn parameters_are_checked() {
        let master = generate_master_key();
        let pass = SecretString::from("x");
        for bad in [
            KdfParams {
                memory_kib: 4,
                ..CHEAP
            },
            KdfParams {
                iterations: 0,
                ..CHEAP
            },
            KdfParams {
                parallelism: 0,
                ..CHEAP
            },
            KdfParams {
                memory_kib: 8 * 1024 * 1024,
                ..CHEAP
            },
        ] {
            let err = create_slot(&master, &pass, bad).unwrap_err();
            assert!(matches!(err, Error::InvalidKdfParams { .. }), "{err}");
        }
        let err = create_slot(&master, &SecretString::from(""), CHEAP).unwrap_err();
        assert!(matches!(err, Error::EmptyPassphrase), "{err}");
        assert!(CHEAP.is_below_recommended());
        assert!(!KdfParams::default().is_below_recommended());
        assert_eq!(
            KdfParams::RECOMMENDED.to_string(),
            "argon2id m=65536 KiB t=3 p=4"
        );
    }
}
