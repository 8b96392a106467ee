//! The node's image store: pulls images from registries, keeps blobs
//! content-addressed and unpacks every layer once per node into its own
//! folder, which pods share as overlayfs lower layers.
//!
//! - [`store`]: [`ImageStore`], what the CRI ImageService calls, in parts:
//!   layout, tags, garbage collection, pulling, image files.
//! - [`registry`]: fetching manifests and blobs (oci-client), verified.
//! - [`manifest`]: manifests, indexes, configs; platform choice.
//! - [`unpack`]: the hardened layer unpacker (untrusted archives).
//! - [`index`]: the persisted, atomically written image index.

mod digest;
mod error;
mod fsutil;
mod index;
mod locks;
mod manifest;
mod reference;
mod registry;
mod store;
mod types;
pub mod unpack;

pub use self::error::{ImageError, ImageErrorKind};
pub use self::store::ImageStore;
pub use self::types::{FsUsage, Image, ImageConfig, RegistryAuth, RegistryOptions};
