//! The only module that touches the kernel: loading and pinning the programs
//! and maps, attaching to devices, and writing planned map updates.
pub mod attach;
pub mod loader;
pub mod maps;
pub mod sync;

pub use loader::{Dataplane, LoadError};
