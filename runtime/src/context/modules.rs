//! Module lifecycle inside the context: which module each protocol runs (the
//! factory one from the config, or one uploaded to the store), live swaps, the
//! trial period with automatic rollback, and the admin API's requests.

use std::time::Instant;

use serde_json::{Value, json};
use wasmi::Engine;

use super::{Backend, ConnId, Context};
use crate::admin::{self, Route};
use crate::config::GuestLimits;
use crate::guest::{ABI_VERSION, Guest, LoadError};
use crate::store::{Flash, Module, SlotInfo, Store, StoreError, Trust};

/// Where the module a protocol runs came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ModuleInfo {
    /// `factory` (the device config), `uploaded`, or `native`.
    pub source: &'static str,
    pub version: String,
    pub sha256: Option<[u8; 32]>,
    pub signed_by: Option<[u8; 32]>,
    pub activated_at: u64,
}

impl ModuleInfo {
    pub fn native() -> Self {
        ModuleInfo {
            source: "native",
            version: String::new(),
            sha256: None,
            signed_by: None,
            activated_at: 0,
        }
    }

    fn factory() -> Self {
        ModuleInfo {
            source: "factory",
            version: "factory".into(),
            ..Self::native()
        }
    }

    fn uploaded(slot: &SlotInfo) -> Self {
        ModuleInfo {
            source: "uploaded",
            version: slot.version.clone(),
            sha256: Some(slot.sha256),
            signed_by: slot.signed_by,
            activated_at: slot.activated_at,
        }
    }

    fn json(&self) -> Value {
        json!({
            "source": self.source,
            "version": self.version,
            "sha256": self.sha256.map(hex::encode),
            "signed_by": self.signed_by.map(hex::encode),
            "activated_at": self.activated_at,
        })
    }
}

/// Per-protocol counters for the status page.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counters {
    pub callbacks: u64,
    pub faults: u64,
    /// Faults of the module running now, since it was activated.
    pub faults_since_activation: u64,
}

/// A freshly uploaded module's first callbacks.
#[derive(Debug, Clone, Copy)]
pub(super) struct Trial {
    /// [`Guest::generation`] of the module on trial.
    pub generation: u64,
    pub callbacks: u32,
    pub faults: u32,
}

/// An admin request being received.
#[derive(Debug)]
pub(super) struct AdminRequest {
    pub route: Route,
    pub body: Vec<u8>,
}

/// The module a protocol starts with: the store's active one if it has one and
/// it loads, else the factory module from the config.
pub(super) fn load_protocol(
    engine: &Engine,
    store: &Store<Box<dyn Flash>>,
    admin: Option<&crate::admin::AdminConfig>,
    protocol: &str,
    factory: &[u8],
    limits: GuestLimits,
) -> Result<(Guest, ModuleInfo), LoadError> {
    if let Some(slot) = store.slots(protocol).and_then(|s| s.active.clone()) {
        // The device's trust settings may have changed since the upload: an
        // uploaded module runs only if it would be accepted today.
        let loaded = store
            .active_module(protocol)
            .map_err(|e| e.to_string())
            .and_then(|bytes| bytes.ok_or_else(|| "its file is missing".to_string()))
            .and_then(|bytes| Module::parse(&bytes, protocol).map_err(|e| e.to_string()))
            .and_then(|m| match admin {
                None => Err("the admin API is off: only factory modules run".to_string()),
                Some(a) => m
                    .verify(&a.trusted_keys, a.allow_unsigned)
                    .map(|_| m)
                    .map_err(|e| e.to_string()),
            })
            .and_then(|m| {
                Guest::load(engine, protocol, &m.wasm, limits).map_err(|e| e.to_string())
            });
        match loaded {
            Ok(guest) => {
                tracing::info!(protocol, version = %slot.version, "running the uploaded module");
                return Ok((guest, ModuleInfo::uploaded(&slot)));
            }
            Err(e) => tracing::error!(
                protocol,
                "the uploaded module cannot run ({e}); running the factory module"
            ),
        }
    }
    Ok((
        Guest::load(engine, protocol, factory, limits)?,
        ModuleInfo::factory(),
    ))
}

/// An admin answer: status and JSON body.
type Answer = (u16, String);

fn error(status: u16, msg: impl AsRef<str>) -> Answer {
    (status, admin::error_json(msg.as_ref()))
}

impl Context {
    /// Wall-clock time now, in Unix seconds, for the store.
    fn unix_now(&self, now: Instant) -> u64 {
        self.unix_at_epoch + now.saturating_duration_since(self.epoch).as_secs()
    }

    /// Tells the context the wall-clock time (Unix seconds) at `now`; the
    /// store's "activated at" times come from it.
    pub fn set_unix_time(&mut self, now: Instant, unix_secs: u64) {
        let since_epoch = now.saturating_duration_since(self.epoch).as_secs();
        self.unix_at_epoch = unix_secs.saturating_sub(since_epoch);
    }

    /// Takes a request head for the admin API if it is one. Returns true when
    /// the request was taken (answered, or its body is awaited).
    pub(super) fn admin_head(&mut self, id: ConnId, path: &str) -> bool {
        let Some(cfg) = self.config.admin.as_ref() else {
            return false;
        };
        if !admin::is_admin_path(path) {
            return false;
        }
        let conn = self.conn(id).expect("caller checked");
        let listener = &self.config.listeners[conn.listener];
        if cfg.listener.as_ref().is_some_and(|l| *l != listener.name) {
            return false;
        }
        let req = conn.http.as_ref().and_then(|h| h.request()).expect("head");
        if !admin::authorized(req.header("authorization"), &cfg.token) {
            tracing::warn!(peer = %conn.peer, "admin request without a valid token");
            self.answer_json(id, error(401, "missing or wrong bearer token"));
            return true;
        }
        let route = admin::route(req.method(), path);
        let declared = req.content_length().unwrap_or(0);
        if matches!(route, Route::Upload(_)) && declared > cfg.max_module_bytes as u64 {
            let msg = format!(
                "module of {declared} bytes is larger than the device takes ({} bytes)",
                cfg.max_module_bytes
            );
            self.answer_json(id, error(413, msg));
            return true;
        }
        let conn = self.conn_mut(id).expect("caller checked");
        conn.admin = Some(AdminRequest {
            route,
            body: Vec::new(),
        });
        true
    }

    /// A piece of an admin request's body.
    pub(super) fn admin_body(&mut self, id: ConnId, piece: &[u8]) {
        let max = self.config.admin.as_ref().map_or(0, |a| a.max_module_bytes);
        if let Some(req) = self.conn_mut(id).and_then(|c| c.admin.as_mut()) {
            if req.body.len() + piece.len() > max {
                req.route = Route::NotFound; // answered 413 at completion
                req.body.clear();
                req.body.push(0); // marks "too large"
            } else if !(req.route == Route::NotFound && req.body == [0]) {
                req.body.extend_from_slice(piece);
            }
        }
    }

    /// The admin request is complete: run it and answer.
    pub(super) fn admin_complete(&mut self, id: ConnId, now: Instant) {
        let Some(req) = self.conn_mut(id).and_then(|c| c.admin.take()) else {
            return;
        };
        let answer = match &req.route {
            Route::NotFound if req.body == [0] => error(413, "module larger than the device takes"),
            Route::NotFound => error(404, "no such admin endpoint"),
            Route::MethodNotAllowed(m) => error(405, format!("use {m} here")),
            Route::Status => (200, self.status_json().to_string()),
            Route::Modules => (200, self.modules_json().to_string()),
            Route::Upload(protocol) => self.upload(protocol, &req.body, now),
            Route::Rollback(protocol) => self.manual_rollback(protocol, now),
        };
        self.answer_json(id, answer);
    }

    fn answer_json(&mut self, id: ConnId, (status, body): Answer) {
        // A runtime answer goes out in one piece: one that does not fit the
        // connection's tx buffer is replaced by an error, never cut.
        let room = self.config.limits.http.tx_buffer_bytes.saturating_sub(256);
        let (status, body) = if body.len() > room {
            let msg = format!(
                "the answer ({} bytes) does not fit limits.tx_buffer_bytes ({}); raise it",
                body.len(),
                self.config.limits.http.tx_buffer_bytes
            );
            error(507, msg)
        } else {
            (status, body)
        };
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if let Some(http) = conn.http.as_mut() {
            http.respond_simple(status, "application/json", body.as_bytes(), false);
            if http.finish_response() == crate::http::Completion::Close {
                conn.abort = true;
            }
        }
    }

    fn protocol_index(&self, name: &str) -> Option<usize> {
        self.protocols.iter().position(|p| p.name == name)
    }

    /// `PUT /_admin/modules/{protocol}`: validate, persist, activate.
    fn upload(&mut self, protocol: &str, body: &[u8], now: Instant) -> Answer {
        let Some(p) = self.protocol_index(protocol) else {
            return error(404, format!("this device has no protocol `{protocol}`"));
        };
        if matches!(self.protocols[p].backend, Backend::Native(_)) {
            return error(
                409,
                format!("protocol `{protocol}` is built in and cannot be replaced"),
            );
        }
        let cfg = self
            .config
            .admin
            .clone()
            .expect("admin requests need admin config");
        let module = match Module::parse(body, protocol) {
            Ok(m) => m,
            Err(e) => return error(400, e.to_string()),
        };
        if module.manifest.protocol != protocol {
            return error(
                409,
                format!(
                    "module is for protocol `{}`, uploaded to `{protocol}`",
                    module.manifest.protocol
                ),
            );
        }
        if module.manifest.abi != ABI_VERSION {
            return error(
                409,
                format!(
                    "module speaks guest ABI v{}; this device speaks v{ABI_VERSION}",
                    module.manifest.abi
                ),
            );
        }
        let trust = match module.verify(&cfg.trusted_keys, cfg.allow_unsigned) {
            Ok(trust) => trust,
            Err(e) => return error(403, e.to_string()),
        };
        let limits = self.config.guest;
        let requested = &module.manifest.limits;
        let over = |what: &str, asked: Option<u64>, allowed: u64| {
            asked.filter(|&a| a > allowed).map(|a| {
                error(
                    409,
                    format!("module asks for {a} {what}; this device allows {allowed}"),
                )
            })
        };
        let too_much = over(
            "memory pages",
            requested.max_memory_pages.map(u64::from),
            limits.max_memory_pages.into(),
        )
        .or_else(|| {
            over(
                "fuel per callback",
                requested.fuel_per_callback,
                limits.fuel_per_callback,
            )
        });
        if let Some(answer) = too_much {
            return answer;
        }
        // The trial instantiation (and PROTOCOL_INIT) happens here.
        let guest = match Guest::load(&self.engine, protocol, &module.wasm, limits) {
            Ok(g) => g,
            Err(e) => return error(400, e.to_string()),
        };
        let unix = self.unix_now(now);
        match self.store.stage(protocol, &module, &trust, unix) {
            Ok(()) => {}
            Err(e @ StoreError::Full { .. }) => return error(507, e.to_string()),
            Err(e) => return error(500, format!("cannot write the module: {e}")),
        }
        if let Err(e) = self.store.activate(protocol, unix) {
            let _ = self.store.discard_trial(protocol);
            return error(500, format!("cannot activate the module: {e}"));
        }
        let info = self
            .store
            .slots(protocol)
            .and_then(|s| s.active.as_ref())
            .map(ModuleInfo::uploaded)
            .expect("just activated");
        let generation = guest.generation();
        self.swap(p, guest, info.clone(), now);
        self.protocols[p].trial = Some(Trial {
            generation,
            callbacks: 0,
            faults: 0,
        });
        tracing::info!(
            protocol,
            version = %info.version,
            signed = matches!(trust, Trust::Signed { .. }),
            "module uploaded and activated; on trial for {} callbacks",
            cfg.trial_callbacks
        );
        (
            200,
            json!({
                "protocol": protocol,
                "state": "trial",
                "module": info.json(),
                "trial_callbacks": cfg.trial_callbacks,
                "trial_max_faults": cfg.trial_max_faults,
            })
            .to_string(),
        )
    }

    /// New connections of protocol `p` go to `guest`; the running instance
    /// finishes its transactions and is dropped after.
    fn swap(&mut self, p: usize, guest: Guest, info: ModuleInfo, now: Instant) {
        let now_us = self.now_us(now);
        let state = &mut self.protocols[p];
        let Backend::Wasm {
            guest: running,
            instances,
            current,
        } = &mut state.backend
        else {
            return;
        };
        let old_guest = std::mem::replace(running, guest);
        let old_info = std::mem::replace(&mut state.running, info);
        state.previous = Some((old_guest, old_info));
        state.counters.faults_since_activation = 0;
        state.trial = None;
        if let Some(i) = current.take()
            && let Some(inst) = instances[i].as_mut()
        {
            inst.retire();
            if inst.bound() == 0 {
                inst.destroy(now_us);
                instances[i] = None;
            }
        }
        // Long-lived connections (WebSockets) of the protocol are all on the
        // old module now (its current instance, or one a trap retired before):
        // they get a deadline.
        let drain = self
            .config
            .admin
            .as_ref()
            .map_or(std::time::Duration::from_secs(60), |a| a.drain_timeout);
        for slot in 0..self.conns.len() {
            let Some(conn) = self.conns[slot].as_mut() else {
                continue;
            };
            if conn.upgraded && conn.binding.is_some_and(|b| b.protocol == p) {
                conn.end_ws_by(now + drain);
                let id = conn.id;
                self.touch_now(id);
            }
        }
    }

    /// Counts a callback of protocol `p` (made by an instance of `generation`)
    /// and rolls a module on trial back when it has faulted too often.
    pub(super) fn count_callback(
        &mut self,
        p: usize,
        generation: u64,
        callbacks: u32,
        fault: bool,
        now: Instant,
    ) {
        if fault && callbacks > 1 {
            // Only the last callback of an entry can fault: the ones before
            // it count first, as they would have one by one (a trial may
            // pass on them before the fault).
            self.count_callback(p, generation, callbacks - 1, false, now);
            self.count_callback(p, generation, 1, true, now);
            return;
        }
        let state = &mut self.protocols[p];
        state.counters.callbacks += u64::from(callbacks);
        if fault {
            state.counters.faults += 1;
            if generation_matches(&state.backend, generation) {
                state.counters.faults_since_activation += 1;
            }
        }
        let Some(cfg) = self.config.admin.as_ref() else {
            return;
        };
        let (limit, window) = (cfg.trial_max_faults, cfg.trial_callbacks);
        let Some(trial) = state.trial.as_mut().filter(|t| t.generation == generation) else {
            return;
        };
        trial.callbacks += callbacks;
        trial.faults += u32::from(fault);
        if trial.faults > limit {
            let reason = format!(
                "{} faults in its first {} callbacks (at most {limit} allowed)",
                trial.faults, trial.callbacks
            );
            let name = state.name.clone();
            tracing::warn!(protocol = %name, "rolling back the new module: {reason}");
            if let Err(e) = self.rollback(p, &reason, now) {
                tracing::error!(protocol = %name, "automatic rollback failed: {e}");
            }
        } else if trial.callbacks >= window {
            tracing::info!(protocol = %state.name, "the new module passed its trial");
            state.trial = None;
            let name = state.name.clone();
            if let Err(e) = self.store.pass_trial(&name) {
                tracing::error!(protocol = %name, "cannot record the passed trial: {e}");
            }
        }
    }

    /// `POST /_admin/modules/{protocol}/rollback`.
    fn manual_rollback(&mut self, protocol: &str, now: Instant) -> Answer {
        let Some(p) = self.protocol_index(protocol) else {
            return error(404, format!("this device has no protocol `{protocol}`"));
        };
        match self.rollback(p, "rolled back by the operator", now) {
            Ok(()) => (
                200,
                json!({
                    "protocol": protocol,
                    "state": "rolled back",
                    "module": self.protocols[p].running.json(),
                })
                .to_string(),
            ),
            Err(e) => error(409, e),
        }
    }

    /// Puts back the module that ran before the current one, in the store and
    /// live.
    fn rollback(&mut self, p: usize, reason: &str, now: Instant) -> Result<(), String> {
        let name = self.protocols[p].name.clone();
        let unix = self.unix_now(now);
        let Some((guest, info)) = self.previous_module(p)? else {
            return Err(format!(
                "protocol `{name}` has no previous module to roll back to"
            ));
        };
        match self.store.rollback(&name, reason, unix) {
            Ok(()) | Err(StoreError::NothingToRollBack) => {}
            Err(e) => return Err(format!("cannot record the rollback: {e}")),
        }
        if info.source == "factory" {
            // Back to the config's module: the store must not bring the
            // failed upload back at the next start.
            self.store
                .clear_active(&name, reason, unix)
                .map_err(|e| format!("cannot record the rollback: {e}"))?;
        }
        self.swap(p, guest, info, now);
        let state = &mut self.protocols[p];
        state.previous = None; // the failed module is not a rollback target
        state.last_rollback = Some(reason.to_string());
        Ok(())
    }

    /// The module to roll back to: the one kept compiled since the last swap,
    /// or else the store's previous slot, or the factory module.
    fn previous_module(&mut self, p: usize) -> Result<Option<(Guest, ModuleInfo)>, String> {
        if let Some(prev) = self.protocols[p].previous.take() {
            return Ok(Some(prev));
        }
        let name = self.protocols[p].name.clone();
        let limits = self.config.guest;
        let slots = self.store.slots(&name).cloned();
        if let Some(prev) = slots.as_ref().and_then(|s| s.previous.clone()) {
            // Roll the store back first, then load what it made active.
            let bytes = self
                .store
                .previous_module(&name)
                .map_err(|e| e.to_string())?
                .ok_or("the previous module's file is missing")?;
            let module = Module::parse(&bytes, &name).map_err(|e| e.to_string())?;
            let guest = Guest::load(&self.engine, &name, &module.wasm, limits)
                .map_err(|e| e.to_string())?;
            return Ok(Some((guest, ModuleInfo::uploaded(&prev))));
        }
        if self.protocols[p].running.source == "uploaded" {
            let factory = self
                .config
                .protocols
                .iter()
                .find(|c| c.name == name)
                .and_then(|c| match &c.handler {
                    crate::config::Handler::Wasm(bytes) => Some(bytes.clone()),
                    crate::config::Handler::Native(_) => None,
                });
            if let Some(bytes) = factory {
                let guest =
                    Guest::load(&self.engine, &name, &bytes, limits).map_err(|e| e.to_string())?;
                return Ok(Some((guest, ModuleInfo::factory())));
            }
        }
        Ok(None)
    }

    /// `GET /_admin/status`.
    fn status_json(&self) -> Value {
        let protocols: Vec<Value> = self
            .protocols
            .iter()
            .map(|p| {
                let (instances, fuel, memory) = match &p.backend {
                    Backend::Wasm { instances, .. } => instances
                        .iter()
                        .flatten()
                        .fold((0, 0, 0), |(n, fuel, mem), i| {
                            (n + 1, fuel + i.fuel_used(), mem + i.memory_bytes())
                        }),
                    Backend::Native(_) => (0, 0, 0),
                };
                json!({
                    "name": p.name,
                    "callbacks": p.counters.callbacks,
                    "faults": p.counters.faults,
                    "fuel_used_by_live_instances": fuel,
                    "instances": instances,
                    "guest_memory_bytes": memory,
                })
            })
            .collect();
        let dev = self.config.admin.as_ref().is_some_and(|a| a.allow_unsigned);
        json!({
            "device": self.config.name,
            "development_mode": dev,
            "connections": self.connections(),
            "max_connections": self.config.limits.max_connections,
            "stats": {
                "accepted": self.stats.accepted,
                "refused": self.stats.refused,
                "requests": self.stats.requests,
                "callbacks": self.stats.callbacks,
                "entries": self.stats.entries,
                "faults": self.stats.faults,
                "instances_created": self.stats.instances,
            },
            "protocols": protocols,
        })
    }

    /// `GET /_admin/modules`.
    fn modules_json(&self) -> Value {
        let slot = |s: &Option<SlotInfo>| s.as_ref().map(|s| ModuleInfo::uploaded(s).json());
        let list: Vec<Value> = self
            .protocols
            .iter()
            .map(|p| {
                let slots = self.store.slots(&p.name);
                let state = if p.trial.is_some() { "trial" } else { "active" };
                json!({
                    "protocol": p.name,
                    "state": state,
                    "running": p.running.json(),
                    "faults_since_activation": p.counters.faults_since_activation,
                    "last_rollback": p.last_rollback.clone()
                        .or_else(|| slots.and_then(|s| s.last_rollback.clone())),
                    "slots": {
                        "active": slots.and_then(|s| slot(&s.active)),
                        "previous": slots.and_then(|s| slot(&s.previous)),
                        "trial": slots.and_then(|s| slot(&s.trial)),
                    },
                })
            })
            .collect();
        json!({ "modules": list })
    }
}

fn generation_matches(backend: &Backend, generation: u64) -> bool {
    matches!(backend, Backend::Wasm { guest, .. } if guest.generation() == generation)
}
