//! Versioned binary encoding of everything Mobilus stores or sends between members.
//!
//! Each value is one format-version byte followed by its bincode 2 (serde, standard config)
//! body. A reader that meets an unknown version refuses the value instead of misreading it.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The format version written today.
pub const FORMAT_V1: u8 = 1;

/// A value that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty value")]
    Empty,
    #[error("unknown format version {0} (this build reads version {FORMAT_V1})")]
    UnknownVersion(u8),
    #[error("decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
}

/// Encode `value` with the current format version.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_V1];
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard())?;
    Ok(out)
}

fn decode_within<T: DeserializeOwned, const LIMIT: usize>(
    body: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(body, bincode::config::standard().with_limit::<LIMIT>())
}

/// Decode a value written by [`encode`].
///
/// A length read from the bytes is claimed against a limit before anything is allocated
/// for it (bincode allocates a byte string's declared length before reading it: found by
/// fuzzing, a 9-byte length of 3.4e18 aborted the process). The limit grows with the
/// input, 256 times its size class (room for containers, whose elements take more memory
/// than bytes on the wire), at least 4 MiB and at most 4 GiB.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_V1 {
        return Err(CodecError::UnknownVersion(version));
    }
    let (value, used) = match body.len() {
        0..=0x4000 => decode_within::<T, { 256 << 14 }>(body)?,
        0x4001..=0x4_0000 => decode_within::<T, { 256 << 18 }>(body)?,
        0x4_0001..=0x40_0000 => decode_within::<T, { 256 << 22 }>(body)?,
        _ => decode_within::<T, { 4 << 30 }>(body)?,
    };
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let v: (u64, String) = (7, "x".into());
        let bytes = encode(&v).unwrap();
        assert_eq!(decode::<(u64, String)>(&bytes).unwrap(), v);
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
        assert!(matches!(
            decode::<u64>(&[9, 1]),
            Err(CodecError::UnknownVersion(9))
        ));
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decode::<(u64, String)>(&long),
            Err(CodecError::Trailing(1))
        ));
        assert!(decode::<(u64, String)>(&bytes[..2]).is_err());
    }

    /// A declared length far past the input is refused before anything is allocated.
    #[test]
    fn a_huge_declared_length_is_refused_not_allocated() {
        // Version, then a varint u64 (tag 253) of 3.4e18 as a byte string's length.
        let mut bytes = vec![FORMAT_V1, 253];
        bytes.extend_from_slice(&3_400_000_000_000_000_000u64.to_le_bytes());
        let r = decode::<serde_bytes::ByteBuf>(&bytes);
        assert!(
            matches!(
                r,
                Err(CodecError::Decode(
                    bincode::error::DecodeError::LimitExceeded
                ))
            ),
            "{r:?}"
        );
        // Within the limit but past the input: an ordinary error.
        let mut bytes = vec![FORMAT_V1, 253];
        bytes.extend_from_slice(&(1u64 << 20).to_le_bytes());
        assert!(decode::<serde_bytes::ByteBuf>(&bytes).is_err());
    }
}
