//! Video bytes as content-addressed chunks.
//!
//! A video is cut into [`CHUNK_SIZE`] pieces; each is stored as one custody record whose id
//! is its uploader and the SHA-256 of its bytes (`<user>.<hex>`). Scoping the address to the
//! uploader keeps every chunk owned by one subject, so erasing a user shreds exactly their
//! chunks; identical pieces of one user's videos are stored once. Reading checks every chunk
//! against its address.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use crate::ClipsError;

/// Bytes per chunk. custody caps one field at 64 KiB of JSON; 32 KiB is 43,692 base64 chars.
pub const CHUNK_SIZE: usize = 32 * 1024;

/// One chunk ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Its record id: `<uploader>.<sha256 hex>`.
    pub id: String,
    /// Its bytes, base64.
    pub data: String,
    /// Its length in bytes.
    pub size: usize,
}

/// The record id of `bytes` uploaded by `uploader`.
pub fn address(uploader: &str, bytes: &[u8]) -> String {
    format!("{uploader}.{}", hex::encode(Sha256::digest(bytes)))
}

/// Cuts `bytes` into chunks; the video keeps the ids in order.
pub fn split(uploader: &str, bytes: &[u8]) -> Vec<Chunk> {
    bytes
        .chunks(CHUNK_SIZE)
        .map(|piece| Chunk { id: address(uploader, piece), data: STANDARD.encode(piece), size: piece.len() })
        .collect()
}

/// Decodes a stored chunk and checks it against its address.
///
/// # Errors
/// [`ClipsError::Integrity`] if the data is not base64 or does not hash to `id`.
pub fn open(uploader: &str, id: &str, data: &str) -> Result<Vec<u8>, ClipsError> {
    let bytes = STANDARD.decode(data).map_err(|_| ClipsError::Integrity(format!("chunk `{id}` is not base64")))?;
    if address(uploader, &bytes) != id {
        return Err(ClipsError::Integrity(format!("chunk `{id}` does not match its address")));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn split_and_open_round_trip() {
        let bytes: Vec<u8> = (0..(CHUNK_SIZE * 2 + 17)).map(|i| (i % 251) as u8).collect();
        let chunks = split("u1", &bytes);
        assert_eq!(chunks.len(), 3);
        let back: Vec<u8> = chunks.iter().flat_map(|c| open("u1", &c.id, &c.data).unwrap()).collect();
        assert_eq!(back, bytes);
        assert!(open("u2", &chunks[0].id, &chunks[0].data).is_err(), "address is scoped to the uploader");
        assert!(open("u1", &chunks[0].id, &chunks[1].data).is_err(), "bytes must match the address");
    }
}
