//! The node's image store: pulls images from registries, keeps blobs
//! content-addressed and unpacks every layer once per node into its own
//! folder, which pods share as overlayfs lower layers.
//!
//! - [`store`]: [`ImageStore`], what the CRI ImageService calls, in parts:
//!   layout, tags, garbage collection, pulling, image files.
//! - [`registry`]: fetching manifests and blobs (oci-client), verified.
//! - [`endpoints`]: which mirrors and upstream a pull tries, in order.
//! - [`token`]: exchanging an identity (refresh) token for an access token.
//! - [`manifest`]: manifests, indexes, configs; platform choice.
//! - [`unpack`]: the hardened layer unpacker (untrusted archives).
//! - [`index`]: the persisted, atomically written image index.

mod digest;
mod endpoints;
mod error;
mod fsutil;
mod index;
mod locks;
mod manifest;
mod reference;
mod registry;
mod store;
mod token;
mod types;
pub mod unpack;

pub(crate) use self::endpoints::check_host;
pub use self::endpoints::EndpointUrl;
pub use self::error::{EndpointFailure, ImageError, ImageErrorKind};
pub(crate) use self::registry::read_ca_file;
pub use self::store::ImageStore;
pub use self::types::{
    FsUsage, HostOptions, Image, ImageConfig, MirrorOptions, RegistryAuth, RegistryOptions,
    TlsOptions,
};
