//! Guest modules: the wasmi engine, validation of a module against ABI v1, one
//! instance per active module with fuel and a memory limit, and the `lws` host
//! functions. Never does network I/O: host calls act on the sans-IO
//! [`http::ServerConn`](crate::http::ServerConn) lent to them for one callback.

mod host;
mod load;

use std::net::SocketAddr;
use std::time::Instant;

use wasmi::{
    Engine, Memory, Module, Store, StoreLimits, StoreLimitsBuilder, TypedFunc, WasmParams,
    WasmResults,
};

use crate::config::GuestLimits;
use crate::http::{Completion, ServerConn};

pub use load::LoadError;

/// The guest ABI version this runtime speaks.
pub const ABI_VERSION: u32 = 1;
/// Size of a WebAssembly page.
pub const PAGE_SIZE: u64 = 65_536;

/// Callback reasons, with libwebsockets 4.3's numbers.
pub mod reason {
    /// Once, after an instance is created.
    pub const PROTOCOL_INIT: i32 = 27;
    /// Once, before an instance is dropped.
    pub const PROTOCOL_DESTROY: i32 = 28;
    /// A request is bound to the protocol; its per-session data was zeroed.
    pub const HTTP_BIND_PROTOCOL: i32 = 49;
    /// A request head is complete; `in` is the URL path.
    pub const HTTP: i32 = 12;
    /// A piece of the request body.
    pub const HTTP_BODY: i32 = 13;
    /// The whole request body was delivered.
    pub const HTTP_BODY_COMPLETION: i32 = 14;
    /// The connection can take more output.
    pub const HTTP_WRITEABLE: i32 = 16;
    /// The transaction ended.
    pub const HTTP_DROP_PROTOCOL: i32 = 50;
    /// The connection closed while a transaction was bound.
    pub const CLOSED_HTTP: i32 = 5;
    /// A client connection could not be made; `in` says why.
    pub const CLIENT_CONNECTION_ERROR: i32 = 1;
    /// A client connection's handshake succeeded.
    pub const CLIENT_ESTABLISHED: i32 = 3;
    /// A piece of a message on a client connection.
    pub const CLIENT_RECEIVE: i32 = 8;
    /// A pong on a client connection.
    pub const CLIENT_RECEIVE_PONG: i32 = 9;
    /// A client connection can take more output.
    pub const CLIENT_WRITEABLE: i32 = 10;
    /// A client connection ended.
    pub const CLIENT_CLOSED: i32 = 75;
    /// A WebSocket upgrade asks for the protocol; non-zero refuses it.
    pub const FILTER_PROTOCOL_CONNECTION: i32 = 20;
    /// A WebSocket session is open.
    pub const ESTABLISHED: i32 = 0;
    /// A piece of a WebSocket message.
    pub const RECEIVE: i32 = 6;
    /// A pong arrived.
    pub const RECEIVE_PONG: i32 = 7;
    /// The WebSocket connection can take more output.
    pub const SERVER_WRITEABLE: i32 = 11;
    /// The peer started the close handshake.
    pub const WS_PEER_INITIATED_CLOSE: i32 = 38;
    /// The WebSocket session ended.
    pub const CLOSED: i32 = 4;
    /// The connection's timer (`lws_set_timer_usecs`) is up.
    pub const TIMER: i32 = 73;

    /// Every reason the runtime delivers: what `wasmgate_wants` is asked about.
    pub const ALL: &[i32] = &[
        PROTOCOL_INIT,
        PROTOCOL_DESTROY,
        HTTP_BIND_PROTOCOL,
        HTTP,
        HTTP_BODY,
        HTTP_BODY_COMPLETION,
        HTTP_WRITEABLE,
        HTTP_DROP_PROTOCOL,
        CLOSED_HTTP,
        CLIENT_CONNECTION_ERROR,
        CLIENT_ESTABLISHED,
        CLIENT_RECEIVE,
        CLIENT_RECEIVE_PONG,
        CLIENT_WRITEABLE,
        CLIENT_CLOSED,
        FILTER_PROTOCOL_CONNECTION,
        ESTABLISHED,
        RECEIVE,
        RECEIVE_PONG,
        SERVER_WRITEABLE,
        WS_PEER_INITIATED_CLOSE,
        CLOSED,
        TIMER,
    ];
}

/// The callback reasons an instance wants delivered, one bit per reason
/// number (lws's go up to 75). Asked once per instance through the optional
/// `wasmgate_wants` export, so that a callback the guest would only answer
/// with 0 costs no entry into the interpreter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted(u128);

impl Wanted {
    /// Every reason: a guest without `wasmgate_wants`, as lws calls every
    /// protocol callback.
    pub const ALL: Self = Self(u128::MAX);

    /// Whether callbacks of `reason` go to the guest. A reason the bitset
    /// cannot hold was never asked about, so it is delivered.
    pub fn contains(self, reason: i32) -> bool {
        match u32::try_from(reason) {
            Ok(bit) if bit < 128 => self.0 & (1 << bit) != 0,
            _ => true,
        }
    }

    /// Stops delivering `reason`.
    fn remove(&mut self, reason: i32) {
        if let Ok(bit @ 0..128) = u32::try_from(reason) {
            self.0 &= !(1 << bit);
        }
    }
}

/// Negative host-call results (see `docs/abi.md`).
pub mod status {
    /// A pointer range outside guest memory, or text that is not UTF-8.
    pub const BAD_POINTER: i32 = -1;
    /// Not valid now.
    pub const BAD_STATE: i32 = -2;
    /// The destination or the tx buffer is too small.
    pub const NO_SPACE: i32 = -3;
    /// No such header or argument.
    pub const NOT_FOUND: i32 = -4;
    /// A value the protocol forbids.
    pub const INVALID: i32 = -5;
}

/// The guest's protocol descriptor (lws's `struct lws_protocols` entry), read once
/// per instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Protocol name the module declares.
    pub name: String,
    /// Offset of the receive buffer in guest memory.
    pub rx_buffer: u32,
    /// Its size: the largest `in` the guest is given.
    pub rx_buffer_size: u32,
    /// Offset of the per-session region.
    pub sessions: u32,
    /// Bytes of per-session data per connection.
    pub per_session_data_size: u32,
    /// Number of per-session slots.
    pub max_sessions: u32,
}

/// A validated, compiled module; instances are made from it on demand.
#[derive(Debug)]
pub struct Guest {
    /// Unique per loaded module in this process: tells its instances apart
    /// from those of the module it replaced.
    generation: u64,
    module: Module,
    engine: Engine,
    limits: GuestLimits,
    protocol: String,
}

/// Why a callback did not return normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The guest ran out of fuel: an endless loop or too much work.
    OutOfFuel,
    /// The guest trapped (unreachable, out-of-bounds access, refused memory growth...).
    Trap(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OutOfFuel => f.write_str("ran out of fuel"),
            Self::Trap(msg) => write!(f, "trapped: {msg}"),
        }
    }
}

/// Where the `RECEIVE` piece being delivered sits in its message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fragment {
    /// The piece starts a message.
    pub first: bool,
    /// The piece ends a message.
    pub last: bool,
    /// The message is binary.
    pub binary: bool,
    /// Bytes of the current frame still to come.
    pub remaining: u64,
    /// Bytes from the peer are buffered behind the piece: a guest may take
    /// the next piece in the same entry (`wasmgate_receive_next`), which may
    /// still find none (an incomplete frame, a control frame first).
    pub more: bool,
}

/// A client connection a guest asked for with `lws_client_connect_via_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The `wsi` it was given.
    pub wsi: i32,
    /// Where to connect.
    pub target: crate::config::ClientTarget,
    /// The protocol that gets its callbacks (`None`: the caller's).
    pub local_protocol: Option<String>,
}

/// One connection lent to the guest for the duration of a callback.
#[derive(Debug)]
pub struct Call {
    /// The connection's handle, as the guest sees it.
    pub wsi: i32,
    /// The HTTP connection, moved in for the call and taken back after (boxed:
    /// lending it moves a pointer, not the parser and buffers). After a
    /// WebSocket upgrade it keeps the upgrade request for header queries.
    pub http: Box<ServerConn>,
    /// The WebSocket session, once the connection is upgraded.
    pub ws: Option<Box<crate::ws::Session>>,
    /// The piece a `RECEIVE` callback is given.
    pub fragment: Fragment,
    /// Set by `lws_close_reason`: the close frame to send if the guest closes.
    pub close_reason: Option<(u16, Vec<u8>)>,
    /// Set by `lws_rx_flow_control`.
    pub rx_flow: Option<bool>,
    /// Set by `lws_callback_on_writable_all_protocol`.
    pub writable_all: bool,
    /// Set by `lws_set_timer_usecs`: `Some(None)` cancels, `Some(Some(us))`
    /// fires `TIMER` that many microseconds from now.
    pub timer: Option<Option<u64>>,
    /// `wsi` values free for new client connections, handed out by
    /// `lws_client_connect_via_info`.
    pub free_wsis: Vec<i32>,
    /// Client connections asked for during the call.
    pub connects: Vec<ConnectRequest>,
    /// The peer's address, for `lws_get_peer_simple`.
    pub peer: SocketAddr,
    /// The connection is encrypted, for `lws_is_ssl`.
    pub tls: bool,
    /// Set by `lws_callback_on_writable`.
    pub writable_requested: bool,
    /// Set by `lws_http_transaction_completed` (or `lws_return_http_status`).
    pub completed: Option<Completion>,
    /// When the callback is made: the clock for the WebSocket pieces
    /// `wasmgate_receive_next` takes.
    pub now: Instant,
    /// `RECEIVE` pieces the guest took with `wasmgate_receive_next` during the
    /// call, each a callback of its own.
    pub pieces: u32,
}

/// The store's data: what host functions can see.
#[derive(Debug)]
pub struct HostState {
    limits: StoreLimits,
    memory: Option<Memory>,
    protocol: String,
    now_us: i64,
    call: Option<Call>,
    /// Log lines the current callback asked for.
    log_lines: u32,
    /// Fuel the current callback's host calls cost and the store's fuel
    /// does not show yet (settled in batches; see `host::FUEL_SETTLE_AT`).
    fuel_owed: u64,
    /// Fuel of each callback (the instance's limit).
    fuel_per_callback: u64,
    /// Fuel the earlier pieces of this entry used (see [`Pieces`]).
    fuel_spent: u64,
    /// Set during a `RECEIVE` or `CLIENT_RECEIVE` callback: where
    /// `wasmgate_receive_next` puts the next piece.
    pieces: Option<Pieces>,
}

impl HostState {
    /// The fuel the callback under way has used, `fuel` left in the store:
    /// its budget less what is left once its host calls' debt is paid.
    fn callback_fuel_used(&self, fuel: u64) -> u64 {
        self.fuel_per_callback - fuel.saturating_sub(self.fuel_owed)
    }
}

/// Where the pieces of one `RECEIVE` entry go: the guest's receive buffer
/// and its fragment cell. Each piece `wasmgate_receive_next` hands over is a
/// callback of its own, with fresh fuel and log lines, in the same entry.
#[derive(Debug, Clone, Copy)]
struct Pieces {
    rx_buffer: usize,
    rx_buffer_size: usize,
    cell: Option<usize>,
}

/// A live instance of a guest module.
#[derive(Debug)]
pub struct Instance {
    generation: u64,
    store: Store<HostState>,
    callback: TypedFunc<(i32, i32, i32, i32, i32), i32>,
    memory: Memory,
    descriptor: Descriptor,
    /// The reasons the guest asked for (see [`Wanted`]).
    wanted: Wanted,
    /// Where the guest wants each `RECEIVE` piece's fragment word written,
    /// if it exported `wasmgate_fragment_cell` (checked to lie in memory and
    /// outside the receive buffer).
    fragment_cell: Option<usize>,
    /// One bit per session slot, set when busy.
    busy: Vec<u64>,
    bound: u32,
    retired: bool,
    fuel_used: u64,
}

/// The result of one callback.
#[derive(Debug)]
pub struct Outcome {
    /// The callback's return value, or why it did not return.
    pub result: Result<i32, Fault>,
    /// The connection lent to the call, handed back.
    pub call: Option<Call>,
}

impl Guest {
    /// Compiles and checks `wasm` against ABI v1 and `limits`, including a trial
    /// instantiation and `PROTOCOL_INIT`.
    ///
    /// # Errors
    ///
    /// A [`LoadError`] whose message tells the module's author what to fix.
    pub fn load(
        engine: &Engine,
        protocol: &str,
        wasm: &[u8],
        limits: GuestLimits,
    ) -> Result<Self, LoadError> {
        static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let module = load::check_module(engine, wasm, limits)?;
        let guest = Guest {
            generation: GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            module,
            engine: engine.clone(),
            limits,
            protocol: protocol.to_string(),
        };
        // The trial: an instance that does not start is a module that cannot run.
        let mut trial = guest.instantiate(0)?;
        trial.destroy(0);
        Ok(guest)
    }

    /// A new engine configured for guests (fuel metering on).
    pub fn engine() -> Engine {
        let mut config = wasmi::Config::default();
        config.consume_fuel(true);
        Engine::new(&config)
    }

    /// Protocol name from the config.
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// This load of the module, unique in the process.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Creates an instance, reads its descriptor and runs `PROTOCOL_INIT`.
    ///
    /// # Errors
    ///
    /// A [`LoadError`] if the descriptor is invalid or the instance fails to start.
    pub fn instantiate(&self, now_us: i64) -> Result<Instance, LoadError> {
        let limits = StoreLimitsBuilder::new()
            .memory_size((u64::from(self.limits.max_memory_pages) * PAGE_SIZE) as usize)
            .memories(1)
            .tables(1)
            .table_elements(self.limits.max_table_elements as usize)
            .instances(1)
            .trap_on_grow_failure(true)
            .build();
        let state = HostState {
            limits,
            memory: None,
            protocol: self.protocol.clone(),
            now_us,
            call: None,
            log_lines: 0,
            fuel_owed: 0,
            fuel_per_callback: self.limits.fuel_per_callback,
            fuel_spent: 0,
            pieces: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store
            .set_fuel(self.limits.fuel_per_callback)
            .map_err(|e| LoadError::Start(e.to_string()))?;
        let linker = host::linker(&self.engine);
        let instance = linker
            .instantiate_and_start(&mut store, &self.module)
            .map_err(|e| LoadError::Start(e.to_string()))?;
        let memory = instance
            .get_memory(&store, "memory")
            .ok_or(LoadError::MissingExport("memory"))?;
        store.data_mut().memory = Some(memory);
        let callback = instance
            .get_typed_func::<(i32, i32, i32, i32, i32), i32>(&store, "callback")
            .map_err(|_| LoadError::MissingExport("callback"))?;
        let describe = instance
            .get_typed_func::<(), i32>(&store, "wasmgate_protocol")
            .map_err(|_| LoadError::MissingExport("wasmgate_protocol"))?;
        let ptr = describe
            .call(&mut store, ())
            .map_err(|e| LoadError::Start(format!("wasmgate_protocol(): {e}")))?;
        let descriptor = load::read_descriptor(memory.data(&store), ptr as u32, self.limits)?;
        let wanted = self.ask_wanted(&mut store, &instance)?;
        let fragment_cell = self.ask_fragment_cell(&mut store, &instance, memory, &descriptor)?;
        let slots = descriptor.max_sessions as usize;
        let mut instance = Instance {
            generation: self.generation,
            store,
            callback,
            memory,
            descriptor,
            wanted,
            fragment_cell,
            busy: vec![0; slots.div_ceil(64)],
            bound: 0,
            retired: false,
            fuel_used: 0,
        };
        match instance
            .call(reason::PROTOCOL_INIT, 0, None, &[], None, now_us)
            .result
        {
            Ok(0) => Ok(instance),
            Ok(n) => Err(LoadError::Init(format!("callback returned {n}"))),
            Err(fault) => Err(LoadError::Init(fault.to_string())),
        }
    }
}

impl Guest {
    /// Asks the guest's optional `wasmgate_wants(reason) -> i32` about every
    /// reason the runtime delivers, each question with a callback's fuel.
    /// Without the export every reason is wanted, as today.
    ///
    /// # Errors
    ///
    /// [`LoadError::Wants`] if the export traps or runs out of fuel (its type
    /// was checked at load).
    fn ask_wanted(
        &self,
        store: &mut Store<HostState>,
        instance: &wasmi::Instance,
    ) -> Result<Wanted, LoadError> {
        let mut wanted = Wanted::ALL;
        let Some(wants) = optional_export::<i32, i32>(store, instance, load::WANTS_EXPORT)? else {
            return Ok(wanted);
        };
        for &reason in reason::ALL {
            refuel(store, self.limits.fuel_per_callback);
            match wants.call(&mut *store, reason) {
                Ok(0) => wanted.remove(reason),
                Ok(_) => {}
                Err(e) => return Err(LoadError::Wants(reason, fault_of(&e).to_string())),
            }
        }
        Ok(wanted)
    }

    /// Asks the guest's optional `wasmgate_fragment_cell() -> i32` where it
    /// wants the fragment word of each `RECEIVE` piece written, with a
    /// callback's fuel. Memory only grows, so a cell inside it now stays so.
    ///
    /// # Errors
    ///
    /// [`LoadError::FragmentCell`] if the export traps, runs out of fuel or
    /// names 8 bytes that are not all inside memory, or that overlap the
    /// receive buffer (the word is written after the piece).
    fn ask_fragment_cell(
        &self,
        store: &mut Store<HostState>,
        instance: &wasmi::Instance,
        memory: Memory,
        descriptor: &Descriptor,
    ) -> Result<Option<usize>, LoadError> {
        let Some(cell) = optional_export::<(), i32>(store, instance, load::FRAGMENT_CELL_EXPORT)?
        else {
            return Ok(None);
        };
        refuel(store, self.limits.fuel_per_callback);
        let at = cell
            .call(&mut *store, ())
            .map_err(|e| LoadError::FragmentCell(format!("failed: {}", fault_of(&e))))?;
        let size = memory.data_size(&*store) as u64;
        let (start, end) = (u64::from(at as u32), u64::from(at as u32) + 8);
        let rx_start = u64::from(descriptor.rx_buffer);
        let rx_end = rx_start + u64::from(descriptor.rx_buffer_size);
        if end > size {
            return Err(LoadError::FragmentCell(format!(
                "answered {start:#x}: 8 bytes there are not inside memory ({size} bytes)"
            )));
        }
        if start < rx_end && rx_start < end {
            return Err(LoadError::FragmentCell(format!(
                "answered {start:#x}: 8 bytes there overlap the receive buffer \
                 ({rx_start:#x}..{rx_end:#x})"
            )));
        }
        Ok(usize::try_from(start).ok())
    }
}

/// The guest's optional export `name`, if it has it (its type was checked
/// at load).
fn optional_export<P: WasmParams, R: WasmResults>(
    store: &Store<HostState>,
    instance: &wasmi::Instance,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>, LoadError> {
    if instance.get_export(store, name).is_none() {
        return Ok(None);
    }
    instance
        .get_typed_func::<P, R>(store, name)
        .map(Some)
        .map_err(|e| LoadError::Start(format!("{name}: {e}")))
}

/// A fresh budget for one entry into the guest: `fuel` units, and no host
/// charges owed from before (what the start function or an earlier entry
/// left unsettled is not carried over).
fn refuel(store: &mut Store<HostState>, fuel: u64) {
    // Fuel cannot fail to be set: metering is on for every guest engine.
    let _ = store.set_fuel(fuel);
    store.data_mut().fuel_owed = 0;
}

/// What a wasmi error means for the guest that raised it.
fn fault_of(e: &wasmi::Error) -> Fault {
    match e.as_trap_code() {
        Some(wasmi::TrapCode::OutOfFuel) => Fault::OutOfFuel,
        _ => Fault::Trap(e.to_string()),
    }
}

impl Instance {
    /// The [`Guest::generation`] this instance was made from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The guest's protocol descriptor.
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// Whether callbacks of `reason` enter the guest. One that does not is
    /// the same as a callback that returns 0 at once and calls no host
    /// function (lws's `lws_callback_http_dummy`): the caller may skip all
    /// its work for it.
    pub fn wants(&self, reason: i32) -> bool {
        self.wanted.contains(reason)
    }

    /// Takes a free session slot, zeroed, or `None` when all are busy.
    pub fn bind(&mut self) -> Option<u32> {
        let max = self.descriptor.max_sessions;
        let slot = (0..max).find(|&s| self.busy[s as usize / 64] & (1 << (s % 64)) == 0)?;
        self.busy[slot as usize / 64] |= 1 << (slot % 64);
        self.bound += 1;
        let size = self.descriptor.per_session_data_size as usize;
        let start = self.descriptor.sessions as usize + slot as usize * size;
        self.memory.data_mut(&mut self.store)[start..start + size].fill(0);
        Some(slot)
    }

    /// Gives a session slot back.
    pub fn unbind(&mut self, slot: u32) {
        let bit = 1 << (slot % 64);
        let word = &mut self.busy[slot as usize / 64];
        if *word & bit != 0 {
            *word &= !bit;
            self.bound -= 1;
        }
    }

    /// Connections bound to this instance.
    pub fn bound(&self) -> u32 {
        self.bound
    }

    /// True once a trap has retired this instance.
    pub fn is_retired(&self) -> bool {
        self.retired
    }

    /// Marks the instance as taking no new connections.
    pub fn retire(&mut self) {
        self.retired = true;
    }

    /// Fuel used by all callbacks so far.
    pub fn fuel_used(&self) -> u64 {
        self.fuel_used
    }

    /// Bytes of linear memory the instance has.
    pub fn memory_bytes(&self) -> usize {
        self.memory.data_size(&self.store)
    }

    /// Runs `PROTOCOL_DESTROY`; the instance should be dropped after.
    pub fn destroy(&mut self, now_us: i64) {
        if let Err(fault) = self
            .call(reason::PROTOCOL_DESTROY, 0, None, &[], None, now_us)
            .result
        {
            tracing::warn!(protocol = %self.store.data().protocol, "PROTOCOL_DESTROY {fault}");
        }
    }

    /// Calls the guest's `callback(wsi, reason, user, in, len)` with fresh fuel.
    /// `input` is copied into the guest's receive buffer; it must fit
    /// (`rx_buffer_size`), longer input is cut to it. `call` is the connection the
    /// host functions may act on during the callback; it is handed back in the
    /// [`Outcome`].
    ///
    /// A reason the guest does not [want](Self::wants) is not delivered: the
    /// outcome is `Ok(0)` with `call` untouched, no fuel is counted, and the
    /// receive buffer is not written.
    pub fn call(
        &mut self,
        reason: i32,
        wsi: i32,
        slot: Option<u32>,
        input: &[u8],
        call: Option<Call>,
        now_us: i64,
    ) -> Outcome {
        if !self.wants(reason) {
            return Outcome {
                result: Ok(0),
                call,
            };
        }
        let d = &self.descriptor;
        let len = input.len().min(d.rx_buffer_size as usize);
        let receive = matches!(reason, reason::RECEIVE | reason::CLIENT_RECEIVE);
        // Without a connection lent there is no piece: 0, as a cell no host
        // wrote (the guest then asks, and hears BAD_STATE).
        let cell = match self.fragment_cell {
            Some(at) if receive => Some((
                at,
                call.as_ref()
                    .map_or(0, |lent| host::cell_word(lent.fragment)),
            )),
            _ => None,
        };
        if len > 0 || cell.is_some() {
            let mem = self.memory.data_mut(&mut self.store);
            let start = d.rx_buffer as usize;
            mem[start..start + len].copy_from_slice(&input[..len]);
            if let Some((at, word)) = cell {
                mem[at..at + 8].copy_from_slice(&word.to_le_bytes());
            }
        }
        let in_ptr = if len == 0 { 0 } else { d.rx_buffer };
        let user = slot.map_or(0, |s| d.sessions + s * d.per_session_data_size);
        let pieces = (receive && call.is_some()).then_some(Pieces {
            rx_buffer: d.rx_buffer as usize,
            rx_buffer_size: d.rx_buffer_size as usize,
            cell: self.fragment_cell,
        });
        let state = self.store.data_mut();
        state.call = call;
        state.now_us = now_us;
        state.log_lines = 0;
        state.pieces = pieces;
        let budget = state.fuel_per_callback;
        refuel(&mut self.store, budget);
        let result = self.callback.call(
            &mut self.store,
            (wsi, reason, user as i32, in_ptr as i32, len as i32),
        );
        let state = self.store.data_mut();
        state.pieces = None;
        host::report_dropped_logs(state);
        let spent = std::mem::take(&mut state.fuel_spent);
        let fuel = self.store.get_fuel().unwrap_or(0);
        self.fuel_used += spent + self.store.data().callback_fuel_used(fuel);
        let result = result.map_err(|e| fault_of(&e));
        Outcome {
            result,
            call: self.store.data_mut().call.take(),
        }
    }
}
