//! Module store: per protocol an active, a previous and a trial slot; manifests and ed25519 signatures; persistence through the Flash trait (bytes in, bytes out), safe against a write cut at any byte.
//!
//! Never loads or runs a module (that is [`guest`](crate::guest)'s job) and
//! never touches a file or a clock: the caller passes the [`Flash`] and the
//! time. The on-flash format is described in `docs/updating.md`.

mod flash;
mod module;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use flash::{Flash, FlashError, MemFlash};
pub use module::{
    MAX_MANIFEST_FIELD, MAX_SIGNATURE_BYTES, Manifest, Module, ModuleError, RequestedLimits,
    SIGNATURE_SECTION, SIGNING_CONTEXT, Signature, Trust, UNSIGNED_VERSION, VerifyError, sign,
    signed_message,
};

use module::sha256;

/// The two names state records alternate between.
const RECORD_NAMES: [&str; 2] = ["state-a", "state-b"];
/// `format` of the records this code writes and reads.
const RECORD_FORMAT: u32 = 1;
/// Separates a record's JSON from the hex sha256 of that JSON.
const FOOTER_TAG: &[u8] = b"\n#sha256:";
/// Footer length: the tag, 64 hex digits, a newline.
const FOOTER_LEN: usize = FOOTER_TAG.len() + 64 + 1;

/// One slot's module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotInfo {
    /// sha256 of the module's wasm (without the signature section): what is
    /// signed and what `wasmgate inspect` shows.
    #[serde(with = "hex32")]
    pub sha256: [u8; 32],
    /// sha256 of the stored file (wasm and signature section): the blob's
    /// name, `m-<hex>.wasm`, and its read-back check.
    #[serde(with = "hex32")]
    pub file_sha256: [u8; 32],
    /// The manifest's version.
    pub version: String,
    /// The key that signed it; `None` = unsigned (development mode).
    #[serde(with = "opt_hex32")]
    pub signed_by: Option<[u8; 32]>,
    /// Unix seconds (from the caller) when it was staged (trial) or last
    /// became active (active, previous).
    pub activated_at: u64,
    /// Size of the stored file in bytes.
    pub size: u64,
}

impl SlotInfo {
    /// Name of the blob holding the module file.
    pub fn blob_name(&self) -> String {
        blob_name(&self.file_sha256)
    }
}

/// A protocol's modules in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProtocolSlots {
    /// The module the protocol runs (none: the factory module from the config).
    pub active: Option<SlotInfo>,
    /// The module that ran before the active one (none: the factory module).
    pub previous: Option<SlotInfo>,
    /// A module staged but not activated yet.
    pub trial: Option<SlotInfo>,
    /// Why the last rollback happened.
    pub last_rollback: Option<String>,
    /// When it happened (Unix seconds, from the caller).
    pub last_rollback_at: Option<u64>,
    /// The active module has not passed its trial yet: a restart resumes the
    /// trial instead of trusting the module.
    pub on_trial: bool,
}

impl ProtocolSlots {
    fn slots(&self) -> impl Iterator<Item = &SlotInfo> {
        [&self.active, &self.previous, &self.trial]
            .into_iter()
            .flatten()
    }

    fn is_empty(&self) -> bool {
        self.slots().next().is_none() && self.last_rollback.is_none()
    }
}

/// Which slot of a protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Active,
    Previous,
    Trial,
}

impl Slot {
    fn of(self, slots: &ProtocolSlots) -> Option<&SlotInfo> {
        match self {
            Slot::Active => slots.active.as_ref(),
            Slot::Previous => slots.previous.as_ref(),
            Slot::Trial => slots.trial.as_ref(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Slot::Active => "active",
            Slot::Previous => "previous",
            Slot::Trial => "trial",
        }
    }
}

/// A store operation that failed. After any error the store's state is the
/// one before the operation, in memory and on flash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The flash failed.
    Flash(FlashError),
    /// The modules kept would take more than the store may hold.
    Full {
        /// Bytes the store would hold.
        needed: u64,
        /// Bytes it may hold.
        limit: u64,
    },
    /// The protocol has no previous module.
    NothingToRollBack,
    /// The protocol has no staged module.
    NoTrial,
    /// A module's file is missing or does not match its sha256.
    Corrupt(String),
    /// The module's manifest names another protocol.
    WrongProtocol {
        /// The manifest's protocol.
        module: String,
        /// The protocol it was staged for.
        slot: String,
    },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Flash(e) => e.fmt(f),
            Self::Full { needed, limit } => write!(
                f,
                "the module store would hold {needed} bytes; it may hold {limit} (roll back or upload a smaller module)"
            ),
            Self::NothingToRollBack => f.write_str("there is no previous module to roll back to"),
            Self::NoTrial => f.write_str("no module is staged"),
            Self::Corrupt(why) => write!(f, "module store damaged: {why}"),
            Self::WrongProtocol { module, slot } => {
                write!(f, "module is for protocol `{module}`, not `{slot}`")
            }
        }
    }
}

impl std::error::Error for StoreError {}

impl From<FlashError> for StoreError {
    fn from(e: FlashError) -> Self {
        StoreError::Flash(e)
    }
}

/// A state record: everything the store knows, one JSON document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    format: u32,
    seq: u64,
    protocols: BTreeMap<String, ProtocolSlots>,
}

impl Record {
    fn blob_names(&self) -> BTreeSet<String> {
        self.protocols
            .values()
            .flat_map(ProtocolSlots::slots)
            .map(SlotInfo::blob_name)
            .collect()
    }

    /// The record's bytes: JSON, then `\n#sha256:<hex of sha256 of the JSON>\n`.
    fn encode(&self) -> Vec<u8> {
        // Plain structs of strings and integers always serialise.
        let mut bytes = serde_json::to_vec(self).unwrap_or_default();
        let sum = hex::encode(sha256(&bytes));
        bytes.extend_from_slice(FOOTER_TAG);
        bytes.extend_from_slice(sum.as_bytes());
        bytes.push(b'\n');
        bytes
    }

    /// A record from its bytes; `Err` says why they are not an intact record.
    fn decode(bytes: &[u8]) -> Result<Record, String> {
        let Some(json_len) = bytes.len().checked_sub(FOOTER_LEN) else {
            return Err(format!("{} bytes is too short (cut?)", bytes.len()));
        };
        let (json, footer) = bytes.split_at(json_len);
        let sum = footer
            .strip_prefix(FOOTER_TAG)
            .and_then(|f| f.strip_suffix(b"\n"))
            .ok_or("no checksum footer (cut?)")?;
        if sum != hex::encode(sha256(json)).as_bytes() {
            return Err("checksum does not match (cut or damaged)".into());
        }
        let record: Record = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        if record.format != RECORD_FORMAT {
            return Err(format!(
                "record format {} (this runtime reads {RECORD_FORMAT})",
                record.format
            ));
        }
        Ok(record)
    }
}

fn blob_name(file_sha256: &[u8; 32]) -> String {
    format!("m-{}.wasm", hex::encode(file_sha256))
}

fn is_blob_name(name: &str) -> bool {
    name.strip_prefix("m-")
        .and_then(|n| n.strip_suffix(".wasm"))
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Bytes of the distinct module files `protocols` references.
fn referenced_bytes(protocols: &BTreeMap<String, ProtocolSlots>) -> u64 {
    let mut seen = BTreeSet::new();
    protocols
        .values()
        .flat_map(ProtocolSlots::slots)
        .filter(|s| seen.insert(s.file_sha256))
        .map(|s| s.size)
        .sum()
}

/// The module store on a [`Flash`].
///
/// On flash: module files as content-addressed blobs `m-<sha256 of the file>.wasm`,
/// and state records written alternately to `state-a` and `state-b`, each
/// JSON with a sequence number and a checksum footer. Every change writes its
/// blob completely first, then one record; a blob is removed only once no
/// intact record references it. A cut at any byte therefore leaves either the
/// old record or the new one as the newest intact record, and everything it
/// references intact.
pub struct Store<F: Flash> {
    flash: F,
    max_bytes: u64,
    /// The newest intact record: the store's state.
    state: Record,
    /// Where `state` is on flash; `None` before the first write.
    state_name: Option<&'static str>,
    /// Blobs the other (older) record references; kept until it is overwritten.
    older_blobs: BTreeSet<String>,
}

impl<F: Flash> std::fmt::Debug for Store<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("max_bytes", &self.max_bytes)
            .field("seq", &self.state.seq)
            .field("protocols", &self.state.protocols)
            .finish_non_exhaustive()
    }
}

impl<F: Flash> Store<F> {
    /// Opens the store on `flash`, reading the newest intact state record. A
    /// fresh flash is an empty store. `max_bytes`: total module bytes the store
    /// may hold ([`StoreError::Full`], for a 507, when exceeded).
    ///
    /// A damaged record is skipped (the other one is used). A slot whose file is
    /// missing or damaged is emptied; if that is the active slot, the previous
    /// module becomes active and `last_rollback` says why. Blobs no record
    /// references (left by a cut update) are removed, best effort.
    ///
    /// # Errors
    ///
    /// [`StoreError::Flash`] if the flash cannot be read.
    pub fn open(flash: F, max_bytes: u64) -> Result<Self, StoreError> {
        let mut intact = Vec::new();
        for name in RECORD_NAMES {
            let Some(bytes) = flash.read(name)? else {
                continue;
            };
            match Record::decode(&bytes) {
                Ok(record) => intact.push((name, record)),
                Err(why) => tracing::warn!(record = name, "skipping a module store record: {why}"),
            }
        }
        intact.sort_by_key(|(_, r)| r.seq);
        let newest = intact.pop();
        let older = intact.pop();
        let mut store = Store {
            flash,
            max_bytes,
            state_name: newest.as_ref().map(|(name, _)| *name),
            state: newest.map(|(_, r)| r).unwrap_or_default(),
            older_blobs: older.map(|(_, r)| r.blob_names()).unwrap_or_default(),
        };
        store.drop_damaged_slots()?;
        store.collect_garbage();
        Ok(store)
    }

    /// Every protocol the store has something for, by name.
    pub fn protocols(&self) -> impl Iterator<Item = (&str, &ProtocolSlots)> {
        self.state
            .protocols
            .iter()
            .map(|(name, slots)| (name.as_str(), slots))
    }

    /// A protocol's slots, `None` if the store has nothing for it.
    pub fn slots(&self, protocol: &str) -> Option<&ProtocolSlots> {
        self.state.protocols.get(protocol)
    }

    /// Bytes of the module files the store holds (each distinct file once).
    pub fn used_bytes(&self) -> u64 {
        referenced_bytes(&self.state.protocols)
    }

    /// Bytes the store may hold.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Writes the module's file (unless the same file is already stored), then
    /// a state record with it as `protocol`'s trial. A trial already staged is
    /// replaced. `trust` (from [`Module::verify`]) is recorded as `signed_by`.
    ///
    /// # Errors
    ///
    /// [`StoreError::WrongProtocol`] if the manifest names another protocol;
    /// [`StoreError::Full`] if the store would then hold more than `max_bytes`
    /// (counting the files that stay referenced, each once);
    /// [`StoreError::Flash`] or [`StoreError::Corrupt`] (the file does not read
    /// back) with the store unchanged.
    pub fn stage(
        &mut self,
        protocol: &str,
        module: &Module,
        trust: &Trust,
        now_unix: u64,
    ) -> Result<(), StoreError> {
        if module.manifest.protocol != protocol {
            return Err(StoreError::WrongProtocol {
                module: module.manifest.protocol.clone(),
                slot: protocol.to_string(),
            });
        }
        let file = module.to_bytes();
        let info = SlotInfo {
            sha256: module.sha256,
            file_sha256: sha256(&file),
            version: module.manifest.version.clone(),
            signed_by: match trust {
                Trust::Signed { key } => Some(*key),
                Trust::Unsigned => None,
            },
            activated_at: now_unix,
            size: file.len() as u64,
        };
        let mut protocols = self.state.protocols.clone();
        protocols.entry(protocol.to_string()).or_default().trial = Some(info.clone());
        let needed = referenced_bytes(&protocols);
        if needed > self.max_bytes {
            return Err(StoreError::Full {
                needed,
                limit: self.max_bytes,
            });
        }
        self.write_blob(&info, &file)?;
        self.commit(protocols)
    }

    /// The trial becomes active, the old active becomes previous (the old
    /// previous is dropped and its file freed). One state record write.
    ///
    /// # Errors
    ///
    /// [`StoreError::NoTrial`]; [`StoreError::Flash`] with the store unchanged.
    pub fn activate(&mut self, protocol: &str, now_unix: u64) -> Result<(), StoreError> {
        let mut protocols = self.state.protocols.clone();
        let slots = protocols.get_mut(protocol).ok_or(StoreError::NoTrial)?;
        let mut trial = slots.trial.take().ok_or(StoreError::NoTrial)?;
        trial.activated_at = now_unix;
        slots.previous = slots.active.replace(trial);
        slots.on_trial = true;
        self.commit(protocols)
    }

    /// The active module passed its trial.
    ///
    /// # Errors
    ///
    /// [`StoreError::Flash`] with the store unchanged.
    pub fn pass_trial(&mut self, protocol: &str) -> Result<(), StoreError> {
        if !self.slots(protocol).is_some_and(|s| s.on_trial) {
            return Ok(());
        }
        let mut protocols = self.state.protocols.clone();
        if let Some(slots) = protocols.get_mut(protocol) {
            slots.on_trial = false;
        }
        self.commit(protocols)
    }

    /// Discards a staged trial that failed validation (its file is freed).
    ///
    /// # Errors
    ///
    /// [`StoreError::NoTrial`]; [`StoreError::Flash`] with the store unchanged.
    pub fn discard_trial(&mut self, protocol: &str) -> Result<(), StoreError> {
        let mut protocols = self.state.protocols.clone();
        let slots = protocols.get_mut(protocol).ok_or(StoreError::NoTrial)?;
        slots.trial.take().ok_or(StoreError::NoTrial)?;
        self.commit(protocols)
    }

    /// The previous module becomes active again; the failed active one is
    /// dropped (its file freed). `reason` is kept in `last_rollback`.
    ///
    /// # Errors
    ///
    /// [`StoreError::NothingToRollBack`] if there is no previous module (the
    /// caller may fall back to the factory module with
    /// [`clear_active`](Self::clear_active)); [`StoreError::Flash`] with the
    /// store unchanged.
    pub fn rollback(
        &mut self,
        protocol: &str,
        reason: &str,
        now_unix: u64,
    ) -> Result<(), StoreError> {
        let mut protocols = self.state.protocols.clone();
        let slots = protocols
            .get_mut(protocol)
            .ok_or(StoreError::NothingToRollBack)?;
        let mut previous = slots.previous.take().ok_or(StoreError::NothingToRollBack)?;
        previous.activated_at = now_unix;
        slots.active = Some(previous);
        slots.on_trial = false;
        slots.last_rollback = Some(reason.to_string());
        slots.last_rollback_at = Some(now_unix);
        self.commit(protocols)
    }

    /// Empties the active slot, so the protocol runs its factory module (the
    /// one in the device config) again; `reason` is kept in `last_rollback`.
    /// The previous and trial slots are left as they are.
    ///
    /// # Errors
    ///
    /// [`StoreError::Flash`] with the store unchanged.
    pub fn clear_active(
        &mut self,
        protocol: &str,
        reason: &str,
        now_unix: u64,
    ) -> Result<(), StoreError> {
        let mut protocols = self.state.protocols.clone();
        let slots = protocols.entry(protocol.to_string()).or_default();
        slots.active = None;
        slots.on_trial = false;
        slots.last_rollback = Some(reason.to_string());
        slots.last_rollback_at = Some(now_unix);
        self.commit(protocols)
    }

    /// The active module's file (wasm and signature section), read back and
    /// checked against its sha256; `None` if the slot is empty.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] if the file is missing or damaged,
    /// [`StoreError::Flash`] if it cannot be read.
    pub fn active_module(&self, protocol: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.module(protocol, Slot::Active)
    }

    /// The previous module's file, as [`active_module`](Self::active_module).
    ///
    /// # Errors
    ///
    /// As [`active_module`](Self::active_module).
    pub fn previous_module(&self, protocol: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.module(protocol, Slot::Previous)
    }

    /// The trial module's file, as [`active_module`](Self::active_module).
    ///
    /// # Errors
    ///
    /// As [`active_module`](Self::active_module).
    pub fn trial_module(&self, protocol: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.module(protocol, Slot::Trial)
    }

    /// The flash, for tests.
    pub fn into_flash(self) -> F {
        self.flash
    }

    fn module(&self, protocol: &str, slot: Slot) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(info) = self.slots(protocol).and_then(|s| slot.of(s)) else {
            return Ok(None);
        };
        let name = info.blob_name();
        match self.flash.read(&name)? {
            Some(bytes) if sha256(&bytes) == info.file_sha256 => Ok(Some(bytes)),
            found => Err(StoreError::Corrupt(format!(
                "the {} module of `{protocol}` ({name}) is {}",
                slot.name(),
                if found.is_some() {
                    "damaged"
                } else {
                    "missing"
                }
            ))),
        }
    }

    /// Is the blob for `info` on flash and intact?
    fn blob_intact(&self, info: &SlotInfo) -> Result<bool, FlashError> {
        Ok(self
            .flash
            .read(&info.blob_name())?
            .is_some_and(|bytes| sha256(&bytes) == info.file_sha256))
    }

    /// Writes a module file unless it is already there intact (so a file that
    /// a record references is never rewritten, and never half-overwritten).
    fn write_blob(&mut self, info: &SlotInfo, file: &[u8]) -> Result<(), StoreError> {
        if self.blob_intact(info)? {
            return Ok(());
        }
        let name = info.blob_name();
        self.flash.write(&name, file)?;
        if !self.blob_intact(info)? {
            return Err(StoreError::Corrupt(format!(
                "{name} reads back differently from what was written"
            )));
        }
        Ok(())
    }

    /// Writes a record with `protocols` over the older record, then frees the
    /// blobs neither record references. On error nothing changed in memory;
    /// on flash the older record may be gone, which the newest does not need.
    fn commit(&mut self, mut protocols: BTreeMap<String, ProtocolSlots>) -> Result<(), StoreError> {
        protocols.retain(|_, slots| !slots.is_empty());
        let record = Record {
            format: RECORD_FORMAT,
            seq: self.state.seq + 1,
            protocols,
        };
        let target = match self.state_name {
            Some(name) if name == RECORD_NAMES[0] => RECORD_NAMES[1],
            _ => RECORD_NAMES[0],
        };
        self.flash.write(target, &record.encode())?;
        self.older_blobs = self.state.blob_names();
        self.state = record;
        self.state_name = Some(target);
        self.collect_garbage();
        Ok(())
    }

    /// Removes module blobs that neither the newest nor the older record
    /// references. Best effort: a failure leaves garbage for next time, and
    /// the operation that called it has already succeeded.
    fn collect_garbage(&mut self) {
        let mut keep = self.state.blob_names();
        keep.extend(self.older_blobs.iter().cloned());
        let names = match self.flash.list() {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!("module store: cannot list the flash to free space: {e}");
                return;
            }
        };
        for name in names {
            if is_blob_name(&name)
                && !keep.contains(&name)
                && let Err(e) = self.flash.remove(&name)
            {
                tracing::warn!("module store: cannot remove {name}: {e}");
                return;
            }
        }
    }

    /// At open: empties slots whose file is missing or damaged (only possible
    /// if something other than this code changed the flash); a lost active
    /// module is replaced by the previous one. In memory only: the next
    /// record written persists it.
    fn drop_damaged_slots(&mut self) -> Result<(), StoreError> {
        let mut protocols = std::mem::take(&mut self.state.protocols);
        for (protocol, slots) in &mut protocols {
            let mut lost_active = None;
            for (slot, info) in [
                (Slot::Active, &mut slots.active),
                (Slot::Previous, &mut slots.previous),
                (Slot::Trial, &mut slots.trial),
            ] {
                let Some(i) = info.as_ref() else { continue };
                if self.blob_intact(i)? {
                    continue;
                }
                tracing::error!(
                    protocol,
                    "module store: the {} module ({}) is missing or damaged; dropping it",
                    slot.name(),
                    i.blob_name()
                );
                if slot == Slot::Active {
                    lost_active = Some(i.blob_name());
                }
                *info = None;
            }
            if let Some(lost) = lost_active {
                slots.active = slots.previous.take();
                slots.last_rollback = Some(format!(
                    "the active module's file ({lost}) was missing or damaged at start-up"
                ));
            }
        }
        self.state.protocols = protocols;
        Ok(())
    }
}

/// `[u8; 32]` as a hex string.
mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0; 32];
        hex::decode_to_slice(&text, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

/// `Option<[u8; 32]>` as a hex string or null.
mod opt_hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => s.serialize_str(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        let mut out = [0; 32];
        hex::decode_to_slice(&text, &mut out).map_err(serde::de::Error::custom)?;
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests;
