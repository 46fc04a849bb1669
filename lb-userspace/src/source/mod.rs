//! Where desired state comes from. Only this module reads files (and, later,
//! talks to the apiserver).
pub mod convert;
pub mod dir;
pub mod parse;

pub use parse::{DocumentError, Object};
