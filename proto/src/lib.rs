//! TopSmile's protobuf contracts: the generated messages, clients and servers of every
//! service, and the encoded descriptor set that reflection and the gateway's policy table
//! read.
//!
//! Packages follow the `.proto` layout: `topsmile::identity::v1`, `topsmile::patients::v1`,
//! and so on.

#![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]

pub mod codec;

include!(concat!(env!("OUT_DIR"), "/topsmile.rs"));

/// Every file of the contracts and its imports, encoded as a `FileDescriptorSet`, custom
/// options included.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/topsmile_descriptor.bin"));
