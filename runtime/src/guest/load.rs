//! Load-time checks of a module against guest ABI v1, with messages a module's
//! author can act on.

use wasmi::{Engine, ExternType, Module, ValType};

use super::{ABI_VERSION, Descriptor, host};
use crate::config::GuestLimits;

/// Why a module cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// The bytes are not a valid WebAssembly module.
    Invalid(String),
    /// A required export is missing.
    MissingExport(&'static str),
    /// A required export has the wrong type.
    ExportType {
        name: &'static str,
        found: String,
        expected: &'static str,
    },
    /// The module imports a host function the runtime does not have.
    UnknownImport(String),
    /// The module imports a known host function with the wrong type.
    ImportType {
        name: String,
        found: String,
        expected: String,
    },
    /// The module imports from a module other than `lws`.
    ForeignImport(String),
    /// The module was built for another ABI version.
    AbiVersion(u32),
    /// The protocol descriptor is not usable.
    Descriptor(String),
    /// The module's initial memory exceeds the limit.
    Memory { needs: u64, limit: u32 },
    /// Instantiation or `wasmgate_protocol()` failed.
    Start(String),
    /// `PROTOCOL_INIT` trapped or returned non-zero.
    Init(String),
    /// `wasmgate_wants(reason)` trapped or ran out of fuel.
    Wants(i32, String),
    /// `wasmgate_fragment_cell()` trapped or ran out of fuel, or named a
    /// cell outside memory or over the receive buffer.
    FragmentCell(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(e) => write!(f, "module is not valid WebAssembly: {e}"),
            Self::MissingExport(name) => write!(f, "module exports no `{name}`"),
            Self::ExportType {
                name,
                found,
                expected,
            } => {
                write!(f, "`{name}` has type {found}, expected {expected}")
            }
            Self::UnknownImport(name) => {
                write!(f, "module imports unknown host function `lws.{name}`")
            }
            Self::ImportType {
                name,
                found,
                expected,
            } => write!(
                f,
                "module imports host function `lws.{name}` with type {found}, expected {expected}"
            ),
            Self::ForeignImport(name) => write!(
                f,
                "module imports `{name}`; guests may import only from module `lws`"
            ),
            Self::AbiVersion(v) => write!(
                f,
                "module speaks guest ABI v{v}; this runtime speaks v{ABI_VERSION}"
            ),
            Self::Descriptor(e) => write!(f, "protocol descriptor: {e}"),
            Self::Memory { needs, limit } => {
                write!(f, "module needs {needs} memory pages; the limit is {limit}")
            }
            Self::Start(e) => write!(f, "module failed to start: {e}"),
            Self::Init(e) => write!(f, "PROTOCOL_INIT failed: {e}"),
            Self::Wants(reason, e) => write!(f, "`{WANTS_EXPORT}({reason})` failed: {e}"),
            Self::FragmentCell(e) => write!(f, "`{FRAGMENT_CELL_EXPORT}()` {e}"),
        }
    }
}

impl std::error::Error for LoadError {}

const I32: ValType = ValType::I32;

/// The optional export that says which callback reasons the guest handles.
pub(super) const WANTS_EXPORT: &str = "wasmgate_wants";
/// The optional export that names where the host writes a `RECEIVE` piece's
/// fragment word.
pub(super) const FRAGMENT_CELL_EXPORT: &str = "wasmgate_fragment_cell";

fn signature(params: &[ValType], results: &[ValType]) -> String {
    let list = |tys: &[ValType]| {
        tys.iter()
            .map(|t| format!("{t:?}").to_lowercase())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("({}) -> ({})", list(params), list(results))
}

/// Compiles `wasm` and checks its exports, imports and memory against the ABI.
pub(super) fn check_module(
    engine: &Engine,
    wasm: &[u8],
    limits: GuestLimits,
) -> Result<Module, LoadError> {
    let module = Module::new(engine, wasm).map_err(|e| LoadError::Invalid(e.to_string()))?;

    for import in module.imports() {
        if import.module() != "lws" {
            return Err(LoadError::ForeignImport(format!(
                "{}.{}",
                import.module(),
                import.name()
            )));
        }
        let Some((params, results)) = host::signature_of(import.name()) else {
            return Err(LoadError::UnknownImport(import.name().to_string()));
        };
        let expected = signature(params, results);
        match import.ty() {
            ExternType::Func(ty) if ty.params() == params && ty.results() == results => {}
            ExternType::Func(ty) => {
                return Err(LoadError::ImportType {
                    name: import.name().to_string(),
                    found: signature(ty.params(), ty.results()),
                    expected,
                });
            }
            other => {
                return Err(LoadError::ImportType {
                    name: import.name().to_string(),
                    found: format!("{other:?}"),
                    expected,
                });
            }
        }
    }

    let func_export =
        |name: &'static str, params: &[ValType], results: &[ValType], expected| match module
            .get_export(name)
        {
            None => Err(LoadError::MissingExport(name)),
            Some(ExternType::Func(ty)) if ty.params() == params && ty.results() == results => {
                Ok(())
            }
            Some(ExternType::Func(ty)) => Err(LoadError::ExportType {
                name,
                found: signature(ty.params(), ty.results()),
                expected,
            }),
            Some(_) => Err(LoadError::ExportType {
                name,
                found: "not a function".into(),
                expected,
            }),
        };
    func_export(
        "callback",
        &[I32; 5],
        &[I32],
        "(i32, i32, i32, i32, i32) -> (i32)",
    )?;
    func_export("wasmgate_protocol", &[], &[I32], "() -> (i32)")?;
    // Optional: without it every reason is delivered.
    if module.get_export(WANTS_EXPORT).is_some() {
        func_export(WANTS_EXPORT, &[I32], &[I32], "(i32) -> (i32)")?;
    }
    // Optional: without it the guest asks `wasmgate_fragment`.
    if module.get_export(FRAGMENT_CELL_EXPORT).is_some() {
        func_export(FRAGMENT_CELL_EXPORT, &[], &[I32], "() -> (i32)")?;
    }
    match module.get_export("memory") {
        Some(ExternType::Memory(ty)) => {
            if ty.minimum() > u64::from(limits.max_memory_pages) {
                return Err(LoadError::Memory {
                    needs: ty.minimum(),
                    limit: limits.max_memory_pages,
                });
            }
        }
        _ => return Err(LoadError::MissingExport("memory")),
    }
    Ok(module)
}

/// Reads and checks the 32-byte protocol descriptor at `ptr` in `memory`.
pub(super) fn read_descriptor(
    memory: &[u8],
    ptr: u32,
    limits: GuestLimits,
) -> Result<Descriptor, LoadError> {
    let bad = |msg: String| Err(LoadError::Descriptor(msg));
    let start = ptr as usize;
    let Some(raw) = memory.get(start..start + 32) else {
        return bad(format!("pointer {ptr:#x} is outside memory"));
    };
    let field = |i: usize| u32::from_le_bytes(raw[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    let version = field(0);
    if version != ABI_VERSION {
        return Err(LoadError::AbiVersion(version));
    }
    let in_memory = |what: &str, at: u32, len: u64| -> Result<(), LoadError> {
        if u64::from(at) + len > memory.len() as u64 {
            Err(LoadError::Descriptor(format!(
                "{what} ({len} bytes at {at:#x}) is outside memory ({} bytes)",
                memory.len()
            )))
        } else {
            Ok(())
        }
    };
    let d = Descriptor {
        rx_buffer: field(1),
        rx_buffer_size: field(2),
        sessions: field(3),
        per_session_data_size: field(4),
        max_sessions: field(5),
        name: String::new(),
    };
    if d.rx_buffer_size < 128 || d.rx_buffer_size > limits.max_rx_buffer_size {
        return bad(format!(
            "rx_buffer_size {} is outside 128..={}",
            d.rx_buffer_size, limits.max_rx_buffer_size
        ));
    }
    if d.per_session_data_size > limits.max_session_data_size {
        return bad(format!(
            "per_session_data_size {} exceeds the limit of {}",
            d.per_session_data_size, limits.max_session_data_size
        ));
    }
    if d.max_sessions == 0 {
        return bad("max_sessions is 0".into());
    }
    if d.max_sessions > 1024 {
        return bad(format!("max_sessions {} exceeds 1024", d.max_sessions));
    }
    in_memory("rx_buffer", d.rx_buffer, u64::from(d.rx_buffer_size))?;
    let region = u64::from(d.per_session_data_size) * u64::from(d.max_sessions);
    in_memory("per-session region", d.sessions, region)?;
    let (name_ptr, name_len) = (field(6), field(7));
    in_memory("name", name_ptr, u64::from(name_len))?;
    let name = &memory[name_ptr as usize..(name_ptr + name_len) as usize];
    let Ok(name) = std::str::from_utf8(name) else {
        return bad("name is not UTF-8".into());
    };
    if name.is_empty() {
        return bad("name is empty".into());
    }
    Ok(Descriptor {
        name: name.to_string(),
        ..d
    })
}
