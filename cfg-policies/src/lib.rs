//! The cfg policy language.
//!
//! Policies are RON files (see `policies/README.md` for the language). This
//! crate reads them with positions on every error ([`load`]), validates them
//! ([`validate`]), builds their branch graph ([`graph`]) and embeds the
//! built-in library ([`library`]).
#![deny(missing_docs)]
#![warn(clippy::all)]

pub mod error;
pub mod graph;
pub mod library;
pub mod load;
pub mod locate;
pub mod params;
pub mod range;
pub mod validate;

pub use error::{LoadError, PolicyError, Warning};
pub use load::{is_path, load_file, parse, resolve, Loaded};
